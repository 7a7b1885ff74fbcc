"""OTT, Outlier Token Tracing (Su et al., ACL 2025): KIVI with a full-precision pool of outlier tokens.

KIVI layout and quantizer (keys per channel over ``G`` consecutive tokens, values per token over ``G``
consecutive channels, float minimum), ``b=2, G=32, R=128``; keys *and* values are flushed in whole
``R``-token blocks. Outlier tokens are those whose keys have an unusually *small* magnitude
(score = sum of ``|k|`` over all channels of all KV heads of the layer, post-RoPE). Per layer and
sequence, before a block is quantized:

1. the candidates are the block's tokens plus the current pool; the ``pool_size`` (5) candidates with
   the smallest score form the new pool (ties: the earlier token);
2. pool tokens that are not kept leave the pool for the full-precision *overflow pool* (32 tokens);
   if they do not fit, tracing stops for the rest of the sequence (the pool is frozen, later blocks
   are quantized as in KIVI) and this block is quantized without tracing;
3. the block's tokens that entered the pool keep their key and value in full precision (in the pool);
   in the block their slots are replaced by the mean of the block's *other* tokens (per head and
   channel) before min/max, so they do not widen the quantization ranges;
4. a substituted slot is never attended: the cache's full-precision override (the pool copy) replaces
   it on the timeline, and stays there when the token moves on to the overflow pool.

The first ``skip_layers`` (2) layers use no pool. A standalone reference round trip counts as a
traced layer.

Choices written down (the sources are terse): "block mean" is the mean of the block's non-pool
tokens; the pool is per sequence; a token that entered the pool keeps its full-precision copy for
good (pool or overflow); :meth:`bits_per_element` counts the pool and overflow copies (16-bit K and V,
in addition to the codes of their substituted slots) for a traced layer at their maximum size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from oscar_core.methods.base import KEEP_FULL, Block, BlockContext, MethodConfigError, MethodSpec, contextual


@dataclass(frozen=True)
class OTTSpec(MethodSpec):
    name: ClassVar[str] = "ott"
    description: ClassVar[str] = "OTT: KIVI + full-precision pool of traced low-magnitude outlier tokens"
    uses_context: ClassVar[bool] = True

    value_flush: Literal["block", "token"] = "block"
    pool_size: int = 5
    overflow_size: int = 32
    skip_layers: int = 2

    def validate(self) -> None:
        super().validate()
        if self.value_flush != "block":
            raise MethodConfigError("ott: value_flush must be 'block' (keys and values are traced block by block)")
        for what, n in (("pool_size", self.pool_size), ("overflow_size", self.overflow_size),
                        ("skip_layers", self.skip_layers)):
            if n < 0:
                raise MethodConfigError(f"ott: {what} must be >= 0, got {n}")

    def _traced(self, ctx: BlockContext) -> bool:
        layer = ctx.state.layer_idx
        return self.pool_size > 0 and (layer is None or layer >= self.skip_layers)

    @staticmethod
    def _pool_state(seq: dict[str, Any]) -> dict[str, Any]:
        return seq.setdefault("ott", {"pool": [], "overflow": [], "stopped": False, "pending": {}})

    def _trace(self, st: dict[str, Any], scores: list[float], start: int) -> list[int]:
        """Update the pool with one block; return the block's token indices that enter the pool."""
        if st["stopped"]:
            return []
        cands = [(s, start + t) for t, s in enumerate(scores)] + list(st["pool"])
        cands.sort(key=lambda c: (c[0], c[1]))
        chosen = cands[: self.pool_size]
        chosen_pos = {p for _, p in chosen}
        evicted = [c for c in st["pool"] if c[1] not in chosen_pos]
        if len(st["overflow"]) + len(evicted) > self.overflow_size:
            st["stopped"] = True
            return []
        st["overflow"].extend(p for _, p in evicted)
        st["pool"] = chosen
        return sorted(p - start for _, p in chosen if p >= start)

    @staticmethod
    def _mean(rest: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of fp32 ``[H, T, D]``; where the fp32 sum of finite values overflows, the mean
        of the values scaled by a power of two (exact), scaled back (it cannot exceed their max)."""
        mean = rest.mean(dim=1, keepdim=True)
        k = (rest.shape[1] - 1).bit_length()
        scaled = (rest * 2.0**-k).mean(dim=1, keepdim=True) * 2.0**k
        overflow = ~torch.isfinite(mean) & torch.isfinite(rest).all(dim=1, keepdim=True)  # inf or inf - inf
        return torch.where(overflow, scaled, mean)

    @staticmethod
    def _substitute(x: torch.Tensor, sel: list[int]) -> torch.Tensor:
        """Replace tokens ``sel`` of one unit ``[H, T, D]`` by the mean of the unit's other tokens."""
        others = torch.ones(x.shape[1], dtype=torch.bool)
        others[sel] = False
        mean = OTTSpec._mean(x[:, others.to(x.device)]) if bool(others.any()) else torch.zeros_like(x[:, :1])
        x[:, sel] = mean.expand(-1, len(sel), -1)
        return x

    def _encode_pooled(self, x: torch.Tensor, pooled: list[list[int]], axis: Literal["token", "channel"]) -> Block:
        """Units ``x`` with the tokens ``pooled[i]`` of unit ``i`` substituted before quantization and
        flagged ``KEEP_FULL`` (the cache keeps them in full precision)."""
        x_sub = x.float().clone()
        keep = torch.zeros(x.shape[0], x.shape[2], dtype=torch.bool)
        for i, sel in enumerate(pooled):
            if sel:
                keep[i, sel] = True
                x_sub[i] = self._substitute(x_sub[i], sel)
        block = self._encode_affine(x_sub, axis, "float")
        block[KEEP_FULL] = keep
        return block

    @contextual
    def encode_keys(self, k: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        pooled: list[list[int]] = []
        if self._traced(ctx):
            scores = k.float().abs().sum(dim=(1, 3)).cpu()  # [N, T]
            for i in range(k.shape[0]):
                st = self._pool_state(ctx.seq(i))
                start = int(ctx.starts[i])
                pooled.append(self._trace(st, scores[i].tolist(), start))
                st["pending"][start] = pooled[-1]
        return self._encode_pooled(k, pooled, "token")

    @contextual
    def decode_keys(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode_affine(block, "token", "float", dtype)

    @contextual
    def encode_values(self, v: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        pooled: list[list[int]] = []
        if self._traced(ctx):  # the tokens the keys' encoder pooled in the same units
            pooled = [self._pool_state(ctx.seq(i))["pending"].pop(int(ctx.starts[i]), []) for i in range(v.shape[0])]
        return self._encode_pooled(v, pooled, "channel")

    @contextual
    def decode_values(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode_affine(block, "channel", "float", dtype)

    def bits_per_element(self, seq_len: int, num_kv_heads: int, head_dim: int) -> float:
        base = super().bits_per_element(seq_len, num_kv_heads, head_dim)
        r = self.residual_length
        quantized = (seq_len // r) * r
        pooled = min(self.pool_size + self.overflow_size, quantized)
        return base + pooled * 16.0 / seq_len  # K and V copies over 2*T*H*D elements
