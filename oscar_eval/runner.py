"""The evaluation loop: benchmark items -> model runner (with a fresh KV cache) -> scored records.

Benchmark- and modality-agnostic: a benchmark yields items and scores predictions, a model runner
generates, the store persists. Every item is seeded the same way so a resumed run reproduces exactly
what an uninterrupted one would have produced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from oscar_eval.benchmarks.base import Item, ItemError
from oscar_eval.results import RunStore


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass
class LoopStats:
    done: int = 0
    skipped: int = 0
    failed: int = 0


def evaluate_items(
    items: Iterable[Item | ItemError],
    store: RunStore,
    generate: Callable[[Item], Any],
    score: Callable[[Item, str], float | None],
    seed: int,
    done_ids: set[str] | None = None,
    progress: Any = None,
) -> LoopStats:
    """Run, score and record every item not already in ``done_ids``; failures are recorded, not raised."""
    from oscar_eval.models import seed_everything

    done_ids = set(done_ids or ())
    stats = LoopStats()
    for item in items:
        if item.item_id in done_ids:
            stats.skipped += 1
            if progress is not None:
                progress.update(1)
            continue
        base = {"item_id": item.item_id, "subset": item.subset, "index": item.index}
        if isinstance(item, ItemError):
            record = {**base, "length": None, "status": "failed", "error": item.error, "score": None}
        else:
            base["length"] = item.length
            start = time.perf_counter()
            seed_everything(seed)
            try:
                gen = generate(item)
                # A runner that measures (ppl) returns metrics; the benchmark scores those instead.
                metrics = getattr(gen, "metrics", None)
                raw = score(item, gen.prediction if metrics is None else metrics)
                value = None if raw is None else float(raw)  # None: scored later (e.g. by a judge)
                record = {**base, "status": "ok", "error": None, "prompt_sha256": gen.prompt_sha256,
                          "input_tokens": gen.input_tokens, "truncated": gen.truncated,
                          "prediction": gen.prediction, "references": item.references, "score": value,
                          "new_tokens": gen.new_tokens}
                if metrics is not None:
                    record["metrics"] = metrics
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - one bad item must not stop the run
                record = {**base, "status": "failed", "error": one_line(exc), "references": item.references,
                          "score": None}
            record["seconds"] = round(time.perf_counter() - start, 4)
        store.append(record)
        done_ids.add(item.item_id)
        stats.done += 1
        stats.failed += record["status"] != "ok"
        if progress is not None:
            progress.update(1)
    return stats
