"""A watch on the Python entry points at which the host waits for (or feeds) the device.

A decode step that is to be captured in a CUDA graph (and that should not stall the host) may not read
device data on the host, build tensors whose shape depends on device data, or copy host data to the
device. On a CPU none of these waits, so this module finds them by patching the Python functions that
do them on a GPU, and counts (or refuses) their calls while :meth:`HostSyncWatch.watching` is active:

* ``sync``: device -> host reads and data-dependent shapes: ``item``, ``tolist``, ``__bool__``,
  ``__int__``, ``__float__``, ``__index__``, ``numpy``, ``cpu``, ``nonzero``/``argwhere``/one-argument
  ``where``, ``equal``/``allclose``/``is_nonzero``, ``masked_select``, ``unique``, ``repeat_interleave``
  with tensor repeats, and indexing with a boolean mask or tensor slice bounds;
* ``host_tensor``: tensors made from host data (``torch.tensor``, ``as_tensor``, ``from_numpy``) or by a
  factory without ``device=`` (on a GPU: host memory, copied to the device before use);
* ``device_move``: ``.to(<device>)`` / ``.cuda()`` (a host -> device copy, which waits for the stream,
  when the tensor is on the host; a CPU run cannot tell, so every such call counts).

On a GPU, ``torch.cuda.set_sync_debug_mode`` is the complementary check of the C++ side.
"""

from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

SYNC, HOST_TENSOR, DEVICE_MOVE = "sync", "host_tensor", "device_move"
KINDS = (SYNC, HOST_TENSOR, DEVICE_MOVE)


class HostSyncError(RuntimeError):
    """A watched call happened while the watch refuses them."""


def _reads_device(index) -> bool:
    """An index whose result shape depends on tensor data: a boolean mask, or a slice with tensor bounds."""
    items = index if isinstance(index, tuple) else (index,)
    for i in items:
        if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8):
            return True
        if isinstance(i, slice) and any(isinstance(x, torch.Tensor) for x in (i.start, i.stop, i.step)):
            return True
    return False


def _names_device(args: tuple, kwargs: dict) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args)


def _no_device(args: tuple, kwargs: dict) -> bool:
    return kwargs.get("device") is None


# (owner, attribute, kind, condition on (args, kwargs) without self; None: every call)
_TENSOR_METHODS: list[tuple[str, str, Callable | None]] = [
    ("item", SYNC, None), ("tolist", SYNC, None), ("__bool__", SYNC, None), ("__int__", SYNC, None),
    ("__float__", SYNC, None), ("__index__", SYNC, None), ("numpy", SYNC, None), ("cpu", SYNC, None),
    ("nonzero", SYNC, None), ("argwhere", SYNC, None), ("equal", SYNC, None), ("allclose", SYNC, None),
    ("masked_select", SYNC, None), ("unique", SYNC, None),
    ("repeat_interleave", SYNC, lambda a, k: bool(a) and isinstance(a[0], torch.Tensor)
     and k.get("output_size") is None),
    ("to", DEVICE_MOVE, _names_device), ("cuda", DEVICE_MOVE, None),
]
_TORCH_FUNCTIONS: list[tuple[str, str, Callable | None]] = [
    ("nonzero", SYNC, None), ("argwhere", SYNC, None), ("equal", SYNC, None), ("allclose", SYNC, None),
    ("is_nonzero", SYNC, None), ("masked_select", SYNC, None), ("unique", SYNC, None),
    ("where", SYNC, lambda a, k: len(a) + len(k) == 1),
    ("repeat_interleave", SYNC, lambda a, k: len(a) > 1 and isinstance(a[1], torch.Tensor)
     and k.get("output_size") is None),
    ("tensor", HOST_TENSOR, None), ("as_tensor", HOST_TENSOR, None), ("from_numpy", HOST_TENSOR, None),
    *((name, HOST_TENSOR, _no_device) for name in ("arange", "zeros", "ones", "empty", "full", "eye", "linspace")),
]

_INHERITED = object()
_HERE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def _call_site() -> str:
    """``path:line (function)`` of the nearest caller outside this module and torch."""
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _HERE and not path.startswith(_TORCH_DIR):
            return f"{os.path.relpath(path)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"


class _IndexingWatch(TorchFunctionMode):
    """Indexing is watched through torch's function mode, not by patching ``Tensor.__getitem__``: assigning
    ``__getitem__`` on a class also fills CPython's sequence slot, which deleting it does not clear, and from
    then on ``torch.tensor([tensor(1), ...])`` takes every 0-d tensor for a sequence."""

    _FUNCS = (torch.Tensor.__getitem__, torch.Tensor.__setitem__)

    def __init__(self, watch: HostSyncWatch):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        watch = self.watch
        if func in self._FUNCS and watch._depth and not watch._busy and len(args) > 1 and _reads_device(args[1]):
            watch._record(SYNC, func.__name__)
        return func(*args, **kwargs)


class HostSyncWatch:
    """Patch the watched calls (a context manager); count them inside :meth:`watching`.

    ``refuse``: the kinds that raise :class:`HostSyncError` inside :meth:`watching` instead of being
    counted. ``counts`` (per kind) and ``sites`` (per ``(kind, call, site)``) accumulate; a watched call
    made by another watched call (``tolist`` inside ``__bool__``, say) counts once.
    """

    def __init__(self, refuse: tuple[str, ...] = ()):
        unknown = set(refuse) - set(KINDS)
        if unknown:
            raise ValueError(f"HostSyncWatch(refuse=...): unknown kinds {sorted(unknown)}; known: {KINDS}")
        self.refuse = tuple(refuse)
        self.counts: Counter[str] = Counter()
        self.sites: Counter[tuple[str, str, str]] = Counter()
        self._depth = 0
        self._busy = False
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> HostSyncWatch:
        for name, kind, cond in _TENSOR_METHODS:
            self._patch(torch.Tensor, name, kind, cond, method=True)
        for name, kind, cond in _TORCH_FUNCTIONS:
            self._patch(torch, name, kind, cond, method=False)
        self._indexing = _IndexingWatch(self)
        self._indexing.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._indexing.__exit__(None, None, None)
        for owner, name, original in reversed(self._saved):
            if original is _INHERITED:  # the class only inherited it: drop the patch, do not shadow the base
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Count (or refuse) the watched calls made inside this block."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def total(self, kind: str | None = None) -> int:
        return sum(self.counts.values()) if kind is None else self.counts[kind]

    def reset(self) -> None:
        self.counts.clear()
        self.sites.clear()

    def _patch(self, owner, name: str, kind: str, cond, method: bool) -> None:
        original = getattr(owner, name)
        watch = self

        @functools.wraps(original)
        def patched(*args, **kwargs):
            if not watch._depth or watch._busy:
                return original(*args, **kwargs)
            rest = args[1:] if method else args
            if cond is None or cond(rest, kwargs):
                watch._record(kind, name)
            watch._busy = True
            try:
                return original(*args, **kwargs)
            finally:
                watch._busy = False

        # What to put back: the owner's own attribute, or a marker when it comes from a base class
        # (torch.Tensor inherits most of these from torch._C.TensorBase; shadowing them with a copy of the
        # base's slot wrapper after the watch changes how Python dispatches them).
        own = owner.__dict__.get(name, _INHERITED) if isinstance(owner, type) else original
        self._saved.append((owner, name, own))
        setattr(owner, name, patched)

    def _record(self, kind: str, name: str) -> None:
        site = _call_site()
        if kind in self.refuse:
            raise HostSyncError(f"{kind} call {name!r} during a watched decode step at {site}")
        self.counts[kind] += 1
        self.sites[(kind, name, site)] += 1
