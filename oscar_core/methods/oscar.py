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


def token_norms(k: torch.Tensor) -> torch.Tensor:
    """fp32 L2 norm of each token's key over all KV heads: ``[N, H, T, D] -> [N, T]``; 0 becomes 1.

    The sum has a fixed order, so that every implementation gets the same bits (the CUDA pack kernel
    does): per head channel by channel, ``s = s + x*x`` with each product and sum rounded to fp32, then
    the heads' sums in head order, then the correctly rounded square root.
    """
    x = k.float()
    per_head = x[..., 0] * x[..., 0]  # [N, H, T]
    for c in range(1, x.shape[-1]):
        per_head = per_head + x[..., c] * x[..., c]
    total = per_head[:, 0]
    for h in range(1, x.shape[1]):
        total = total + per_head[:, h]
    n = total.sqrt()
    return torch.where(n > 0, n, torch.ones_like(n))


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
            k = k * block["norm"][:, None, :, None]
        return k.to(dtype)

    def encode_values(self, v: torch.Tensor) -> Block:
        return self._encode_affine(v, "channel", "integer")

    def decode_values(self, block: Block, dtype: torch.dtype) -> torch.Tensor:
        return self._decode_affine(block, "channel", "integer", dtype)

    def side_bits_per_token(self, num_kv_heads: int, head_dim: int) -> float:
        return 32.0 if self.token_scaling else 0.0
