"""RULER scoring as NVIDIA/RULER at commit c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a does it
(``scripts/eval/evaluate.py`` and ``scripts/eval/synthetic/constants.py``; facts, not code):

- the prediction is stripped, every control character (U+0000-U+001F) becomes a newline, stripped again;
- ``string_match_all`` (niah, variable tracking, cwe, fwe): the fraction of the references that occur
  in the prediction, case-insensitively (substring test, no other normalization);
- ``string_match_part`` (qa): 1 when any reference occurs in the prediction, case-insensitively, else 0;
- a task's score is the mean over its samples x 100 (the official rounds it to 2 decimals; we keep it
  and round when printing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from oscar_eval.scoring.cells import cell_means

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    pred = postprocess(prediction).lower()
    if not references:
        return 0.0
    return sum(1.0 for r in references if r.lower() in pred) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    pred = postprocess(prediction).lower()
    return max((1.0 if r.lower() in pred else 0.0 for r in references), default=0.0)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown RULER metric {metric!r} (known: {', '.join(METRICS)})")
    return METRICS[metric](prediction, references)


def _split_id(item_id: str) -> tuple[str, str] | None:
    """``"niah_single_1/4096/7"`` -> ``("niah_single_1", "4096")``."""
    parts = str(item_id).split("/")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], parts[1]


def summarize_records(records: list[dict], task_order: Sequence[str] = ()) -> dict:
    """``grid`` {context: {task: x100}}, each context's mean over its tasks, each task's mean over its
    contexts, and ``average`` (the mean of the task x context cells)."""
    means, n = cell_means(records, _split_id)
    order = {t: i for i, t in enumerate(task_order)}
    tasks = sorted({t for t, _ in means}, key=lambda t: (order.get(t, len(order)), t))
    contexts = sorted({c for _, c in means}, key=int)
    grid = {c: {t: means[(t, c)] for t in tasks if (t, c) in means} for c in contexts}

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    average = mean(list(means.values()))
    by_task = {t: mean([grid[c][t] for c in contexts if t in grid[c]]) for t in tasks}
    return {"average": average, "grid": grid, "grid_row_label": "task", "grid_rows": tasks,
            "contexts": {c: mean(list(grid[c].values())) for c in contexts}, "tasks": by_task,
            "columns": {**by_task, "Average": average}, "n": n}
