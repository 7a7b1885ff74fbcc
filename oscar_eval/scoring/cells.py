"""Grid aggregation shared by the grid benchmarks (NIAH: context x depth; RULER: task x context)."""

from __future__ import annotations

from collections.abc import Callable


def cell_means(records: list[dict], split_id: Callable[[str], tuple[str, str] | None]
               ) -> tuple[dict[tuple[str, str], float], int]:
    """Mean score x100 per grid cell over the ok, scored records, and how many records went in;
    ``split_id`` maps an item id to its cell (None: not a grid item, left out)."""
    cells: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r.get("status") != "ok" or r.get("score") is None:
            continue
        key = split_id(r.get("item_id", ""))
        if key is not None:
            cells.setdefault(key, []).append(float(r["score"]))
    return {k: 100.0 * sum(v) / len(v) for k, v in cells.items()}, sum(len(v) for v in cells.values())
