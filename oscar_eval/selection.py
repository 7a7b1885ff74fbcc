"""One line saying what a run evaluates, from the benchmark as built: the grid after every override
(``--contexts``, ``--depths``, ``--tasks``, ``--subsets``...), never the task config's defaults."""

from __future__ import annotations

from typing import Any


def describe_selection(bench: Any, n_items: int) -> str:
    """E.g. ``contexts 1024, 2048 tokens, 3 depths, 6 items`` (NIAH) or ``subsets trec_e, lcc_e, 40 items``."""
    parts: list[str] = []
    contexts = getattr(bench, "contexts", None)
    if contexts:
        parts.append(f"contexts {', '.join(map(str, contexts))} tokens")
    depths = getattr(bench, "depths", None)
    if depths:
        parts.append(f"{len(depths)} depth{'s' if len(depths) != 1 else ''} ({', '.join(map(str, depths))} %)")
    tasks = getattr(bench, "tasks", None)
    if tasks:
        parts.append(f"tasks {', '.join(tasks)}")
    if getattr(bench, "prompt_tokens", None) and getattr(bench, "scored_tokens", None):
        parts.append(f"{bench.prompt_tokens} prompt + {bench.scored_tokens} scored tokens per document")
    if not parts:  # the subsets are the selection (LongBench-E datasets, OCRBench categories, ...)
        parts.append(f"subsets {', '.join(bench.subsets())}")
    parts.append(f"{n_items} item{'s' if n_items != 1 else ''}")
    return ", ".join(parts)
