"""The results store (format: docs/results.md): one folder per run, records appended per item.

Crash safety: each record is one line, written with a single ``write`` then flushed and fsync'ed, so a
killed process leaves at most one partial last line; :meth:`RunStore.records` ignores it and
:meth:`RunStore.open` truncates it away before appending again. Summaries are always recomputed from
the records, never updated incrementally.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SCHEMA = 1
MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"


def settings_hash(obj: Any) -> str:
    """8 hex digits identifying the settings that change results (stable across key order)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-+" else "-" for c in text)
    return keep.strip("-") or "x"


def make_run_id(benchmark: str, model_label: str, method: str, settings: Any) -> str:
    return f"{_slug(benchmark)}-{_slug(model_label)}-{_slug(method)}-{settings_hash(settings)}"


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunStore:
    """One run's folder: ``manifest.json``, ``records.jsonl``, ``summary.json``."""

    def __init__(self, root: str | Path, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.dir = self.root / "runs" / run_id
        self._fh = None

    # -- paths / existence ---------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    @property
    def records_path(self) -> Path:
        return self.dir / RECORDS

    @property
    def summary_path(self) -> Path:
        return self.dir / SUMMARY

    def exists(self) -> bool:
        return self.records_path.exists() or self.manifest_path.exists()

    # -- manifest / summary --------------------------------------------------------------------
    def write_manifest(self, manifest: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.manifest_path, {"schema": SCHEMA, "run_id": self.run_id, **manifest})

    def read_manifest(self) -> dict:
        with open(self.manifest_path, encoding="utf-8") as f:
            return json.load(f)

    def write_summary(self, summary: dict) -> None:
        _write_json_atomic(self.summary_path, {"schema": SCHEMA, "run_id": self.run_id, **summary})

    def read_summary(self) -> dict:
        with open(self.summary_path, encoding="utf-8") as f:
            return json.load(f)

    # -- records -------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """All complete records; a truncated or unparseable last line is ignored (killed writer)."""
        return list(self._iter_records())

    def _iter_records(self) -> Iterator[dict]:
        if not self.records_path.exists():
            return
        with open(self.records_path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                yield json.loads(raw)
            except json.JSONDecodeError:
                if i >= len(lines) - 2 and not data.endswith(b"\n"):
                    return  # the partial last line of an interrupted run
                raise ValueError(f"{self.records_path}:{i + 1}: corrupt record") from None

    def done_ids(self) -> set[str]:
        return {r["item_id"] for r in self.records()}

    def open(self, resume: bool) -> None:
        """Prepare for appending: fresh file unless resuming; drop a partial last line first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.records_path.exists():
            self.records_path.unlink()
            if self.summary_path.exists():
                self.summary_path.unlink()
        if self.records_path.exists():
            self._drop_partial_tail()
        self._fh = open(self.records_path, "a", encoding="utf-8")

    def _drop_partial_tail(self) -> None:
        with open(self.records_path, "rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1  # 0 when the only line is partial
            f.truncate(cut)

    def append(self, record: dict) -> None:
        if self._fh is None:
            raise RuntimeError("RunStore.open() first")
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recompute_summary(self, summarize: Callable[[list[dict]], dict], **header: Any) -> dict:
        """Rebuild summary.json from records.jsonl with a benchmark's ``summarize``."""
        records = self.records()
        summary = {**header, "n_items": len(records),
                   "n_failed": sum(1 for r in records if r.get("status") != "ok"), **summarize(records)}
        self.write_summary(summary)
        return self.read_summary()


def list_runs(root: str | Path) -> list[RunStore]:
    """Every run folder under ``root/runs`` (for reports)."""
    runs = Path(root) / "runs"
    if not runs.is_dir():
        return []
    return [RunStore(root, p.name) for p in sorted(runs.iterdir()) if (p / MANIFEST).exists()]
