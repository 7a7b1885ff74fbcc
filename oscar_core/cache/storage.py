"""What a packed layer stores per stream, and the layouts its encoded units live in.

A :class:`~oscar_core.cache.layer.PackedKVLayer` holds two :class:`Stream` s (keys, values): encoded
units ``[batch, capacity, ...]`` plus the full-precision window ``[batch, heads, <=R, head_dim]``,
left-aligned per sequence (:mod:`oscar_core.cache.policy`), and the tokens an encoder flagged
``KEEP_FULL`` as full-precision overrides.

Where the encoded units live is the layer's *layout*, one interface (:class:`PackedLayout`) with two
backends: :class:`ReferenceLayout` (this module: the method's block entries, packed codes, fp16
scales/zeros, token norms; with ``fake_quant`` the dequantized tensors in the model's dtype) and the
CUDA decode kernel's layout (:class:`oscar_core.kernel_cache.KernelLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from oscar_core.methods.base import BlockContext, LayerState

if TYPE_CHECKING:
    from oscar_core.cache.layer import PackedKVLayer


@dataclass
class Stream:
    """One of K or V in one layer: encoded units plus a left-aligned full-precision window."""

    is_key: bool
    unit: int  # tokens per encoded unit
    window: int  # R
    units: dict[str, torch.Tensor] = field(default_factory=dict)
    n_units: list[int] = field(default_factory=list)
    buf: torch.Tensor | None = None  # [B, H, width, D], width = max(buf_len)
    buf_len: list[int] = field(default_factory=list)
    tokens_quantized: int = 0  # total over the batch, for tests of the "exactly once" rule
    # Full-precision overrides: (sequence, position within the sequence) and the token [P, H, D].
    ov_rows: list[int] = field(default_factory=list)
    ov_pos: list[int] = field(default_factory=list)
    ov_vals: torch.Tensor | None = None

    def quantized_tokens(self, b: int) -> int:
        return self.n_units[b] * self.unit

    def length(self, b: int) -> int:
        return self.quantized_tokens(b) + self.buf_len[b]

    def select(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (reordered, possibly repeated: beam search)."""
        idx = index.tolist()
        if self.buf is not None:
            self.buf = self.buf.index_select(0, index.to(self.buf.device))
        self.units = {n: t.index_select(0, index.to(t.device)) for n, t in self.units.items()}
        self.n_units = [self.n_units[i] for i in idx] if self.n_units else self.n_units
        self.buf_len = [self.buf_len[i] for i in idx] if self.buf_len else self.buf_len
        if self.ov_vals is not None:
            sel = [(new, j) for new, old in enumerate(idx) for j, r in enumerate(self.ov_rows) if r == old]
            self.ov_pos = [self.ov_pos[j] for _, j in sel]
            self.ov_rows = [new for new, _ in sel]
            keep = torch.tensor([j for _, j in sel], dtype=torch.long, device=self.ov_vals.device)
            self.ov_vals = self.ov_vals.index_select(0, keep) if sel else None


def owners_context(state: LayerState, owners: list[tuple[int, int]], unit: int) -> BlockContext:
    """The context of units owned by ``(sequence, unit index within it)`` pairs."""
    return BlockContext(state, torch.tensor([b for b, _ in owners], dtype=torch.long),
                        torch.tensor([j * unit for _, j in owners], dtype=torch.long))


def decode_slots(layer: PackedKVLayer, s: Stream, u0: int, u1: int | None = None) -> torch.Tensor:
    """The method's decode of a reference-layout stream's unit slots ``[u0, u1)`` (default: to the
    capacity): ``[B, H, (u1-u0)*unit, D]`` in the model's dtype (unused slots decode to garbage)."""
    block = {name: t[:, u0:u1] for name, t in s.units.items()}
    batch, n = next(iter(block.values())).shape[:2]
    flat = {name: t.reshape(batch * n, *t.shape[2:]) for name, t in block.items()}
    ctx = BlockContext(layer.state, torch.arange(batch).repeat_interleave(n),
                       torch.arange(u0, u0 + n).repeat(batch) * s.unit)
    x = layer.decode_block(s, flat, ctx)  # [B*n, H, unit, D]
    heads, dim = x.shape[1], x.shape[3]
    return x.reshape(batch, n, heads, s.unit, dim).permute(0, 2, 1, 3, 4).reshape(batch, heads, n * s.unit, dim)


class PackedLayout(Protocol):
    """Where a stream's encoded units live: the storage interface of a packed layer."""

    def store(self, layer: PackedKVLayer, s: Stream, x: torch.Tensor, owners: list[tuple[int, int]],
              capacity: int, batch: int) -> None:
        """Encode units ``x`` ``[N, H, unit, D]`` (unit ``i`` is unit ``owners[i][1]`` of sequence
        ``owners[i][0]``) and store them, growing the storage to ``capacity`` units per sequence."""

    def dense(self, layer: PackedKVLayer, s: Stream) -> torch.Tensor | None:
        """Every stored unit decoded, ``[B, H, capacity*unit, D]`` in the model's dtype (None: none)."""


class ReferenceLayout:
    """The method's block entries, each ``[batch, capacity, ...]``; unit ``j`` of sequence ``b`` at ``[b, j]``."""

    def store(self, layer: PackedKVLayer, s: Stream, x: torch.Tensor, owners: list[tuple[int, int]],
              capacity: int, batch: int) -> None:
        block = layer.encode_units(s, x, owners_context(layer.state, owners, s.unit))
        s.tokens_quantized += x.shape[0] * x.shape[2]
        for name, t in block.items():
            store = s.units.get(name)
            if store is None:
                store = t.new_zeros(batch, capacity, *t.shape[1:])
            elif store.shape[1] < capacity:  # grow geometrically: amortised O(1) per unit
                grow = max(capacity, 2 * store.shape[1]) - store.shape[1]
                store = torch.cat([store, store.new_zeros(batch, grow, *store.shape[2:])], dim=1)
            rows = torch.tensor([b for b, _ in owners], device=t.device)
            slots = torch.tensor([j for _, j in owners], device=t.device)
            store[rows, slots] = t
            s.units[name] = store

    def dense(self, layer: PackedKVLayer, s: Stream) -> torch.Tensor | None:
        return decode_slots(layer, s, 0) if s.units else None
