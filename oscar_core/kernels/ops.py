"""The bound ops of the CUDA extension, each with a PyTorch fallback of the same signature and layout.

Every op reads the head dim off its tensors and takes the CUDA path when its tensors live on a CUDA
device and the extension is available (:mod:`oscar_core.kernels.loader`); otherwise (and with
``force_fallback=True``) the fallback runs, whose numerics are the reference quantizer's
(:mod:`oscar_core.quant`, through the methods' ``encode``/``decode``), the oracle of the GPU tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from oscar_core.hadamard import hadamard_transform
from oscar_core.kernels.layout import (
    GROUP,
    HEAD_DIM,
    HEAD_DIMS,
    KernelKeys,
    KernelValues,
    block_bytes,
    check_head_dim,
    from_reference_blocks,
    to_reference_blocks,
)
from oscar_core.kernels.loader import cuda_extension

_WARPS_PER_CTA = 4  # must match kNW in csrc/oscar_kernels.cu
_CTAS_PER_SM = {64: 4, 128: 4, 256: 2}  # decode CTAs resident per SM: DecodeCfg<D>::kMinCtas there


def _check_kv(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"{what} must be [N, H, T, head_dim] with head_dim in {HEAD_DIMS}, got {tuple(x.shape)}")
    if x.shape[2] % GROUP:
        raise ValueError(f"{what}: {x.shape[2]} tokens is not a multiple of {GROUP}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"{what} must be bfloat16 or float16, got {x.dtype}")


def _oscar_spec():
    from oscar_core.methods.oscar import OScaRSpec

    return OScaRSpec()


def _kivi_spec():
    from oscar_core.methods.kivi import KIVISpec

    return KIVISpec()


def _reference_spec(zero_point: str):
    """The method whose reference encoder and decoder have this zero point (the layout's two formats)."""
    return _oscar_spec() if zero_point == "integer" else _kivi_spec()


# -------------------------------------------------------------------------------------------------
# Pack
# -------------------------------------------------------------------------------------------------


def max_pack_heads(head_dim: int) -> int:
    """kv heads the key pack kernel holds in shared memory (every head of a 32-token group, for the token
    norm; the same ~140 KB: 32, 16, 8 for head dim 64, 128, 256;
    ``PackKeysCfg<D>::kMaxHeads`` in csrc/oscar_kernels.cu). More heads take the reference encoder."""
    return 2048 // check_head_dim(head_dim)


def pack_oscar_keys(k: torch.Tensor, *, rotated: bool = False, force_fallback: bool = False) -> KernelKeys:
    """Post-RoPE keys ``[N, H, T, D]`` -> packed OScaR keys (rotation + token norm + quantization fused).

    Bit for bit the reference: ``OScaRSpec().encode_keys(hadamard_transform(k))`` (the rotation rounds
    to ``k.dtype`` as the reference's does; ``token_norms`` sums in the order the kernel uses).
    ``rotated=True``: ``k`` is already in the attention basis (what the cache holds), no rotation.
    """
    _check_kv(k, "keys")
    n, h, t, d = k.shape
    ext = cuda_extension(k, force_fallback=force_fallback)
    if ext is not None and h <= max_pack_heads(d):
        kc = k.contiguous()
        data = torch.empty(n, h, t // GROUP, block_bytes(d), dtype=torch.uint8, device=k.device)
        norm = torch.empty(n, t, dtype=torch.float32, device=k.device)
        ext.pack_keys(kc, data, norm, not rotated)
        return KernelKeys(data, norm)
    kb, _ = from_reference_blocks(_oscar_spec().encode_keys(k if rotated else hadamard_transform(k)), None)
    assert kb is not None
    return kb


def pack_values(v: torch.Tensor, *, force_fallback: bool = False) -> KernelValues:
    """Values ``[N, H, T, D]`` (in the cache basis, i.e. already rotated) -> packed values."""
    _check_kv(v, "values")
    n, h, t, d = v.shape
    ext = cuda_extension(v, force_fallback=force_fallback)
    if ext is not None:
        data = torch.empty(n, h, t // GROUP, block_bytes(d), dtype=torch.uint8, device=v.device)
        ext.pack_values(v.contiguous(), data)
        return KernelValues(data)
    _, vb = from_reference_blocks(None, _oscar_spec().encode_values(v))
    assert vb is not None
    return vb


def pack_kivi_keys(k: torch.Tensor) -> KernelKeys:
    """Keys ``[N, H, T, D]`` -> KIVI-packed keys (per-channel groups of 32 tokens, float minimum), via the
    reference quantizer on ``k``'s device (``KIVISpec().encode_keys``)."""
    _check_kv(k, "keys")
    kb, _ = from_reference_blocks(_kivi_spec().encode_keys(k), None, method="kivi")
    assert kb is not None
    return kb


def pack_kivi_values(v: torch.Tensor) -> KernelValues:
    """Values ``[N, H, T, D]`` -> KIVI-packed values (per-token groups of 32 channels, float minimum)."""
    _check_kv(v, "values")
    _, vb = from_reference_blocks(None, _kivi_spec().encode_values(v), method="kivi")
    assert vb is not None
    return vb


def append_window(
    k: torch.Tensor,
    v: torch.Tensor,
    res_k: torch.Tensor,
    res_v: torch.Tensor,
    slots: torch.Tensor,
    *,
    rotate: bool = True,
    force_fallback: bool = False,
) -> None:
    """Write one token per sequence into the window: ``res_k[b, :, slots[b]] = H k[b]`` (``rotate``,
    OScaR's attention basis, numerics of :func:`oscar_core.hadamard.hadamard_transform`) or ``k[b]``,
    and ``res_v[b, :, slots[b]] = v[b]``. ``k``/``v`` ``[B, Hkv, D]``, ``res_*`` ``[B, Hkv, R, D]``
    of the same dtype, ``slots`` int32 ``[B]`` on the device; slots outside ``[0, R)`` write nothing.
    One launch, no host synchronisation (CUDA-graph capturable)."""
    if k.dim() != 3 or k.shape[-1] not in HEAD_DIMS or v.shape != k.shape:
        raise ValueError(f"k and v must be [B, Hkv, head_dim] with head_dim in {HEAD_DIMS}, got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    if (res_k.dim() != 4 or res_k.shape[:2] != k.shape[:2] or res_k.shape[3] != k.shape[-1]
            or res_v.shape != res_k.shape):
        raise ValueError(f"res_k/res_v must be [B, Hkv, R, {k.shape[-1]}] matching k, got {tuple(res_k.shape)}")
    if not (k.dtype == v.dtype == res_k.dtype == res_v.dtype):
        raise ValueError(f"k, v and the window must share a dtype ({k.dtype}, {v.dtype}, {res_k.dtype})")
    ext = cuda_extension(k, res_k, force_fallback=force_fallback)
    if ext is not None and k.dtype in (torch.bfloat16, torch.float16):
        ext.append_window(k.contiguous(), v.contiguous(), res_k, res_v, slots.to(torch.int32), rotate)
        return
    kk = hadamard_transform(k) if rotate else k
    # Every row writes its slot (clamped into the window); rows whose slot is outside write back what
    # is there. No boolean indexing: its data-dependent shape would make the host wait for the device.
    b, h, r, d = res_k.shape
    if r == 0:
        return
    ok = ((slots >= 0) & (slots < r)).view(b, 1, 1, 1)
    at = slots.long().clamp(0, r - 1).view(b, 1, 1, 1).expand(b, h, 1, d)
    for res, new in ((res_k, kk), (res_v, v)):
        res.scatter_(2, at, torch.where(ok, new[:, :, None], res.gather(2, at)))


# -------------------------------------------------------------------------------------------------
# Dequantization (fallback decode, tests): the reference decode of the method whose format it is
# -------------------------------------------------------------------------------------------------


def dequantize_keys(keys: KernelKeys, with_norm: bool = True) -> torch.Tensor:
    """fp32 ``[N, H, G*32, D]`` attention-basis keys (``k_hat * norm`` when ``with_norm``): the
    method's ``decode_keys`` of :func:`to_reference_blocks`' block, without its norm, times the norm."""
    kb, _ = to_reference_blocks(keys, None)
    assert kb is not None
    norm = kb.pop("norm", None)
    k = _reference_spec(keys.zero_point).decode_keys(kb, torch.float32)
    # a plain fp32 product, as this function always computed it (OScaRSpec.decode_keys saturates a
    # product past fp32's range to +-max instead of inf; only keys near fp32's limit see the difference)
    return k * norm[:, None, :, None] if with_norm and norm is not None else k


def dequantize_values(values: KernelValues) -> torch.Tensor:
    """fp32 ``[N, H, G*32, D]`` values (cache basis): the method's ``decode_values``."""
    _, vb = to_reference_blocks(None, values)
    assert vb is not None
    return _reference_spec(values.zero_point).decode_values(vb, torch.float32)


# -------------------------------------------------------------------------------------------------
# Decode attention
# -------------------------------------------------------------------------------------------------


def choose_splits(batch: int, kv_heads: int, groups: int, sm_count: int, head_dim: int = HEAD_DIM
                  ) -> tuple[int, int]:
    """Host-side split-KV choice from the *capacity* (never from lengths): ``(num_splits, groups_per_split)``,
    about one wave of the decode CTAs that fit on an SM at ``head_dim``."""
    if groups <= 0:
        return 1, _WARPS_PER_CTA
    target = _CTAS_PER_SM[check_head_dim(head_dim)] * sm_count
    splits = max(1, -(-target // max(1, batch * kv_heads)))
    splits = min(splits, -(-groups // _WARPS_PER_CTA))
    gps = -(-groups // splits)
    gps = -(-gps // _WARPS_PER_CTA) * _WARPS_PER_CTA
    return -(-groups // gps), gps


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # only shapes the (unused) split choice of CPU workspaces
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def decode_attention_reference(
    q: torch.Tensor,
    keys: KernelKeys,
    values: KernelValues,
    qlens: torch.Tensor,
    res_k: torch.Tensor,
    res_v: torch.Tensor,
    rlens: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """float32 reference of :func:`decode_attention` on the same packed data (returns fp32)."""
    b, hq, d = q.shape
    hkv = keys.data.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    qr = (hadamard_transform(q.float()) if keys.rotate_query else q.float()).view(b, hkv, hq // hkv, d)
    k = dequantize_keys(keys)  # [B, Hkv, Tq, D]
    v = dequantize_values(values)
    kk = torch.cat([k, res_k.float()], dim=2)
    vv = torch.cat([v, res_v.float()], dim=2)
    tq, r = k.shape[2], res_k.shape[2]
    pos_q = torch.arange(tq, device=q.device)
    pos_r = torch.arange(r, device=q.device)
    qlens, rlens = (x if x.device == q.device else x.to(q.device) for x in (qlens, rlens))
    valid = torch.cat([pos_q[None] < qlens.view(b, 1), pos_r[None] < rlens.view(b, 1)], dim=1)  # [B, Tq + R]
    s = torch.einsum("bhgd,bhtd->bhgt", qr, kk) * scale
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # a sequence with no tokens at all
    out = torch.einsum("bhgt,bhtd->bhgd", p, vv)
    return out.reshape(b, hq, d)


@dataclass
class DecodeWorkspace:
    """Fixed buffers of one :func:`decode_attention` configuration (reuse them across steps and in CUDA
    graphs): the splits' partial softmax states ``pm``/``pl`` ``[B, Hq, S]`` and ``po``
    ``[B, Hq, S, D]`` (fp32), ``S`` = quantized splits + one per 32 residual tokens."""

    pm: torch.Tensor
    pl: torch.Tensor
    po: torch.Tensor
    num_splits: int
    groups_per_split: int


def _splits_for(b: int, hkv: int, gcap: int, num_splits: int | None, device: torch.device, head_dim: int
                ) -> tuple[int, int]:
    if num_splits is None:
        return choose_splits(b, hkv, gcap, _sm_count(device), head_dim)
    nsplit = max(1, min(num_splits, max(1, gcap)))
    gps = max(1, -(-gcap // nsplit))
    return max(1, -(-gcap // gps)), gps


def make_decode_workspace(
    q_heads: int,
    keys: KernelKeys,
    residual_capacity: int,
    *,
    num_splits: int | None = None,
) -> DecodeWorkspace:
    """Allocate the workspace for ``q_heads`` query heads over ``keys``' capacity and ``residual_capacity``
    (the ``R`` of the residual buffers). Allocate it outside graph capture and keep it alive."""
    b, hkv, gcap, _ = keys.data.shape
    dev, d = keys.data.device, keys.head_dim
    nsplit, gps = _splits_for(b, hkv, gcap, num_splits, dev, d)
    s = nsplit + -(-residual_capacity // GROUP)  # quantized splits + one per 32 residual tokens
    return DecodeWorkspace(
        pm=torch.empty(b, q_heads, s, dtype=torch.float32, device=dev),
        pl=torch.empty(b, q_heads, s, dtype=torch.float32, device=dev),
        po=torch.empty(b, q_heads, s, d, dtype=torch.float32, device=dev),
        num_splits=nsplit,
        groups_per_split=gps,
    )


#: GQA groups the decode kernel is instantiated for (launch_decode_dt in csrc/oscar_kernels.cu)
KERNEL_GQA = (1, 2, 4, 8)


def _kernel_serves(q: torch.Tensor, keys: KernelKeys) -> bool:
    hkv = keys.data.shape[1]
    return q.shape[1] % hkv == 0 and q.shape[1] // hkv in KERNEL_GQA and q.dtype in (torch.bfloat16, torch.float16)


def decode_takes_kernel(q: torch.Tensor, keys: KernelKeys, *, force_fallback: bool = False) -> bool:
    """Whether :func:`decode_attention` of ``q`` ``[B, Hq, D]`` over ``keys`` runs the CUDA kernel (else the
    float32 PyTorch path): CUDA tensors, the extension built, a GQA group in :data:`KERNEL_GQA`, bf16/fp16."""
    return _kernel_serves(q, keys) and cuda_extension(q, keys.data, force_fallback=force_fallback) is not None


def decode_attention(
    q: torch.Tensor,
    keys: KernelKeys,
    values: KernelValues,
    qlens: torch.Tensor,
    res_k: torch.Tensor,
    res_v: torch.Tensor,
    rlens: torch.Tensor,
    softmax_scale: float | None = None,
    *,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    workspace: DecodeWorkspace | None = None,
    force_fallback: bool = False,
    _phases: int = 3,
) -> torch.Tensor:
    """One decode step of attention for ``B`` sequences over packed keys/values + the residual window.

    ``q`` ``[B, Hq, D]`` bf16/fp16 (``D`` in :data:`HEAD_DIMS`), *unrotated* (the Hadamard is applied
    inside when ``keys.rotate_query``); ``keys``/``values``
    capacity buffers ``[B, Hkv, Gcap, 12 D]`` (norms ``[B, >= Gcap*32]``); ``qlens`` int32 ``[B]``
    quantized tokens per sequence (multiples of 32, at most ``Gcap*32``); ``res_k``/``res_v``
    ``[B, Hkv, R, D]`` (q's dtype) the full-precision window, keys *rotated* and unscaled; ``rlens``
    int32 ``[B]`` (at most ``R``). Returns ``[B, Hq, D]`` in q's dtype: softmax over all valid
    tokens of ``(q_rot . k) * scale`` (quantized keys times their token norm), times the values
    (cache basis). Lengths are read on the device: no host synchronisation, capturable in a graph.
    GQA groups other than 1, 2, 4, 8, float32 queries and CPU tensors take the float32 PyTorch path
    (:func:`decode_takes_kernel`).

    Two launches: the split-KV kernel (quantized splits plus one CTA per 32 residual tokens, every CTA
    one kv head with its whole GQA group) writes partial softmax states; a small kernel combines them.
    Pass a :func:`make_decode_workspace` ``workspace`` to reuse fixed buffers across steps (without one,
    the partial buffers are allocated per call, which graph capture also handles).
    """
    if q.dim() != 3 or q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"q must be [B, Hq, head_dim] with head_dim in {HEAD_DIMS}, got {tuple(q.shape)}")
    b, hq, d = q.shape
    if keys.head_dim != d or values.head_dim != d or res_k.shape[-1] != d or res_v.shape[-1] != d:
        raise ValueError(f"head_dim mismatch: q {d}, keys {keys.head_dim}, values {values.head_dim}, "
                         f"res_k {res_k.shape[-1]}, res_v {res_v.shape[-1]}")
    hkv = keys.data.shape[1]
    if hq % hkv:
        raise ValueError(f"{hq} query heads is not a multiple of {hkv} kv heads")
    if keys.zero_point != values.zero_point:
        raise ValueError(f"keys ({keys.zero_point} zero point) and values ({values.zero_point}) differ in format")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    ext = cuda_extension(q, keys.data, force_fallback=force_fallback) if _kernel_serves(q, keys) else None
    if ext is not None:
        ws = workspace
        if ws is None:
            ws = make_decode_workspace(hq, keys, res_k.shape[2], num_splits=num_splits)
        elif ws.pm.shape != (b, hq, ws.num_splits + -(-res_k.shape[2] // GROUP)) or ws.po.shape[-1] != d:
            raise ValueError("the decode workspace does not match these shapes (make a new one)")
        if out is None:
            out = torch.empty_like(q)
        ext.decode(
            q.contiguous(),
            keys.data,
            values.data,
            keys.norm if keys.norm is not None else torch.empty(0, dtype=torch.float32, device=q.device),
            qlens.to(torch.int32),
            res_k.contiguous(),
            res_v.contiguous(),
            rlens.to(torch.int32),
            ws.pm,
            ws.pl,
            ws.po,
            out,
            ws.num_splits,
            ws.groups_per_split,
            scale * math.log2(math.e),
            _phases,  # 1: split kernel, 2: combine kernel; 4/8: diagnostics (loads only / math only)
            keys.zero_point == "float",
            keys.rotate_query,
        )
        return out
    res = decode_attention_reference(q, keys, values, qlens, res_k, res_v, rlens, scale).to(q.dtype)
    if out is not None:
        out.copy_(res)
        return out
    return res
