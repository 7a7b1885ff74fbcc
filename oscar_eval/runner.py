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
from oscar_eval.store.results import RunStore


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
    generate_batch: Callable[[list[Item]], list[Any]] | None = None,
    batch_size: int = 1,
    batch_key: Callable[[Item], Any] | None = None,
) -> LoopStats:
    """Run, score and record every item not already in ``done_ids``; failures are recorded, not raised.

    With ``batch_size > 1`` and ``generate_batch``, pending items are grouped by ``batch_key`` (e.g.
    the prompt's token count, so a batch pads little) and generated together; the records are the
    same as batch 1's. A batch that raises is retried item by item, so one bad item fails alone."""
    done_ids = set(done_ids or ())
    stats = LoopStats()
    batched = batch_size > 1 and generate_batch is not None
    pending: list[Item] = []
    for item in items:
        if item.item_id in done_ids:
            stats.skipped += 1
            _tick(progress)
        elif isinstance(item, ItemError):
            base = {"item_id": item.item_id, "subset": item.subset, "index": item.index}
            _record(store, stats, done_ids, progress,
                    {**base, "length": None, "status": "failed", "error": item.error, "score": None})
        elif batched:
            pending.append(item)
            done_ids.add(item.item_id)  # duplicates of an id run once
        else:  # batch 1: records in data order
            done_ids.add(item.item_id)
            _run_one(item, store, stats, generate, score, seed, progress)
    for batch in length_batches(pending, batch_size, batch_key):
        if len(batch) == 1:
            _run_one(batch[0], store, stats, generate, score, seed, progress)
            continue
        _seed(seed)
        start = time.perf_counter()
        try:
            gens = generate_batch(batch)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:  # noqa: BLE001 - isolate the item that fails: one at a time
            for item in batch:
                _run_one(item, store, stats, generate, score, seed, progress)
            continue
        seconds = time.perf_counter() - start
        for item, gen in zip(batch, gens, strict=True):
            record = _scored(item, gen, score)
            record["seconds"] = round(seconds / len(batch), 4)
            record["batch"] = {"size": len(batch), "seconds": round(seconds, 4)}
            _record(store, stats, None, progress, record)
    return stats


def length_batches(items: list[Item], batch_size: int, key: Callable[[Item], Any] | None) -> list[list[Item]]:
    """Chunks of at most ``batch_size`` items with similar ``key`` (stable: equal keys keep data order).
    An item whose key cannot be computed (an image or a clip that does not decode, say) comes last, in
    a batch of its own: it fails there alone, as at batch 1, and the run goes on."""
    if key is None:
        ordered, alone = list(items), []
    else:
        keyed, alone = [], []
        for item in items:
            try:
                keyed.append((key(item), item))
            except Exception:  # noqa: BLE001 - generating it will raise again and record the error
                alone.append(item)
        ordered = [item for _, item in sorted(keyed, key=lambda pair: pair[0])]
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)] + [[it] for it in alone]


def _seed(seed: int) -> None:
    from oscar_eval.models import seed_everything

    seed_everything(seed)


def _tick(progress: Any, n: int = 1) -> None:
    if progress is not None:
        progress.update(n)


def _base(item: Item) -> dict:
    return {"item_id": item.item_id, "subset": item.subset, "index": item.index, "length": item.length}


def _scored(item: Item, gen: Any, score: Callable[[Item, Any], float | None]) -> dict:
    """The ok record of a generation, or a failed one if scoring raises."""
    try:
        # A runner that measures (ppl) returns metrics; the benchmark scores those instead.
        metrics = getattr(gen, "metrics", None)
        raw = score(item, gen.prediction if metrics is None else metrics)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001
        return {**_base(item), "status": "failed", "error": one_line(exc), "references": item.references,
                "score": None}
    record = {**_base(item), "status": "ok", "error": None, "prompt_sha256": gen.prompt_sha256,
              "input_tokens": gen.input_tokens, "truncated": gen.truncated, "prediction": gen.prediction,
              "references": item.references,
              "score": None if raw is None else float(raw),  # None: scored later (e.g. by a judge)
              "new_tokens": gen.new_tokens}
    if metrics is not None:
        record["metrics"] = metrics
    return record


def _run_one(item: Item, store: RunStore, stats: LoopStats, generate: Callable[[Item], Any],
             score: Callable[[Item, Any], float | None], seed: int, progress: Any) -> None:
    start = time.perf_counter()
    _seed(seed)
    try:
        record = _scored(item, generate(item), score)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the run
        record = {**_base(item), "status": "failed", "error": one_line(exc), "references": item.references,
                  "score": None}
    record["seconds"] = round(time.perf_counter() - start, 4)
    _record(store, stats, None, progress, record)


def _record(store: RunStore, stats: LoopStats, done_ids: set[str] | None, progress: Any, record: dict) -> None:
    store.append(record)
    if done_ids is not None:
        done_ids.add(record["item_id"])
    stats.done += 1
    stats.failed += record["status"] != "ok"
    _tick(progress)
