"""The packed cache on the CUDA kernels' layout: OScaR INT2 decode through ``oscar_core.kernels``.

:class:`KernelOScaRLayer` keeps everything :class:`~oscar_core.cache.layer.PackedKVLayer` does (window,
flush policy, per-sequence alignment, padding) but stores the quantized tokens in the decode
kernel's layout (:class:`KernelLayout`, a backend of :class:`oscar_core.cache.storage.PackedLayout`)
(``[B, Hkv, groups, 12 D]`` bytes per stream, fp32 token norms ``[B, tokens]``).
Blocks (the prompt, each flush) are packed by the CUDA pack kernels, which reproduce the reference
quantizer bit for bit; elsewhere (CPU, fp32 models) the reference encodes and
``kernels.from_reference_blocks`` converts, with the same bits. One decode step of attention is then
one kernel call (split-KV over the packed cache plus the full-precision window) instead of
dequantizing the history.

The decode step (one token per sequence, after the prompt) makes the host wait for nothing: the
sequences' lengths live on the device (``_dev_lens``, int32 ``[2, B]``: quantized and window tokens),
the new token goes into the window at those lengths (``kernels.append_window``, which also rotates the
key), and the host keeps only what it can count without the device (when a window fills, how wide the
used part is). The window is a buffer whose capacity grows in chunks of 32 tokens up to ``R``; the
quantized storage grows geometrically. A flush (a window of ``R`` tokens, before the next token enters)
quantizes every sequence's window and keeps the result only for the full ones (a device mask), at
their device-side offsets: no index built on the host, whichever sequences flush.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from oscar_core import kernels as K
from oscar_core.cache.layer import PackedKVLayer
from oscar_core.cache.storage import Stream, owners_context
from oscar_core.kernels.layout import load_index_tensors
from oscar_core.kernels.ops import decode_takes_kernel
from oscar_core.methods import MethodSpec

_NOTICE_SHOWN = False


def kernel_ineligibility(spec: MethodSpec, head_dim: int) -> str | None:
    """Why this spec cannot use the INT2 kernels (None when it can)."""
    params = spec.to_dict()["params"]
    wanted = {"bits": 2, "group_size": 32, "value_flush": "block", "rotation": True, "token_scaling": True}
    if spec.name != "oscar":
        return f"the kernels implement OScaR INT2 only, not {spec.name}"
    for key, value in wanted.items():
        if params.get(key) != value:
            return f"the kernels need {key}={value!r} (got {params.get(key)!r})"
    if getattr(spec, "key_basis", "rotated") != "rotated":  # serialized only when set
        return f"the kernels need key_basis='rotated' (got {spec.key_basis!r})"
    if spec.residual_length <= 0 or spec.residual_length % 32:
        return f"the kernels need residual_length a positive multiple of 32 (got {spec.residual_length})"
    if head_dim not in K.HEAD_DIMS:
        return f"the kernels need head_dim in {K.HEAD_DIMS} (got {head_dim})"
    return None


def kernel_layer_for(spec: MethodSpec, head_dim: int, device: torch.device, mode: str):
    """(layer class, its kwargs) for ``make_cache``'s ``kernels=`` mode, or (None, {}) for the reference."""
    global _NOTICE_SHOWN
    why = kernel_ineligibility(spec, head_dim)
    if mode == "fallback":
        if why:
            raise ValueError(f"kernels='fallback': {why}")
        return KernelOScaRLayer, {"force_fallback": True}
    if why is None and device.type == "cuda" and K.available():
        return KernelOScaRLayer, {}
    if mode == "on":
        if why is None:
            why = "the model is not on a CUDA device" if device.type != "cuda" else K.unavailable_reason()
        raise ValueError(f"kernels='on': {why}")
    if why is None and device.type == "cuda" and not _NOTICE_SHOWN:
        print(f"oscar_core: CUDA kernels unavailable ({K.unavailable_reason()}); using the PyTorch reference path",
              file=sys.stderr)
        _NOTICE_SHOWN = True
    return None, {}


class WindowStream(Stream):
    """A :class:`Stream` whose window lengths a decode step advances in O(1) (every sequence gains one
    token): ``buf_len`` is brought up to date when it is read."""

    _lens: list[int]
    _grown: int = 0

    @property
    def buf_len(self) -> list[int]:
        if self._grown:
            self._lens = [n + self._grown for n in self._lens]
            self._grown = 0
        return self._lens

    @buf_len.setter
    def buf_len(self, value: list[int]) -> None:
        self._lens, self._grown = value, 0

    def advance(self) -> None:
        """Every sequence's window holds one more token."""
        self._grown += 1


def _put(dst: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor, rows: torch.Tensor | None) -> None:
    """``dst.scatter_(dim, index, src)`` for the batch rows where ``rows`` (bool ``[B]``; None: all) is
    true; the other rows write back what ``dst`` holds at ``index``."""
    if rows is not None:
        src = torch.where(rows.view(-1, *([1] * (src.dim() - 1))), src, dst.gather(dim, index))
    dst.scatter_(dim, index, src)


class KernelLayout:
    """Quantized tokens in the decode kernel's layout: ``data`` ``[B, Hkv, groups, block bytes]`` per
    stream, keys' fp32 token norms ``norm`` ``[B, tokens]`` (see :mod:`oscar_core.kernels`)."""

    def store(self, layer: KernelOScaRLayer, s: Stream, x: torch.Tensor, owners: list[tuple[int, int]],
              capacity: int, batch: int) -> None:
        packed = self._encode(layer, s, x, owners)
        s.tokens_quantized += x.shape[0] * x.shape[2]
        self._reserve(s, capacity, batch, x)
        groups = s.unit // K.GROUP
        for i, (b, j) in enumerate(owners):
            s.units["data"][b, :, j * groups : (j + 1) * groups] = packed.data[i]
            if s.is_key:
                s.units["norm"][b, j * s.unit : (j + 1) * s.unit] = packed.norm[i, : s.unit]

    def store_windows(self, layer: KernelOScaRLayer, s: Stream, rows: torch.Tensor | None, qlens: torch.Tensor,
                      capacity: int, n_rows: int) -> None:
        """Quantize the ``unit`` window tokens of the batch rows where ``rows`` (bool ``[B]`` on the
        device; None: every row) is true into their next unit, at token ``qlens[b]`` (int32 ``[B]`` on
        the device). Every row's window is encoded (the encoders treat rows independently, so the kept
        rows get the bits they would get alone); ``n_rows`` rows are kept; no host synchronisation."""
        x = s.buf[:, :, : s.unit]
        packed = self._encode(layer, s, x, None)
        s.tokens_quantized += n_rows * s.unit
        self._reserve(s, capacity, x.shape[0], x)
        batch, heads, groups = x.shape[0], x.shape[1], s.unit // K.GROUP
        start = (qlens if rows is None else torch.where(rows, qlens, 0)).long()  # other rows: unit 0, unchanged
        at = (start // K.GROUP)[:, None] + torch.arange(groups, device=x.device)
        data = s.units["data"]
        _put(data, 2, at[:, None, :, None].expand(batch, heads, groups, data.shape[3]), packed.data, rows)
        if s.is_key:
            at = start[:, None] + torch.arange(s.unit, device=x.device)
            _put(s.units["norm"], 1, at, packed.norm[:, : s.unit], rows)

    @staticmethod
    def _encode(layer: KernelOScaRLayer, s: Stream, x: torch.Tensor, owners: list[tuple[int, int]] | None):
        if x.dtype in (torch.bfloat16, torch.float16):  # OScaR's encoding needs no block context
            ff = layer.force_fallback
            return K.pack_oscar_keys(x, rotated=True, force_fallback=ff) if s.is_key else K.pack_values(
                x, force_fallback=ff)
        # the kernels' specs (key_basis="rotated", kernel_ineligibility) encode without a context
        ctx = owners_context(layer.state, owners, s.unit) if owners is not None else None
        if s.is_key:
            return K.from_reference_blocks(layer.spec.encode_keys(x, ctx), None)[0]
        return K.from_reference_blocks(None, layer.spec.encode_values(x, ctx))[1]

    @staticmethod
    def _reserve(s: Stream, capacity: int, batch: int, x: torch.Tensor) -> None:
        """Grow the storage to ``capacity`` units per sequence (at least doubling it)."""
        need = capacity * s.unit
        data = s.units.get("data")
        if data is not None and data.shape[2] * K.GROUP >= need:
            return
        tokens = need if data is None else max(need, 2 * data.shape[2] * K.GROUP)
        alloc = K.alloc_keys if s.is_key else K.alloc_values
        grown = alloc(batch, x.shape[1], tokens, x.device, head_dim=x.shape[-1])
        if data is not None:
            grown.data[:, :, : data.shape[2]] = data
            if s.is_key:
                grown.norm[:, : s.units["norm"].shape[1]] = s.units["norm"]
        s.units["data"] = grown.data
        if s.is_key:
            s.units["norm"] = grown.norm

    def dense(self, layer: KernelOScaRLayer, s: Stream) -> torch.Tensor | None:
        if not s.units:
            return None
        if s.is_key:
            x = K.dequantize_keys(K.KernelKeys(s.units["data"], s.units["norm"]))
        else:
            x = K.dequantize_values(K.KernelValues(s.units["data"]))
        return x.to(layer.dtype)


@dataclass
class _DecodeState:
    """What the host keeps of a layer's decode step; rebuilt when the batch changes (prompt, reorder, crop)."""

    qlens: torch.Tensor  # views of the layer's _dev_lens: quantized / window tokens per sequence
    rlens: torch.Tensor
    win_max: int  # the longest window over the batch (tokens): a flush is due when it reaches R
    keys: K.KernelKeys | None = None  # the storage as the kernel reads it (None: rebuild, it was reallocated)
    values: K.KernelValues | None = None
    kernel: bool | None = None  # whether decode_attention runs the CUDA kernel (decided at the first step)
    workspace: K.DecodeWorkspace | None = None


class KernelOScaRLayer(PackedKVLayer):
    """OScaR INT2 layer whose quantized tokens live in the decode kernel's layout."""

    layout = KernelLayout()
    stream_cls = WindowStream

    def __init__(self, spec, fake_quant=False, state=None, force_fallback: bool = False):
        super().__init__(spec, fake_quant, state)
        self.force_fallback = force_fallback
        #: int32 [2, B] on the device: quantized and window lengths per sequence, kept in step with the
        #: host-side lists by device arithmetic (a decode step needs no host-device copy)
        self._dev_lens: torch.Tensor | None = None
        self._step: _DecodeState | None = None

    def _host_lens(self) -> list[list[int]]:
        batch = len(self.k.buf_len)
        return [[self.k.quantized_tokens(b) for b in range(batch)], list(self.k.buf_len)]

    # -- entering and leaving the decode phase (not decode steps: these may wait for the device) --------
    def commit_prompt(self, pad: list[int]) -> None:
        super().commit_prompt(pad)
        self._start_decoding()

    def _start_decoding(self) -> _DecodeState:
        """Windows in chunked buffers, an (empty) quantized storage, the lengths on the device."""
        r = self.spec.residual_length
        win_max = max(self.k.buf_len, default=0)
        if win_max > r:
            raise RuntimeError(f"internal cache inconsistency: a window holds {win_max} > {r} tokens")
        for s in (self.k, self.v):
            width = s.buf.shape[2]
            if width % K.GROUP or width <= win_max < r or width > r:
                s.buf = self._window_buffer(s.buf, min(r, (win_max // K.GROUP + 1) * K.GROUP))
        if not self.k.units:  # nothing quantized yet: an empty one-group buffer, length 0
            batch, heads, _, dim = self.k.buf.shape
            empty = K.alloc_keys(batch, heads, K.GROUP, self.k.buf.device, head_dim=dim)
            self.k.units = {"data": empty.data, "norm": empty.norm}
            self.v.units = {"data": K.alloc_values(batch, heads, K.GROUP, self.k.buf.device, head_dim=dim).data}
        load_index_tensors(self.k.buf.device, self.k.buf.shape[3])  # the fallbacks' constants, copied once
        self._dev_lens = torch.tensor(self._host_lens(), dtype=torch.int32, device=self.k.buf.device)
        self._step = _DecodeState(self._dev_lens[0], self._dev_lens[1], win_max)
        return self._step

    @staticmethod
    def _window_buffer(old: torch.Tensor, width: int) -> torch.Tensor:
        new = old.new_zeros(*old.shape[:2], width, old.shape[3])
        keep = min(width, old.shape[2])
        new[:, :, :keep] = old[:, :, :keep]
        return new

    def select_batch(self, index: torch.Tensor) -> None:
        super().select_batch(index)
        self._step = self._dev_lens = None
        if self._pending is None and self.k.buf is not None:
            self._start_decoding()

    def crop(self, max_length: int) -> None:
        super().crop(max_length)
        if self._step is not None:
            self._start_decoding()

    def reset(self) -> None:
        force_fallback = self.force_fallback
        super().reset()
        self.force_fallback = force_fallback

    # -- a decode step ---------------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """As :meth:`PackedKVLayer.update`, except after the prompt: the new tokens go into the windows
        (keys rotated there) and are returned as given. The packed-KV attention function never reads
        them then: it attends from the cache."""
        if self._pending is not None or self.total_len == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        self._append(key_states, value_states, rotate=True)
        self.total_len += key_states.shape[-2]
        return key_states, value_states

    def append_tokens(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Tokens already in the attention basis (a prompt committed without attention, then more tokens)."""
        self._append(k, v, rotate=False)

    def _append(self, k: torch.Tensor, v: torch.Tensor, rotate: bool) -> None:
        st = self._step or self._start_decoding()
        r = self.spec.residual_length
        for t in range(k.shape[-2]):
            if st.win_max == r:  # a full window: quantize it before the token enters (the flush policy)
                self._flush_full_windows(st)
            if st.win_max == self.k.buf.shape[2]:  # the window buffer is full: 32 more tokens of room
                for s in (self.k, self.v):
                    s.buf = self._window_buffer(s.buf, s.buf.shape[2] + K.GROUP)
                st.workspace = None
            K.append_window(k[:, :, t], v[:, :, t], self.k.buf, self.v.buf, st.rlens, rotate=rotate,
                            force_fallback=self.force_fallback)
            st.rlens.add_(1)
            self.k.advance()
            self.v.advance()
            st.win_max += 1

    def _flush_full_windows(self, st: _DecodeState) -> None:
        """Quantize the windows that hold ``R`` tokens (host-known), masked on the device."""
        r = self.spec.residual_length
        lens = list(self.k.buf_len)
        full = [b for b, n in enumerate(lens) if n == r]
        rows = None if len(full) == len(lens) else st.rlens == r
        capacity = max(self.k.n_units[b] + 1 for b in full)
        storage = self.k.units["data"]
        for s in (self.k, self.v):
            self.layout.store_windows(self, s, rows, st.qlens, capacity, len(full))
            for b in full:
                s.n_units[b] += 1
            s.buf_len = [0 if n == r else n for n in lens]
        if rows is None:
            st.qlens.add_(r)
            st.rlens.zero_()
        else:
            st.qlens.add_(rows.to(st.qlens.dtype), alpha=r)
            st.rlens.masked_fill_(rows, 0)
        st.win_max = max(self.k.buf_len)
        if self.k.units["data"] is not storage:  # the storage grew: new buffers, a new split of the work
            st.keys = st.values = st.workspace = None

    # -- one decode step through the kernel --------------------------------------------------
    def kernel_attention(self, query: torch.Tensor, scaling: float | None) -> torch.Tensor | None:
        """Attention output ``[B, 1, Hq, D]`` for one new token per sequence, or None when the
        kernel does not apply (the prompt, several query tokens, a CPU tensor without fallback)."""
        if self._pending is not None or query.shape[2] != 1:
            return None
        if not (query.is_cuda or self.force_fallback):
            return None
        st = self._step or self._start_decoding()
        if st.keys is None:
            st.keys = K.KernelKeys(self.k.units["data"], self.k.units["norm"])
            st.values = K.KernelValues(self.v.units["data"])
        q = query[:, :, 0]
        if st.kernel is None:
            st.kernel = decode_takes_kernel(q, st.keys, force_fallback=self.force_fallback)
        if st.kernel:  # the whole window buffer (fixed shapes), lengths read on the device
            if st.workspace is None:
                st.workspace = K.make_decode_workspace(q.shape[1], st.keys, self.k.buf.shape[2])
            res_k, res_v = self.k.buf, self.v.buf
        else:  # the float32 path attends the used width only (its numbers depend on the width it sees)
            width = max(1, st.win_max)
            res_k, res_v = self.k.buf[:, :, :width], self.v.buf[:, :, :width]
        out = K.decode_attention(q, st.keys, st.values, st.qlens, res_k, res_v, st.rlens, scaling,
                                 workspace=st.workspace if st.kernel else None, force_fallback=self.force_fallback)
        return out.to(query.dtype)[:, None]
