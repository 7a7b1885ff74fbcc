"""What a kernel-level builder returns (:class:`Case`) and raises when it cannot run (:class:`Unavailable`).

Its own module so that the BF16 baselines (:mod:`~oscar_eval.speed.kernel`) and the packed-kernel
adapter (:mod:`~oscar_eval.speed.packed_kernel`) share them without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Unavailable(RuntimeError):
    """This implementation cannot run here (missing package or kernel); the message says why."""


@dataclass
class Case:
    fn: Callable[[], Any]
    calls: int
    kv_bytes: int  # bytes of ONE input set's cache (what a real cache of this shape holds)
    use_graph: bool = True
    note: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    check: Callable[[], float] | None = None  # relative error against a reference, when cheap
    state: Any = None  # the arm's own objects (e.g. its cache), for inspection; never written out
