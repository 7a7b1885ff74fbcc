"""A read-only reader of the results store (format: docs/results.md).

Deliberately independent of the runner's writer: the JSON formats in docs/results.md are the
contract. A malformed file never stops a report; it is skipped and listed in ``Store.problems``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

# Failed items kept per (run, subset) for the report; predictions are never kept.
FAILED_SAMPLE_PER_SUBSET = 3


def num(value: Any) -> float | None:
    """A finite number, or None: a JSON ``true`` or a string is not a score."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def text(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


@cache
def _default_params(method: str) -> dict[str, Any] | None:
    try:
        import oscar_core

        return oscar_core.get_method(method).to_dict()["params"]
    except Exception:  # noqa: BLE001 - a method this oscar_core does not know has no variants
        return None


def variant_params(method: str, params: Any) -> dict[str, Any]:
    """The parameters a run set away from the method's defaults. A default of None is resolved per model
    (RotateKV's head_group), so it is no variant; a parameter the run does not record is an older run's
    default; one the defaults do not list is recorded only when set (OScaR's key_basis)."""
    defaults = _default_params(method)
    if defaults is None or not isinstance(params, dict):
        return {}
    return {k: v for k, v in sorted(params.items())
            if (k not in defaults or (defaults[k] is not None and defaults[k] != v))}


def method_key(method: str, params: Any) -> str:
    """``oscar`` for the paper's configuration, ``oscar[key_basis=auto]`` for a variant: a row of its own."""
    extra = variant_params(method, params)
    return f"{method}[{','.join(f'{k}={v}' for k, v in extra.items())}]" if extra else method


@dataclass
class FailedItem:
    item_id: str
    subset: str
    error: str


@dataclass
class Run:
    """One accuracy run: ``runs/<run_id>/``."""

    run_id: str
    manifest: dict[str, Any]
    summary: dict[str, Any] | None
    failed: list[FailedItem] = field(default_factory=list)
    n_records: int = 0

    @property
    def benchmark(self) -> str:
        return text((self.summary or {}).get("benchmark") or self.manifest.get("benchmark"), "unknown")

    def _manifest_field(self, section: str, key: str) -> Any:
        """``manifest[section][key]``, or None: what a field the summary lacks falls back to."""
        part = self.manifest.get(section)
        return part.get(key) if isinstance(part, dict) else None

    @property
    def model_label(self) -> str:
        return text((self.summary or {}).get("model_label") or self._manifest_field("model", "label"), "unknown")

    @property
    def method(self) -> str:
        """The method with its variant, if any (:func:`method_key`): never mixed up with the defaults."""
        name = text((self.summary or {}).get("method") or self._manifest_field("method", "name"), "unknown").lower()
        return method_key(name, self._manifest_field("method", "params"))

    @property
    def protocol(self) -> str:
        return text((self.summary or {}).get("protocol") or self._manifest_field("settings", "protocol"), "paper")

    @property
    def bits(self) -> float | None:
        value = num((self.summary or {}).get("bits_per_element"))
        return value if value is not None else num(self._manifest_field("method", "bits_per_element"))

    @property
    def created(self) -> str:
        return text(self.manifest.get("created"))

    @property
    def coverage(self) -> dict[str, Any] | None:
        """``{"done", "total", "missing_subsets", "complete"}`` (summary, else manifest), or None."""
        for source in (self.summary or {}, self.manifest):
            value = source.get("coverage")
            if isinstance(value, dict) and num(value.get("done")) is not None and num(value.get("total")) is not None:
                if self.summary is None and self.n_records > (num(value["done"]) or 0):
                    # an interrupted run: the manifest counted what was done when it started; its
                    # records say how far it got
                    value = {**value, "done": self.n_records, "complete": False}
                return value
        return None

    @property
    def partial(self) -> bool:
        """Whether the run did not cover its whole data set; runs without coverage (older stores) are
        partial when they were limited (``settings.limit``)."""
        cov = self.coverage
        if cov is not None:
            return cov.get("complete") is not True
        return self._manifest_field("settings", "limit") is not None

    @property
    def samples_per_task(self) -> int | None:
        """For a RULER run limited to N samples per task and context (``--limit N``; RULER's generator
        draws i.i.d. samples, so the first N of each are a sample of the task, not a subset of a fixed
        data set) that scored every one of them: N. Otherwise None."""
        if self.benchmark != "ruler" or self.summary is None:
            return None
        limit, cov = num(self._manifest_field("settings", "limit")), self.coverage
        tasks, contexts = self.summary.get("tasks"), self.summary.get("contexts")
        if limit is None or limit < 1 or cov is None or not isinstance(tasks, dict) or not isinstance(contexts, dict):
            return None
        return int(limit) if num(cov.get("done")) == limit * len(tasks) * len(contexts) else None

    @property
    def coverage_text(self) -> str:
        cov = self.coverage
        if cov is None:
            return "limited by --limit (coverage not recorded)" if self.partial else "—"
        out = f"{int(num(cov['done']) or 0)} of {int(num(cov['total']) or 0)} items"
        missing = cov.get("missing_subsets")
        if isinstance(missing, list) and missing:
            out += f"; subsets not run: {', '.join(text(m) for m in missing)}"
        return out


@dataclass
class MeasurementFile:
    """What a ``speed/`` and a ``kernels/`` JSON file share: its name (the stem), the environment it was
    measured in, the GPU's measured peak bandwidth and its result rows."""

    name: str
    env: dict[str, Any]
    peak_bandwidth_gbps: float | None
    rows: list[dict[str, Any]]
    note: str = ""  # free text the measurer added (e.g. which commit the sources are)


@dataclass
class SpeedFile(MeasurementFile):
    """One ``speed/<name>.json``."""

    created: str = ""  # ISO time the run started ("" in older files: they sort first)
    partial: bool = False  # the profiler stopped early (time limit): not a complete run


@dataclass
class KernelFile(MeasurementFile):
    """One ``kernels/<name>.json`` (scripts/bench_kernels.py): decode rows and pack timings."""

    pack: dict[str, Any] = field(default_factory=dict)

    @property
    def date(self) -> str:
        return text(self.env.get("date"))


@dataclass
class Store:
    root: Path
    runs: list[Run] = field(default_factory=list)
    speed: list[SpeedFile] = field(default_factory=list)
    kernels: list[KernelFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    include_smoke: bool = False  # smoke runs fill table cells (labelled "random weights")


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: unreadable JSON ({exc.__class__.__name__}: {exc}); skipped")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object; skipped")
        return None
    return data


def _read_records(path: Path, run: Run, problems: list[str]) -> None:
    """Count items and keep a small sample of failed items per subset; an item's latest record counts
    (a failed item retried by --resume has a newer record)."""
    per_subset: dict[str, int] = {}
    latest: dict[str, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: unreadable ({exc}); failed items not listed")
        return
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            # A half-written last line is a killed run (docs/results.md); anything else is damage.
            if lineno != len(lines):
                problems.append(f"{path}:{lineno}: malformed record; skipped")
            continue
        if not isinstance(rec, dict):
            continue
        key = text(rec.get("item_id"), f"(line {lineno})")
        latest.pop(key, None)
        latest[key] = rec
    run.n_records = len(latest)
    for rec in latest.values():
        if rec.get("status") != "failed":
            continue
        subset = text(rec.get("subset"), "?")
        if per_subset.get(subset, 0) >= FAILED_SAMPLE_PER_SUBSET:
            continue
        per_subset[subset] = per_subset.get(subset, 0) + 1
        run.failed.append(FailedItem(text(rec.get("item_id"), "?"), subset, text(rec.get("error"), "(no message)")))


def load_store(root: str | Path, include_smoke: bool = False) -> Store:
    """Read every run, speed and kernel file under ``root``; never raises on a bad file.

    Runs of the built-in smoke configuration (tiny random model) measure nothing: they are loaded (the
    report lists them, labelled) but fill table cells only with ``include_smoke``."""
    store = Store(Path(root), include_smoke=include_smoke)
    runs_dir = store.root / "runs"
    for run_dir in sorted(p for p in runs_dir.glob("*") if p.is_dir()):
        manifest_path, summary_path = run_dir / "manifest.json", run_dir / "summary.json"
        if not manifest_path.exists():
            if {f.name for f in run_dir.iterdir()} != {".lock"}:  # only a lock: a run stopped before it began
                store.problems.append(f"{run_dir}: no manifest.json; run skipped")
            continue
        manifest = _read_json(manifest_path, store.problems)
        if manifest is None:
            continue
        summary = _read_json(summary_path, store.problems) if summary_path.exists() else None
        if summary is None and not summary_path.exists():
            store.problems.append(f"{run_dir}: no summary.json yet (run incomplete?); its numbers are not shown")
        run = Run(text(manifest.get("run_id"), run_dir.name), manifest, summary)
        if (run_dir / "records.jsonl").exists():
            _read_records(run_dir / "records.jsonl", run, store.problems)
        store.runs.append(run)
    for path in sorted((store.root / "speed").glob("*.json")):
        if (read := _read_measurement(path, store.problems)) is not None:
            data, common = read
            store.speed.append(SpeedFile(**common, created=text(data.get("created")),
                                         partial=data.get("partial") is True))
    for path in sorted((store.root / "kernels").glob("*.json")):
        if (read := _read_measurement(path, store.problems)) is not None:
            data, common = read
            pack = data.get("pack") if isinstance(data.get("pack"), dict) else {}
            store.kernels.append(KernelFile(**common, pack=pack))
    return store


def _read_measurement(path: Path, problems: list[str]) -> tuple[dict, dict[str, Any]] | None:
    """A speed/kernels JSON file and the :class:`MeasurementFile` fields read from it; None (and a
    problem noted) when it is unreadable or has no ``rows`` list."""
    data = _read_json(path, problems)
    if data is None:
        return None
    if not isinstance(data.get("rows"), list):
        problems.append(f"{path}: no 'rows' list; skipped")
        return None
    return data, {"name": path.stem, "env": data.get("env") if isinstance(data.get("env"), dict) else {},
                  "peak_bandwidth_gbps": num(data.get("peak_bandwidth_gbps")),
                  "rows": [r for r in data["rows"] if isinstance(r, dict)],
                  "note": data.get("note") if isinstance(data.get("note"), str) else ""}
