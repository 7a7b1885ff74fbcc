"""The cheap phase of a run, before any weights load: each method's run id, its lock, the existing-run
and ``--resume`` checks, and what the run must cover (docs/results.md, "Run identity")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oscar_eval.errors import UserError
from oscar_eval.store.results import RunLocked, RunStore, StoreError, make_run_id
from oscar_eval.store.run_identity import differences, static_config


@dataclass
class PreparedRun:
    """One method's run, locked and checked; ``config`` is the static part of its configuration."""

    name: str
    spec: Any
    store: RunStore
    config: dict
    old_manifest: dict | None
    to_run: list = field(default_factory=list)  # the items this invocation evaluates
    skipped: int = 0  # items left out because an earlier ok (or, with --retry-failed, any) record has them
    coverage_target: dict = field(default_factory=dict)  # {"total", "missing_subsets"}: a complete run


def store_error(exc: StoreError) -> UserError:
    return UserError(f"{exc}; pass --overwrite to start the run over")


def count_items(bench: Any, subsets: list[str]) -> int:
    """Items of ``subsets`` without ``--limit`` (a benchmark may count them cheaply with ``n_items``)."""
    if hasattr(bench, "n_items"):
        return sum(int(bench.n_items(s)) for s in subsets)
    return sum(1 for s in subsets for _ in bench.items(s, None))


def coverage_target(bench: Any, items: list, limit: int | None, default_subsets: list[str]) -> dict:
    """What a complete run covers: every item of the benchmark's default subsets (and any others chosen)."""
    subsets = list(bench.subsets())
    total = len(items) if limit is None else count_items(bench, subsets)
    return {"total": total, "missing_subsets": [s for s in default_subsets if s not in subsets]}


def prepare(*, bench: Any, specs: list[tuple[str, Any]], items: list, results: Path, label: str, settings: dict,
            limit: int | None, data_files: dict[str, str], revision: str, dtype: str, device: str,
            params_of: Any, resume: bool, overwrite: bool, retry_failed: bool, shard: Any = None,
            shard_items: list | None = None, device_map: str | None = None) -> list[PreparedRun]:
    """Lock every method's run and check it may be written; on any error, release what was taken.

    ``items`` are the run's items (in its id); with ``shard`` (a rank of a launch) the process writes and
    resumes only ``shard_items``, under that shard's lock."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    item_ids = [it.item_id for it in items]
    mine = list(items) if shard_items is None else list(shard_items)
    prepared: list[PreparedRun] = []
    try:
        for name, spec in specs:
            config = static_config(benchmark=bench.name, settings=settings, subsets=list(bench.subsets()),
                                   limit=limit, item_ids=item_ids, data_files=data_files, model_revision=revision,
                                   dtype=dtype, device=device, method=spec.name, params=params_of(spec),
                                   device_map=device_map)
            store = RunStore(results, make_run_id(bench.name, label, spec.name, config), shard)
            try:
                store.lock()
            except RunLocked as exc:
                raise UserError(str(exc)) from None
            run = PreparedRun(name, spec, store, config, None)
            prepared.append(run)
            _check_layout(store, resume, overwrite)
            _check_existing(run, mine, resume, overwrite, retry_failed)
    except BaseException:
        for run in prepared:
            run.store.unlock()
        raise
    return prepared


def _check_layout(store: RunStore, resume: bool, overwrite: bool) -> None:
    """One process and a sharded launch of one world size never mix records in one run folder: a folder
    written one way is continued the same way (or merged, or started over with ``--overwrite``)."""
    worlds = store.shard_world_sizes()
    shard = store.shard
    if overwrite:  # before any weights load, so no rank can merge a stale shard of the old run
        store.remove_shard_files()
        if shard is None or shard.rank == 0:
            store.remove_merged_files()
        return
    if shard is None:
        if worlds:
            w = max(worlds)
            raise UserError(f"run {store.run_id} was sharded over {w} processes (records.rank*-of-{w}.jsonl in "
                            f"{store.dir}); continue it with the same launch (and --resume), or pass --overwrite")
        return
    if worlds - {shard.world_size}:
        w = max(worlds - {shard.world_size})
        raise UserError(f"run {store.run_id} was sharded over {w} processes, not {shard.world_size} "
                        f"(records.rank*-of-{w}.jsonl in {store.dir}); launch {w} processes, or pass --overwrite")
    base = RunStore(store.root, store.run_id)
    if base.records_path.exists() and shard.world_size not in worlds:
        what = "continue it with one process" if resume else "pass --resume with one process to continue it"
        raise UserError(f"run {store.run_id} was written by one process ({base.records_path}); {what}, or "
                        "pass --overwrite")


def _check_existing(run: PreparedRun, items: list, resume: bool, overwrite: bool, retry_failed: bool) -> None:
    store = run.store
    run.to_run = list(items)
    if overwrite or not store.exists():
        return
    try:
        old = store.read_manifest() if store.manifest_path.exists() else None
        latest = store.latest_records()
    except StoreError as exc:
        raise store_error(exc) from None
    if not resume:
        raise UserError(f"results for {store.run_id} already exist ({len(latest)} items in {store.dir}); "
                        "pass --resume to continue or --overwrite to start over")
    if old is None:
        raise UserError(f"{store.dir} has records but no manifest.json: their configuration is unknown; "
                        "pass --overwrite to start over")
    stored = old.get("config")
    if not isinstance(stored, dict):
        raise UserError(f"{store.manifest_path}: written without a run configuration (an older oscar-eval); "
                        "pass --overwrite to start over")
    static = {k: v for k, v in stored.items() if k != "runtime"}
    if static != run.config:
        raise UserError(f"--resume: run {store.run_id} was recorded with a different configuration ("
                        + "; ".join(differences(static, run.config)) + "); pass --overwrite to start over")
    run.old_manifest = old
    ok = {r["item_id"] for r in latest if r.get("status") == "ok"}
    failed = {r["item_id"] for r in latest if r.get("status") != "ok"}
    keep = failed if retry_failed else None  # --retry-failed: only the failed items, nothing new
    run.to_run = [it for it in items if it.item_id not in ok and (keep is None or it.item_id in keep)]
    run.skipped = len(items) - len(run.to_run)


def check_runtime(run: PreparedRun, runtime: dict) -> None:
    """``--resume`` with a different decode path or processor than the records were made with: refuse."""
    if run.old_manifest is None:
        return
    before = (run.old_manifest.get("config") or {}).get("runtime")
    if isinstance(before, dict) and before != runtime:
        raise UserError(f"--resume: run {run.store.run_id} was recorded with a different runtime ("
                        + "; ".join(differences({"runtime": before}, {"runtime": runtime}))
                        + "); pass --overwrite to start over")
