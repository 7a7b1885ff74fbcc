"""Merging a sharded run (docs/results.md, "Sharded runs"): the shards' records become the run's
``records.jsonl``, ``manifest.json`` and ``summary.json``, exactly as one process would have written them.

A merge happens only when every shard is complete (each item of its part has a record, ok or failed),
the shards share one configuration (static and runtime: same decode path, kernel build, processors),
and their parts, in rank order, are the run's item list (``config.items.sha256``). Otherwise it names
the shards that are missing or incomplete and writes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

from oscar_eval.store.results import LOCK, RECORDS, RunStore, StoreError, coverage
from oscar_eval.store.run_identity import config_hash, differences, items_digest
from oscar_eval.store.sharding import Shard


class MergeIncomplete(RuntimeError):
    """Some shards of the run are missing or incomplete (the message names them)."""


def _shard_manifest(store: RunStore) -> dict | None:
    return store.read_manifest() if store.manifest_path.exists() else None


def check(root: str | Path, run_id: str) -> tuple[int, list[tuple[dict, list[dict]]]]:
    """``(world_size, [(shard manifest, its records in item order)] by rank)`` of a complete sharded
    run; raises :class:`MergeIncomplete` naming every missing or incomplete shard, :class:`StoreError`
    for damaged files, ``ValueError`` for shards that do not belong together."""
    base = RunStore(root, run_id)
    if not base.dir.is_dir():
        raise ValueError(f"no run {run_id} under {Path(root) / 'runs'}")
    worlds = base.shard_world_sizes()
    if not worlds:
        raise ValueError(f"run {run_id} has no shards to merge (a one-process run writes its summary itself)")
    if len(worlds) > 1:
        raise ValueError(f"run {run_id} holds shards of several launches (world sizes "
                         f"{', '.join(map(str, sorted(worlds)))}); rerun it with --overwrite")
    (world,) = worlds
    shards, problems = [], []
    for rank in range(world):
        store = RunStore(root, run_id, Shard(rank, world))
        manifest = _shard_manifest(store)
        if manifest is None:
            problems.append(f"shard {store.shard.tag} is missing ({store.manifest_path.name} absent: it never "
                            "started)")
            continue
        part = (manifest.get("shard") or {}).get("item_ids")
        if not isinstance(part, list):
            raise StoreError(f"{store.manifest_path}: no shard.item_ids (not written by a sharded run)")
        latest = {r["item_id"]: r for r in store.latest_records()}
        if stray := [i for i in latest if i not in set(part)]:
            raise StoreError(f"{store.records_path}: records for items outside the shard (e.g. {stray[0]!r})")
        missing = [i for i in part if i not in latest]
        if missing:
            problems.append(f"shard {store.shard.tag} is incomplete ({len(part) - len(missing)} of {len(part)} "
                            f"items recorded in {store.records_path.name}; first missing {missing[0]!r})")
            continue
        shards.append((manifest, [latest[i] for i in part]))
    if problems:
        raise MergeIncomplete(f"run {run_id}: " + "; ".join(problems) + ". Resume the missing shards with the "
                              "same launch command and --resume, then run `oscar-eval merge`")
    first = shards[0][0]
    for rank, (manifest, _) in enumerate(shards[1:], start=1):
        if manifest.get("config") != first.get("config"):
            raise ValueError(f"run {run_id}: shard rank{rank}-of-{world} was run with another configuration "
                             "than rank 0 (" + "; ".join(differences(first.get("config") or {},
                                                                     manifest.get("config") or {})) + ")")
    ids = [r["item_id"] for _, recs in shards for r in recs]
    expected = (first.get("config") or {}).get("items", {}).get("sha256")
    if items_digest(ids) != expected:
        raise ValueError(f"run {run_id}: the shards' items, in rank order, are not the run's item list "
                         f"({len(ids)} items); rerun it with --overwrite")
    return world, shards


def merge(root: str | Path, run_id: str, summarize: Callable[[list[dict]], dict]) -> dict:
    """Write ``records.jsonl``, ``manifest.json`` and ``summary.json`` of a complete sharded run and
    return the summary. ``summarize``: the benchmark's (the store knows no benchmark; without one in
    hand, :func:`oscar_eval.api.merge_run` rebuilds it from the shard manifest's ``benchmark_args``)."""
    from oscar_eval import provenance

    base = RunStore(root, run_id)
    base.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(base.dir / f"{LOCK}.merge", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two ranks finishing together merge one after the other
        world, shards = check(root, run_id)
        first = shards[0][0]
        records = [r for _, recs in shards for r in recs]
        _write_records_atomic(base.dir / RECORDS, records)
        target = first.get("coverage_target") or {"total": len(records), "missing_subsets": []}
        manifest = {k: v for k, v in first.items() if k not in ("schema", "run_id", "shard")}
        manifest.update({
            "coverage": coverage(len(records), target["total"], target.get("missing_subsets") or []),
            "shards": {"world_size": world, "ranks": [
                {"rank": m["shard"]["rank"], "items": len(m["shard"]["item_ids"]), "host": m["shard"].get("host"),
                 "device": (m.get("model") or {}).get("device"), "created": m.get("created"),
                 "updated": m.get("updated")} for m, _ in shards]},
            "created": min(m.get("created") or "" for m, _ in shards) or provenance.now(),
            "updated": provenance.now(),
        })
        manifest["config_hash"] = config_hash(manifest["config"])
        base.write_manifest(manifest)
        return base.recompute_summary(summarize, **first["summary_header"])
    finally:
        os.close(fd)


def _write_records_atomic(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
