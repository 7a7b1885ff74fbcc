"""`oscar-eval merge`: turn the shards of sharded runs into complete runs (records, manifest, summary)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oscar_eval.errors import UserError
from oscar_eval.paths import RESULTS_DEFAULT, results_root


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge", help="merge the shards of runs launched with torchrun / accelerate / srun",
        description="Check that every shard of a sharded run is complete and write the run's records.jsonl, "
                    "manifest.json and summary.json once. Without RUN_ID, every sharded run under --results. "
                    "Exit status 1 when a run has missing or incomplete shards (they are named).")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="run folders under <results>/runs (default: all "
                                                                "sharded runs)")
    p.add_argument("--results", default=str(results_root()), help=f"results store folder (default: {RESULTS_DEFAULT})")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from oscar_eval.api import merge_run
    from oscar_eval.store import merge
    from oscar_eval.store.results import RunStore, StoreError

    runs_dir = Path(args.results) / "runs"
    ids = list(args.run_ids)
    if not ids:
        ids = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()
                     and RunStore(args.results, p.name).shard_world_sizes()) if runs_dir.is_dir() else []
        if not ids:
            raise UserError(f"no sharded runs under {runs_dir}")
    incomplete = 0
    for run_id in ids:
        if not (runs_dir / run_id).is_dir():
            raise UserError(f"no run {run_id} under {runs_dir}")
        try:
            summary = merge_run(args.results, run_id)
        except merge.MergeIncomplete as exc:
            print(f"oscar-eval merge: {exc}", file=sys.stderr)
            incomplete += 1
            continue
        except (StoreError, ValueError) as exc:
            raise UserError(str(exc)) from None
        world = RunStore(args.results, run_id).read_manifest()["shards"]["world_size"]
        cov = summary.get("coverage") or {}
        print(f"{run_id}: merged {world} shards, {summary['n_items']} items ({summary['n_failed']} failed)"
              + ("" if cov.get("complete", True) else f", partial run: {cov.get('done')} of {cov.get('total')}"))
    return 1 if incomplete else 0
