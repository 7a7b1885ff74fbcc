"""What every benchmark provides: items (text, images, audio) and a per-item scorer.

A benchmark yields :class:`Item` objects; a model runner (:mod:`oscar_eval.models`) turns an item into
model inputs and generates; the benchmark scores the prediction. Only the pieces a benchmark needs are
set on an item, so a text task leaves ``images``/``audio`` empty and a vision task fills ``images``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Item:
    """One evaluated example, independent of the on-disk format it came from."""

    item_id: str                      # stable across runs: used by --resume
    subset: str
    index: int                        # position in its data file
    prompt: str                       # the filled prompt (before truncation / chat template)
    references: list[str]
    max_new_tokens: int
    length: int | None = None         # LongBench `length` (bucket key)
    images: list[Any] = field(default_factory=list)   # PIL images or paths (vision benchmarks)
    audio: list[Any] = field(default_factory=list)    # audio paths or arrays (audio benchmarks)
    chat_template: bool = True        # whether --chat-template may wrap this item
    stop_at_newline: bool = False     # also stop generation at a newline token
    extra: dict[str, Any] = field(default_factory=dict)  # scorer inputs (e.g. all_classes)


@dataclass
class ItemError:
    """An item that could not be read; recorded as failed, the run continues."""

    item_id: str
    subset: str
    index: int
    error: str


class Benchmark(Protocol):
    name: str
    kind: str  # "text" | "vision" | "audio"

    def subsets(self) -> list[str]: ...

    def data_files(self, subset: str) -> list[Path]: ...

    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]: ...

    def score(self, item: Item, prediction: str) -> float: ...

    def summarize(self, records: list[dict]) -> dict: ...
