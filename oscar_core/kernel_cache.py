"""The packed cache on the CUDA kernels' layout: OScaR INT2 decode through ``oscar_core.kernels``.

:class:`KernelOScaRLayer` keeps everything :class:`~oscar_core.cache.layer.PackedKVLayer` does (window,
flush policy, per-sequence alignment, padding) but stores the quantized tokens in the decode
kernel's layout (:class:`KernelLayout`, a backend of :class:`oscar_core.cache.storage.PackedLayout`) (``[B, Hkv, groups, 1536]`` bytes per stream, fp32 token norms ``[B, tokens]``).
Blocks (the prompt, each flush) are packed by the CUDA pack kernels, which reproduce the reference
quantizer bit for bit; elsewhere (CPU, fp32 models) the reference encodes and
``kernels.from_reference_blocks`` converts, with the same bits. One decode step of attention is then
one kernel call (split-KV over the packed cache plus the full-precision window) instead of
dequantizing the history.
"""

from __future__ import annotations

import sys

import torch

from oscar_core import kernels as K
from oscar_core.cache.layer import PackedKVLayer
from oscar_core.cache.storage import Stream, owners_context
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


class KernelLayout:
    """Quantized tokens in the decode kernel's layout: ``data`` ``[B, Hkv, groups, block bytes]`` per
    stream, keys' fp32 token norms ``norm`` ``[B, tokens]`` (see :mod:`oscar_core.kernels`)."""

    def store(self, layer: KernelOScaRLayer, s: Stream, x: torch.Tensor, owners: list[tuple[int, int]],
              capacity: int, batch: int) -> None:
        if x.dtype in (torch.bfloat16, torch.float16):  # OScaR's encoding needs no block context
            ff = layer.force_fallback
            packed = K.pack_oscar_keys(x, rotated=True, force_fallback=ff) if s.is_key else K.pack_values(
                x, force_fallback=ff)
        else:
            ctx = owners_context(layer.state, owners, s.unit)
            if s.is_key:
                packed, _ = K.from_reference_blocks(layer.spec.encode_keys(x, ctx), None)
            else:
                _, packed = K.from_reference_blocks(None, layer.spec.encode_values(x, ctx))
        s.tokens_quantized += x.shape[0] * x.shape[2]
        need = capacity * s.unit
        data = s.units.get("data")
        if data is None or data.shape[2] * K.GROUP < need:
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
        groups = s.unit // K.GROUP
        for i, (b, j) in enumerate(owners):
            s.units["data"][b, :, j * groups : (j + 1) * groups] = packed.data[i]
            if s.is_key:
                s.units["norm"][b, j * s.unit : (j + 1) * s.unit] = packed.norm[i, : s.unit]

    def dense(self, layer: KernelOScaRLayer, s: Stream) -> torch.Tensor | None:
        if not s.units:
            return None
        if s.is_key:
            x = K.dequantize_keys(K.KernelKeys(s.units["data"], s.units["norm"]))
        else:
            x = K.dequantize_values(K.KernelValues(s.units["data"]))
        return x.to(layer.dtype)


class KernelOScaRLayer(PackedKVLayer):
    """OScaR INT2 layer whose quantized tokens live in the decode kernel's layout."""

    layout = KernelLayout()

    def __init__(self, spec, fake_quant=False, state=None, force_fallback: bool = False):
        super().__init__(spec, fake_quant, state)
        self.force_fallback = force_fallback
        #: int32 [2, B] on the device: quantized and window lengths per sequence. Kept in step with
        #: the host-side lists by device arithmetic, so a decode step needs no host-device copy.
        self._dev_lens: torch.Tensor | None = None

    def _host_lens(self) -> list[list[int]]:
        batch = len(self.k.buf_len)
        return [[self.k.quantized_tokens(b) for b in range(batch)], list(self.k.buf_len)]

    def append_tokens(self, k: torch.Tensor, v: torch.Tensor) -> None:
        before = self._host_lens()
        super().append_tokens(k, v)
        after = self._host_lens()
        if self._dev_lens is None:
            return
        dq = {a - b for a, b in zip(after[0], before[0], strict=True)}
        dr = {a - b for a, b in zip(after[1], before[1], strict=True)}
        if len(dq) == 1 and len(dr) == 1:  # the same change for every sequence: device arithmetic
            self._dev_lens[0] += dq.pop()
            self._dev_lens[1] += dr.pop()
        else:  # sequences flushed at different steps: rebuild from the host lists (rare)
            self._dev_lens = None

    def select_batch(self, index: torch.Tensor) -> None:
        super().select_batch(index)
        self._dev_lens = None

    def crop(self, max_length: int) -> None:
        super().crop(max_length)
        self._dev_lens = None

    def reset(self) -> None:
        force_fallback = self.force_fallback
        super().reset()
        self.force_fallback = force_fallback

    # -- one decode step through the kernel --------------------------------------------------
    def kernel_attention(self, query: torch.Tensor, scaling: float | None) -> torch.Tensor | None:
        """Attention output ``[B, 1, Hq, D]`` for one new token per sequence, or None when the
        kernel does not apply (the prompt, several query tokens, a CPU tensor without fallback)."""
        if self._pending is not None or query.shape[2] != 1:
            return None
        if not (query.is_cuda or self.force_fallback):
            return None
        batch, heads = query.shape[0], self.k.buf.shape[1]
        dev = query.device
        if not self.k.units:  # nothing quantized yet: an empty one-group buffer, length 0
            empty = K.alloc_keys(batch, heads, K.GROUP, dev, head_dim=query.shape[-1])
            self.k.units = {"data": empty.data, "norm": empty.norm}
            self.v.units = {"data": K.alloc_values(batch, heads, K.GROUP, dev, head_dim=query.shape[-1]).data}
        res_k, res_v = self.k.buf, self.v.buf
        if res_k.shape[2] == 0:
            res_k = res_k.new_zeros(batch, heads, 1, res_k.shape[3])
            res_v = res_v.new_zeros(batch, heads, 1, res_v.shape[3])
        if self._dev_lens is None or self._dev_lens.device != dev:
            self._dev_lens = torch.tensor(self._host_lens(), dtype=torch.int32, device=dev)
        qlens, rlens = self._dev_lens[0], self._dev_lens[1]
        out = K.decode_attention(
            query[:, :, 0], K.KernelKeys(self.k.units["data"], self.k.units["norm"]),
            K.KernelValues(self.v.units["data"]), qlens, res_k, res_v, rlens, scaling,
            force_fallback=self.force_fallback,
        )
        return out.to(query.dtype)[:, None]
