"""The one quantization primitive: group-wise asymmetric min-max round-to-nearest, and bit packing.

Every method in :mod:`oscar_core.methods` quantizes through :func:`quantize` / :func:`dequantize`;
none re-implements them. Numerics (METHODS.md, "The one quantizer"):

``mx = c*max(x)``, ``mn = c*min(x)``, ``s = (mx - mn) / (2^b - 1)`` over each group, with either

* ``"integer"`` zero point (OScaR, QuaRot, RotateKV): ``z = round(-mn/s)``,
  ``q = clamp(round(x/s) + z, 0, 2^b-1)``, ``x_hat = s*(q - z)``;
* ``"float"`` minimum (KIVI, OTT): ``q = clamp(round((x - mn)/s), 0, 2^b-1)``, ``x_hat = q*s + mn``.

Scale and zero (or minimum) are stored as fp16. Codes are computed from the *stored* fp16 values, so
that encoding and decoding agree bit for bit (and the CUDA pack kernel can reproduce them exactly).
Rounding is round-half-to-even (``torch.round``; ``rintf`` in CUDA).

Degenerate groups. A constant group (range 0) must reconstruct its value exactly and nothing may
become NaN/inf:

* float minimum: ``s = 0`` stores the constant as ``mn``; codes are 0.
* integer zero point: ``s = 0`` cannot represent ``c != 0`` as ``s*(q - z)``. We therefore floor the
  scale at ``max|x| * 2^-10``; a constant ``c`` gets ``s = |c| / 2^j`` (``j <= 10``, as large as keeps
  ``s`` a normal fp16 number), ``z = -sign(c)*2^j``, ``q = 0`` and ``x_hat = c`` exactly (a
  power-of-two division is exact in fp16). For ordinary groups
  the floor never binds (it needs a range below 0.3% of the magnitude); for near-constant groups it
  keeps ``|z| <= 1024`` so the zero point is an exact fp16 integer. An all-zero group uses ``s = 1``.

Range. Finite inputs never produce NaN/inf. fp16 metadata cannot describe values past fp16's +-65504,
so the group is first saturated to +-65504 (a no-op for every group inside the fp16 range, whose
results are unchanged): a bf16/fp32 value past the range reconstructs near +-65504 with its sign, and
the integer zero point stays small (``|z| <= 1024`` while the scale is a normal fp16 number) instead
of saturating at fp16's limit, which reconstructed e.g. the group ``[-1e10, 1e10]`` as all negative.
Dequantization saturates to the output dtype's finite range (the top code can land just past it).

Non-finite inputs propagate: codes cannot hold inf or NaN, so a group with any inf/NaN element is
stored with a NaN scale (codes 0, zero 0) and decodes to NaN in all its elements. An inf never comes
back as a finite number (nor as inf: the group's other elements are lost with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ZeroPoint = Literal["integer", "float"]
SUPPORTED_BITS = (1, 2, 3, 4, 8)
_FP16_MAX = 65504.0
_FP32_MAX = torch.finfo(torch.float32).max
# Integer zero point: scale floor relative to the group's largest magnitude (see module docstring).
_INT_ZERO_SCALE_FLOOR = 2.0**-10


@dataclass(frozen=True)
class GroupQuant:
    """Codes and per-group parameters of one tensor quantized along its last axis in groups.

    ``codes``: uint8, shape ``[..., n_groups, group_size]`` (unpacked, one code per element).
    ``scale``, ``zero``: fp16, shape ``[..., n_groups]``. ``zero`` is the integer zero point ``z``
    (``"integer"``) or the group minimum ``mn`` (``"float"``).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    zero_point: ZeroPoint


def saturate(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` cast to ``dtype``, finite values clamped to its finite range; inf/NaN are kept as they are.

    For a value inside the range this is the plain cast (the clamp is a no-op), so only what would
    have overflowed to inf changes.
    """
    if not dtype.is_floating_point:
        return x.to(dtype)
    fi = torch.finfo(dtype)
    if x.dtype.is_floating_point and torch.finfo(x.dtype).max <= fi.max:
        return x.to(dtype)
    return torch.where(torch.isfinite(x), x.clamp(fi.min, fi.max), x).to(dtype)


def pow2_shift(amax: torch.Tensor, max_exponent: int) -> torch.Tensor:
    """The smallest ``shift >= 0`` (fp32 tensor) with ``amax * 2^-shift < 2^max_exponent``.

    Scaling by ``2^-shift`` before a sum that could overflow fp32 and by ``2^shift`` after
    (:func:`ldexp_saturating`) is exact wherever ``shift`` is 0 (a multiplication by 1). inf/NaN get 0.
    """
    return (torch.frexp(amax).exponent - max_exponent).clamp(min=0).float()


def ldexp_saturating(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * 2^shift`` (fp32, exact), saturated at fp32's max instead of overflowing; inf/NaN kept."""
    limit = torch.ldexp(torch.full_like(shift, _FP32_MAX), -shift)
    return torch.ldexp(torch.where(torch.isfinite(x), torch.minimum(torch.maximum(x, -limit), limit), x), shift)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; choose one of {SUPPORTED_BITS}")


def quantize_groups(
    x: torch.Tensor, bits: int, zero_point: ZeroPoint = "integer", clip_ratio: float = 1.0,
    arithmetic: Literal["fp32", "fp16"] = "fp32",
) -> GroupQuant:
    """Quantize ``x`` of shape ``[..., n_groups, group_size]``: each row of the last axis is a group.

    Values past fp16's range saturate to +-65504; a group holding inf/NaN gets a NaN scale (module
    docstring). ``arithmetic="fp16"`` (float zero point only) computes as official KIVI's fp16 tensors
    do (``quant/new_pack.py``): min, max, ``mx - mn``, the scale and ``x - mn`` each rounded to fp16,
    then ``(x - mn) / s`` rounded to fp16 before the rounding to a code; this changes about a quarter
    of the scales by one fp16 step against the fp32 default. A constant group still reconstructs
    exactly (official KIVI divides 0 by 0 there).
    """
    _check_bits(bits)
    if zero_point not in ("integer", "float"):
        raise ValueError(f"zero_point must be 'integer' or 'float', got {zero_point!r}")
    if arithmetic not in ("fp32", "fp16"):
        raise ValueError(f"arithmetic must be 'fp32' or 'fp16', got {arithmetic!r}")
    if arithmetic == "fp16" and zero_point != "float":
        raise ValueError("arithmetic='fp16' reproduces KIVI's float-minimum quantizer; use zero_point='float'")
    if not 0.0 < clip_ratio <= 1.0:
        raise ValueError(f"clip_ratio must be in (0, 1], got {clip_ratio}")
    qmax = 2**bits - 1
    xf = x.float()
    finite = torch.isfinite(xf).all(dim=-1)
    # what fp16 metadata can describe; a no-op inside the fp16 range (non-finite groups: see below)
    xf = xf.clamp(-_FP16_MAX, _FP16_MAX)
    mx = xf.amax(dim=-1) * clip_ratio
    mn = xf.amin(dim=-1) * clip_ratio
    # a true division on every device (CUDA divides by a Python scalar as a product with its
    # reciprocal, one ulp off at times); the CUDA pack kernels reproduce these bits
    scale = (mx - mn) / torch.full_like(mx, float(qmax))
    if zero_point == "integer":
        magnitude = torch.maximum(mx.abs(), mn.abs())
        scale = torch.maximum(scale, magnitude * _INT_ZERO_SCALE_FLOOR)
        # A constant group gets a power-of-two fraction of its magnitude that stays a normal fp16
        # number (exponent >= -14), so that c = s * 2^j holds exactly even for small |c|.
        exponent = torch.frexp(magnitude).exponent
        shift = (exponent + 13).clamp(0, 10).float()
        scale = torch.where(mx == mn, torch.ldexp(magnitude, -shift), scale)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero group
        s16 = scale.clamp(max=_FP16_MAX).half()
        s = s16.float()
        s = torch.where(s > 0, s, torch.ones_like(s))  # fp16 underflow of a tiny scale
        s16 = s.half()
        z = torch.round(-mn / s).clamp(-_FP16_MAX, _FP16_MAX)
        z16 = z.half()
        q = torch.round(xf / s.unsqueeze(-1)) + z16.float().unsqueeze(-1)
        zero16 = z16
    elif arithmetic == "fp16":  # every intermediate rounded to fp16, as official KIVI's half tensors
        x16 = xf.half()
        mn16 = (x16.amin(dim=-1) * clip_ratio).half() if clip_ratio != 1.0 else x16.amin(dim=-1)
        mx16 = (x16.amax(dim=-1) * clip_ratio).half() if clip_ratio != 1.0 else x16.amax(dim=-1)
        s16 = ((mx16 - mn16).float() / float(qmax)).half()
        s = s16.float()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        shifted = (x16 - mn16.unsqueeze(-1)).float()
        q = torch.round((shifted / safe.unsqueeze(-1)).half().float())
        q = torch.where((s > 0).unsqueeze(-1), q, torch.zeros_like(q))
        zero16 = mn16
    else:
        s16 = scale.clamp(max=_FP16_MAX).half()
        mn16 = mn.clamp(-_FP16_MAX, _FP16_MAX).half()
        s = s16.float()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.round((xf - mn16.float().unsqueeze(-1)) / safe.unsqueeze(-1))
        q = torch.where((s > 0).unsqueeze(-1), q, torch.zeros_like(q))
        zero16 = mn16
    codes = q.clamp(0, qmax).to(torch.uint8)
    # inf/NaN in a group: it decodes to NaN (propagated, never a number); no branch, no host sync
    codes = torch.where(finite.unsqueeze(-1), codes, torch.zeros_like(codes))
    s16 = torch.where(finite, s16, torch.full_like(s16, torch.nan))
    zero16 = torch.where(finite, zero16, torch.zeros_like(zero16))
    return GroupQuant(codes=codes, scale=s16, zero=zero16, bits=bits, zero_point=zero_point)


def dequantize_groups(gq: GroupQuant, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reconstruct ``[..., n_groups, group_size]`` from :class:`GroupQuant` (computed in fp32)."""
    q = gq.codes.float()
    s = gq.scale.float().unsqueeze(-1)
    zero = gq.zero.float().unsqueeze(-1)
    x_hat = s * (q - zero) if gq.zero_point == "integer" else q * s + zero
    return saturate(x_hat, dtype)  # the top code can land just past the dtype's range; NaN stays NaN


def to_groups(x: torch.Tensor, group_size: int, axis: Literal["token", "channel"]) -> torch.Tensor:
    """View ``[..., tokens, channels]`` as ``[..., groups, group_size]`` rows for quantization.

    ``axis="channel"``: per-token groups of ``group_size`` consecutive channels (values);
    result ``[..., tokens, channels/G, G]``.
    ``axis="token"``: per-channel groups of ``group_size`` consecutive tokens (keys);
    result ``[..., tokens/G, channels, G]``.
    """
    *lead, tokens, channels = x.shape
    if axis == "channel":
        if channels % group_size:
            raise ValueError(f"head_dim {channels} is not a multiple of group_size {group_size}")
        return x.reshape(*lead, tokens, channels // group_size, group_size)
    if axis == "token":
        if tokens % group_size:
            raise ValueError(
                f"{tokens} tokens is not a multiple of group_size {group_size}: per-channel key groups "
                "must be flushed whole"
            )
        return x.reshape(*lead, tokens // group_size, group_size, channels).transpose(-1, -2)
    raise ValueError(f"axis must be 'token' or 'channel', got {axis!r}")


def from_groups(g: torch.Tensor, axis: Literal["token", "channel"]) -> torch.Tensor:
    """Inverse of :func:`to_groups`."""
    if axis == "channel":
        *lead, tokens, n_groups, group_size = g.shape
        return g.reshape(*lead, tokens, n_groups * group_size)
    *lead, n_groups, channels, group_size = g.shape
    return g.transpose(-1, -2).reshape(*lead, n_groups * group_size, channels)


def quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int,
    axis: Literal["token", "channel"],
    zero_point: ZeroPoint = "integer",
    clip_ratio: float = 1.0,
    arithmetic: Literal["fp32", "fp16"] = "fp32",
) -> GroupQuant:
    """Quantize ``[..., tokens, channels]`` in groups along ``axis`` (see :func:`to_groups`)."""
    return quantize_groups(to_groups(x, group_size, axis), bits, zero_point, clip_ratio, arithmetic)


def dequantize(gq: GroupQuant, axis: Literal["token", "channel"], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize` up to quantization error: ``[..., tokens, channels]``."""
    return from_groups(dequantize_groups(gq, dtype), axis)


def fake_quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int,
    axis: Literal["token", "channel"],
    zero_point: ZeroPoint = "integer",
    clip_ratio: float = 1.0,
) -> torch.Tensor:
    """Quantize and dequantize in one call; returns ``x``'s dtype."""
    return dequantize(quantize(x, bits, group_size, axis, zero_point, clip_ratio), axis, x.dtype)


# ---------------------------------------------------------------------------------------------
# Bit packing. Codes of ``bits`` bits are packed little-end first along the last axis:
# byte j holds codes [j*k, j*k + k) with k = 8 // bits, code i at bit offset (i % k) * bits.
# 3-bit codes do not divide a byte; they are stored one per byte (no packing).
# ---------------------------------------------------------------------------------------------


def codes_per_byte(bits: int) -> int:
    _check_bits(bits)
    return 8 // bits if 8 % bits == 0 else 1


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes (each ``< 2^bits``) along the last axis into bytes."""
    per_byte = codes_per_byte(bits)
    if per_byte == 1:
        return codes.to(torch.uint8).contiguous()
    n = codes.shape[-1]
    if n % per_byte:
        raise ValueError(f"last axis {n} is not a multiple of {per_byte} codes per byte ({bits}-bit)")
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], n // per_byte, per_byte)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (c << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`."""
    per_byte = codes_per_byte(bits)
    if per_byte == 1:
        return packed
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    c = (packed.unsqueeze(-1) >> shifts) & mask
    return c.reshape(*packed.shape[:-1], packed.shape[-1] * per_byte)


@dataclass(frozen=True)
class PackedGroups:
    """Storage form of :class:`GroupQuant`: codes packed along the group axis."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    zero_point: ZeroPoint

    @classmethod
    def from_quant(cls, gq: GroupQuant) -> PackedGroups:
        return cls(pack_codes(gq.codes, gq.bits), gq.scale, gq.zero, gq.bits, gq.zero_point)

    def unpack(self) -> GroupQuant:
        return GroupQuant(unpack_codes(self.packed, self.bits), self.scale, self.zero, self.bits, self.zero_point)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale, self.zero))
