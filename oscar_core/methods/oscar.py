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

Extension (not in the paper): ``key_basis="auto"`` decides per layer and sequence, when the prompt is
committed, whether its keys are quantized in the rotated basis or in the model's own: the one whose
quantization error moves the prompt's own attention logits less (``sum (q . dk)^2`` over a sample of
the prompt's queries; key reconstruction error alone picks the wrong basis, docs/qwen25_rotation.md).
Attention still sees rotated keys and queries (a unit quantized in the model's basis is rotated back
when decoded); values are unaffected. Without the prompt's queries (a cache filled by ``update`` and
``commit_prompt`` alone, reference round trips) it keeps the paper's rotated basis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from oscar_core.hadamard import hadamard_transform
from oscar_core.methods.base import Block, BlockContext, LayerState, MethodConfigError, MethodSpec
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
    #: "rotated": keys quantized in the Hadamard basis (the paper); "auto": per layer and sequence, the
    #: basis that disturbs the prompt's own attention logits less (module docstring)
    key_basis: Literal["rotated", "auto"] = "rotated"

    #: prompt queries sampled (evenly) for the key_basis="auto" decision
    BASIS_QUERIES: ClassVar[int] = 128

    def validate(self) -> None:
        super().validate()
        if self.key_basis == "auto" and not self.rotation:
            raise MethodConfigError("oscar: key_basis='auto' chooses between the rotated and the model's basis; "
                                    "it needs rotation=True")

    @property
    def observes_prompt_queries(self) -> bool:  # type: ignore[override]
        return self.key_basis == "auto"

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.key_basis == "rotated":  # recorded only when set: paper-default run ids stay as they were
            d["params"].pop("key_basis")
        return d

    # The rotation switch decides whether Q/K and V/O are rotated; ClassVar flags cannot depend
    # on a field, so these properties shadow them.
    @property
    def rotates_keys(self) -> bool:  # type: ignore[override]
        return self.rotation

    @property
    def rotates_values(self) -> bool:  # type: ignore[override]
        return self.rotation

    def encode_keys(self, k: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        flags = None
        if self.key_basis == "auto" and ctx is not None:  # units whose sequence chose the model's basis
            flags = torch.tensor([bool(ctx.seq(i).get("model_basis", False)) for i in range(k.shape[0])])
            k = torch.where(flags[:, None, None, None].to(k.device), hadamard_transform(k).to(k.dtype), k)
        if not self.token_scaling:
            block = self._encode_affine(k, "token", "integer")
        else:
            norms = token_norms(k)
            block = self._encode_affine(k.float() / norms[:, None, :, None], "token", "integer")
            block["norm"] = norms
        if flags is not None:
            block["model_basis"] = flags.to(device=k.device, dtype=torch.uint8)
        return block

    def decode_keys(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        k = self._decode_affine(block, "token", "integer", torch.float32)
        if "norm" in block:
            k = _saturating_mul(k, block["norm"][:, None, :, None])
        if "model_basis" in block:  # units quantized in the model's basis: back to the attention basis
            flip = block["model_basis"].to(k.device).bool()[:, None, None, None]
            k = torch.where(flip, hadamard_transform(k), k)
        return saturate(k, dtype)

    # -- key_basis="auto" --------------------------------------------------------------------------
    def observe_prompt(self, state: LayerState, keys: torch.Tensor | None, values: torch.Tensor | None,
                       pad: list[int], layer_input: torch.Tensor | None) -> None:
        if self.key_basis != "auto" or keys is None:
            return
        q = state.prompt_queries
        for b, seq in enumerate(state.per_seq):
            qb = None if q is None else q[b : b + 1, :, pad[b] :]
            seq["model_basis"] = self.model_basis_is_better(keys[b : b + 1, :, pad[b] :], qb)

    def model_basis_is_better(self, k: torch.Tensor, q: torch.Tensor | None) -> bool:
        """Whether quantizing keys ``[1, H, T, D]`` (attention basis) in the model's basis changes the
        logits of queries ``q`` ``[1, Hq, T', D]`` (attention basis, up to :attr:`BASIS_QUERIES` sampled
        evenly) less than quantizing them rotated: ``sum (q . dk)^2`` over the tokens the prompt commit
        quantizes (whole ``R`` blocks, else whole key groups). No queries or no whole group: False."""
        t = k.shape[2]
        usable = t // self.block_tokens * self.block_tokens or t // self.group_size * self.group_size
        if q is None or usable == 0 or q.shape[2] == 0:
            return False
        q = q[:, :, :: max(1, math.ceil(q.shape[2] / self.BASIS_QUERIES))].float()
        group = q.shape[1] // k.shape[1]
        rotated = k[:, :, :usable].float()

        def logit_error(x: torch.Tensor, to_attention: bool) -> float:
            d = self.decode_keys(self.encode_keys(x), torch.float32) - x
            d = (hadamard_transform(d) if to_attention else d).repeat_interleave(group, dim=1)
            return float((q @ d.transpose(-1, -2)).pow(2).sum())

        return logit_error(hadamard_transform(rotated), True) < logit_error(rotated, False)

    def encode_values(self, v: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        return self._encode_affine(v, "channel", "integer")

    def decode_values(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode_affine(block, "channel", "integer", dtype)

    def side_bits_per_token(self, num_kv_heads: int, head_dim: int) -> float:
        return 32.0 if self.token_scaling else 0.0
