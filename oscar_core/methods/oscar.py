"""OScaR INT2 (Su et al., arXiv 2605.19660): Canalized Rotation + Omni-Token Scaling.

1. Canalized Rotation: Q and K are multiplied per head and token by the normalized Sylvester
   Hadamard matrix after RoPE (online); the same matrix is fused offline into each head's block of
   ``v_proj`` rows (and bias) and ``o_proj`` columns, so values are cached in the rotated basis.
2. Omni-Token Scaling (keys only): one fp32 L2 norm per token over the rotated key of *all* KV heads
   together; the key is divided by it before quantization (a zero norm counts as 1) and the norm
   multiplies the dequantized key (equivalently the logit).
3. Keys per-channel, values per-token, integer zero point, ``b=2, G=32, R=128``, no clipping, no
   sink protection, block flush for keys and values.

Ablations: ``rotation=False`` (scaling only), ``token_scaling=False`` (rotation only); both off is
a KIVI-style quantizer with integer zero point and block flush. Rotation comes before scaling: scaling
first would create new per-channel outliers in low-norm tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from oscar_core.methods.base import Block, MethodSpec
from oscar_core.quant import ldexp_saturating, pow2_shift, saturate

_FP32_MAX = torch.finfo(torch.float32).max


def token_norms(k: torch.Tensor) -> torch.Tensor:
    """fp32 L2 norm of each token's key over all KV heads: ``[N, H, T, D] -> [N, T]``; 0 becomes 1.

    The sum has a fixed order, so that every implementation gets the same bits (the CUDA pack kernel
    does): per head channel by channel, ``s = s + x*x`` with each product and sum rounded to fp32, then
    the heads' sums in head order, then the correctly rounded square root.

    Overflow. A token whose largest ``|x|`` is at least ``2^L`` (``L = (126 - ceil(log2(H*D))) // 2``,
    57 for 8 heads of 128) could overflow that fp32 sum (bf16/fp32 keys only; fp16 keys cannot). Its
    key is scaled by ``2^-shift`` (``shift = e - L`` for ``max|x| < 2^e``) before squaring and its norm
    by ``2^shift`` after: the same bits as the fixed order in an fp32 of unbounded exponent (a
    power-of-two scale commutes with each rounding; squares it pushes below fp32's normal range are
    far too small to change the sum), saturated at fp32's max. Every other token is summed unscaled,
    bit for bit as before. A token with inf/NaN gets an inf/NaN norm (propagated).
    """
    x = k.float()
    heads, dim = x.shape[1], x.shape[3]
    limit = (126 - (heads * dim - 1).bit_length()) // 2
    shift = pow2_shift(x.abs().amax(dim=(1, 3)), limit)  # [N, T]; 0 for inf/NaN (not scaled)
    x = torch.ldexp(x, -shift[:, None, :, None])  # a multiplication by 1 for ordinary tokens
    per_head = x[..., 0] * x[..., 0]  # [N, H, T]
    for c in range(1, dim):
        per_head = per_head + x[..., c] * x[..., c]
    total = per_head[:, 0]
    for h in range(1, heads):
        total = total + per_head[:, h]
    n = ldexp_saturating(total.sqrt(), shift)
    return torch.where(n == 0, torch.ones_like(n), n)  # NaN stays NaN


def _saturating_mul(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``x * norm`` in fp32; a product of finite factors past fp32's range saturates instead of inf."""
    out = x * norm
    overflow = torch.isinf(out) & torch.isfinite(x) & torch.isfinite(norm)
    return torch.where(overflow, torch.copysign(torch.full_like(out, _FP32_MAX), out), out)


@dataclass(frozen=True)
class OScaRSpec(MethodSpec):
    name: ClassVar[str] = "oscar"
    description: ClassVar[str] = "OScaR: Hadamard rotation + omni-token key scaling, integer zero point"

    rotation: bool = True
    token_scaling: bool = True

    # The rotation switch decides whether Q/K and V/O are rotated; ClassVar flags cannot depend
    # on a field, so these properties shadow them.
    @property
    def rotates_keys(self) -> bool:  # type: ignore[override]
        return self.rotation

    @property
    def rotates_values(self) -> bool:  # type: ignore[override]
        return self.rotation

    def encode_keys(self, k: torch.Tensor) -> Block:
        if not self.token_scaling:
            return self._encode_affine(k, "token", "integer")
        norms = token_norms(k)
        block = self._encode_affine(k.float() / norms[:, None, :, None], "token", "integer")
        block["norm"] = norms
        return block

    def decode_keys(self, block: Block, dtype: torch.dtype) -> torch.Tensor:
        k = self._decode_affine(block, "token", "integer", torch.float32)
        if "norm" in block:
            k = _saturating_mul(k, block["norm"][:, None, :, None])
        return saturate(k, dtype)

    def encode_values(self, v: torch.Tensor) -> Block:
        return self._encode_affine(v, "channel", "integer")

    def decode_values(self, block: Block, dtype: torch.dtype) -> torch.Tensor:
        return self._decode_affine(block, "channel", "integer", dtype)

    def side_bits_per_token(self, num_kv_heads: int, head_dim: int) -> float:
        return 32.0 if self.token_scaling else 0.0
