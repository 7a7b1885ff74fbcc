"""The results store (format: docs/results.md): one folder per run, records appended per item.

Crash safety: each record is one line, written with a single ``write`` then flushed and fsync'ed, so a
killed process leaves at most one partial last line; :meth:`RunStore.records` ignores it and
:meth:`RunStore.open` truncates it away before appending again. Summaries are always recomputed from
the records, never updated incrementally.

Several records may carry one ``item_id`` (a failed item retried by ``--resume`` appends a new record;
the file stays append-only): the latest record of an item is the one that counts. One process writes
a run at a time: :meth:`RunStore.lock` holds an OS-level lock on ``runs/<run_id>/.lock``.

A sharded run (:mod:`oscar_eval.store.sharding`) has one writer per shard: ``RunStore(root, run_id, shard)``
writes ``records.rank<R>-of-<W>.jsonl`` and ``shard.rank<R>-of-<W>.json`` (the shard's manifest) under
``.lock.rank<R>-of-<W>``; :mod:`oscar_eval.store.merge` turns the shards into ``records.jsonl``,
``manifest.json`` and ``summary.json``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SCHEMA = 1
MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
SHARD_FILE = re.compile(r"^(?:records|shard)\.rank(\d+)-of-(\d+)\.jsonl?$")


class StoreError(ValueError):
    """A damaged store file; the message is one line naming the file (and line)."""


class RunLocked(RuntimeError):
    """Another process holds the run's lock."""


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
    """One run's folder: ``manifest.json``, ``records.jsonl``, ``summary.json``; with ``shard`` (a
    :class:`oscar_eval.store.sharding.Shard` of several) that shard's manifest, records and lock instead."""

    def __init__(self, root: str | Path, run_id: str, shard: Any = None) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.dir = self.root / "runs" / run_id
        self.shard = shard if shard is not None and shard.sharded else None
        self._fh = None
        self._lock_fd: int | None = None

    # -- paths / existence ---------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / (f"shard.{self.shard.tag}.json" if self.shard else MANIFEST)

    @property
    def records_path(self) -> Path:
        return self.dir / (f"records.{self.shard.tag}.jsonl" if self.shard else RECORDS)

    @property
    def lock_path(self) -> Path:
        return self.dir / (f"{LOCK}.{self.shard.tag}" if self.shard else LOCK)

    def shard_world_sizes(self) -> set[int]:
        """World sizes of the sharded runs whose files are in this run folder (empty: none)."""
        if not self.dir.is_dir():
            return set()
        return {int(m.group(2)) for p in self.dir.iterdir() if (m := SHARD_FILE.match(p.name))}

    def remove_shard_files(self) -> None:
        """``--overwrite``: delete shard records and manifests. One process deletes every shard's; a shard
        its own and those of other world sizes (its fellow ranks, maybe already running, delete theirs)."""
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            m = SHARD_FILE.match(p.name)
            if m is None:
                continue
            rank, world = int(m.group(1)), int(m.group(2))
            if self.shard is None or world != self.shard.world_size or rank == self.shard.rank:
                p.unlink(missing_ok=True)

    def remove_merged_files(self) -> None:
        """Delete the one-process (or merged) records, manifest and summary (``--overwrite`` of a shard)."""
        for name in (RECORDS, MANIFEST, SUMMARY):
            (self.dir / name).unlink(missing_ok=True)

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
        return _read_json_object(self.manifest_path)

    def write_summary(self, summary: dict) -> None:
        _write_json_atomic(self.summary_path, {"schema": SCHEMA, "run_id": self.run_id, **summary})

    def read_summary(self) -> dict:
        return _read_json_object(self.summary_path)

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
                rec = json.loads(raw)
            except ValueError:  # not JSON, or not UTF-8
                if i >= len(lines) - 2 and not data.endswith(b"\n"):
                    return  # the partial last line of an interrupted run
                raise StoreError(f"{self.records_path}:{i + 1}: corrupt record") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("item_id"), str):
                raise StoreError(f"{self.records_path}:{i + 1}: corrupt record (no item_id)")
            yield rec

    def latest_records(self) -> list[dict]:
        """One record per item: its latest (a retried item's new record supersedes the old one)."""
        latest: dict[str, dict] = {}
        for rec in self._iter_records():
            latest.pop(rec["item_id"], None)
            latest[rec["item_id"]] = rec
        return list(latest.values())

    def done_ids(self) -> set[str]:
        """Items whose latest record is ok: what ``--resume`` skips (failed items are run again)."""
        return {r["item_id"] for r in self.latest_records() if r.get("status") == "ok"}

    def failed_ids(self) -> set[str]:
        """Items whose latest record failed (what ``--retry-failed`` runs again)."""
        return {r["item_id"] for r in self.latest_records() if r.get("status") != "ok"}

    # -- one writer per run --------------------------------------------------------------------
    def lock(self) -> None:
        """Take the run's exclusive lock (held until :meth:`unlock` or the process ends, even killed).

        Raises :class:`RunLocked` at once when another process holds it."""
        if self._lock_fd is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.lock_path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            who = f"process {holder}" if holder.isdigit() else "another process"
            what = f"run {self.run_id}" + (f" (shard {self.shard.tag})" if self.shard else "")
            raise RunLocked(f"{what} is being written by {who} (lock {path}); wait for it to "
                            "finish or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def open(self, resume: bool) -> None:
        """Prepare for appending: fresh file unless resuming; drop a partial last line first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.records_path.exists():
            self.records_path.unlink()
            if self.summary_path.exists() and self.shard is None:  # a shard never writes the summary
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
        """Rebuild summary.json from records.jsonl (latest record per item) with a benchmark's
        ``summarize``; ``coverage`` comes from the manifest's ``coverage`` (items the run should cover)."""
        records = self.latest_records()
        summary = {**header, "n_items": len(records),
                   "n_failed": sum(1 for r in records if r.get("status") != "ok"), **summarize(records)}
        speed = throughput(records)
        if speed is not None:
            summary["throughput"] = speed
        target = self.read_manifest().get("coverage") if self.manifest_path.exists() else None
        if isinstance(target, dict) and isinstance(target.get("total"), int):
            summary["coverage"] = coverage(len(records), target["total"], target.get("missing_subsets") or [])
        self.write_summary(summary)
        return self.read_summary()


def throughput(records: list[dict]) -> dict | None:
    """Generated tokens per second of wall time over the ok records (a batch's time is shared by its
    items), or None when no record counts tokens (e.g. perplexity)."""
    ok = [r for r in records if r.get("status") == "ok" and isinstance(r.get("new_tokens"), int)
          and isinstance(r.get("seconds"), (int, float))]
    if not ok:
        return None
    tokens, seconds = sum(r["new_tokens"] for r in ok), sum(r["seconds"] for r in ok)
    return {"new_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None}


def coverage(done: int, total: int, missing_subsets: list[str] | None = None) -> dict:
    """``{"done", "total", "fraction", "missing_subsets", "complete"}``: a run is complete when it has a
    record for every item of its data set (every default subset, no ``--limit`` cut)."""
    missing = list(missing_subsets or [])
    return {"done": done, "total": total, "fraction": (done / total) if total else None,
            "missing_subsets": missing, "complete": done >= total and not missing}


def _read_json_object(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: not UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path}:1: expected a JSON object, found {type(obj).__name__}")
    return obj


def list_runs(root: str | Path) -> list[RunStore]:
    """Every run folder under ``root/runs`` (for reports)."""
    runs = Path(root) / "runs"
    if not runs.is_dir():
        return []
    return [RunStore(root, p.name) for p in sorted(runs.iterdir()) if (p / MANIFEST).exists()]
