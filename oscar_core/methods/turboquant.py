"""TurboQuant (Zandieh et al., 2025): per-vector codebook quantization after a random rotation.

``turboquant+`` (the paper's KV-cache setting, no QJL). Per vector (one head's key or value at one
token), the channels are split into ``outlier_channels`` outlier channels and the rest. By default
(``outlier_channels=None``) the outliers are a quarter of the head dim, ``8 * (D // 32)``: 16, 32, 64 at
``D`` = 64, 128, 256 (the paper's 32 of 128), so that the codes cost 2.25 bits per element at every head
dim; an explicit count is kept as given (``make_cache`` records the count it used in ``cache.spec``).
The outlier channels are the ones with the largest mean ``|x|`` over the prompt, per
layer, head and stream (keys and values separately), fixed afterwards. Each part independently:

1. store its L2 norm (fp16) and normalize it;
2. multiply by a fixed Haar-random orthogonal matrix of the part's dimension (QR of a Gaussian with
   a fixed seed per layer and part, sign-fixed; :func:`oscar_core.codebook.haar_rotation`);
3. replace every coordinate by the nearest centroid of the Lloyd-Max codebook of the coordinate
   density ``f(t) ~ (1 - t^2)^((n-3)/2)`` (``n`` = the part's dimension;
   :func:`oscar_core.codebook.lloyd_max`): ``outlier_bits`` (3) for outliers, ``bits`` (2) for the rest.

Dequantize: codebook lookup, inverse rotation, times the norm. Same window/prefill policy as the other
methods (``R = 128``, full-precision prefill, keys and values block-flushed).

``turboquant`` (the inner-product variant, "TurboQuant_prod"): each part uses a ``b-1``-bit codebook
and a 1-bit QJL sketch of the residual ``r = y - y_hat`` of the rotated unit vector, with ``||r||``
(fp16): ``y_tilde = y_hat + sqrt(pi/2)/n * ||r|| * S^T sign(S r)`` (``S`` a fixed seeded ``n x n``
Gaussian per layer and part), so ``<q, x_tilde>`` is an unbiased estimate of ``<q, x>``. It keeps the
outlier split (outliers ``outlier_bits-1`` + 1, regular ``bits-1`` + 1 bits), and is applied to keys and
values alike.

Choices written down (the sources are silent): the outlier channels are chosen per *sequence* of the
batch (from that sequence's prompt), so a batched run equals the sequences run alone; one rotation per
layer and part dimension is shared by keys and values; the outlier indices (7 bits per outlier channel
per layer, head and sequence) are not counted in :meth:`bits_per_element`. Storage per quantized
element with ``D = 128``: ``turboquant+`` (32*3 + 96*2 + 2*16)/128 = 2.5 bits; ``turboquant``
(32*3 + 96*2 + 4*16)/128 = 2.75 bits. With the default quarter split the codes are 2.25 bits at any
head dim and the two fp16 norms per vector add ``32/D``: ``turboquant+`` costs 2.75, 2.5 and 2.375 bits
at ``D`` = 64, 128 and 256 (``turboquant``: 3.25, 2.75, 2.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from oscar_core import codebook
from oscar_core.methods.base import Block, BlockContext, LayerState, MethodConfigError, MethodSpec, contextual
from oscar_core.quant import ldexp_saturating, pow2_shift, saturate


def _vector_norm(x: torch.Tensor) -> torch.Tensor:
    """fp32 L2 norm over the last axis that does not overflow: a vector whose squares could pass fp32's
    range is scaled by a power of two first (exact; every other vector is computed unscaled, as
    ``x.norm``); saturated at fp32's max. inf/NaN propagate."""
    shift = pow2_shift(x.abs().amax(dim=-1), (126 - (x.shape[-1] - 1).bit_length()) // 2)
    return ldexp_saturating(torch.ldexp(x, -shift.unsqueeze(-1)).norm(dim=-1), shift)


@dataclass(frozen=True)
class TurboQuantPlusSpec(MethodSpec):
    name: ClassVar[str] = "turboquant+"
    description: ClassVar[str] = "TurboQuant+: outlier split, Haar rotation, Lloyd-Max codebook (no QJL)"
    uses_context: ClassVar[bool] = True
    key_axis: ClassVar[Literal["token", "channel"]] = "channel"
    value_axis: ClassVar[Literal["token", "channel"]] = "channel"
    #: True for the QJL (inner-product) variant.
    qjl: ClassVar[bool] = False

    #: bits of the regular channels (total, QJL bit included for the QJL variant)
    bits: int = 2
    #: bits of the outlier channels
    outlier_bits: int = 3
    #: number of outlier channels per head (0: one part, no split; None: a quarter of the head dim)
    outlier_channels: int | None = None
    #: not used (per-vector codebooks); kept for the common interface
    group_size: int | None = None
    #: base seed of the fixed rotations (and QJL projections); layer ``l`` part ``p`` uses a derived seed
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        low = 2 if self.qjl else 1
        for what, b in (("bits", self.bits), ("outlier_bits", self.outlier_bits)):
            if not low <= b <= 4:
                raise MethodConfigError(f"{self.name}: {what} must be in {low}..4, got {b}")
        if self.outlier_channels is not None and self.outlier_channels < 0:
            raise MethodConfigError(f"{self.name}: outlier_channels must be >= 0, got {self.outlier_channels}")

    def group_for(self, axis: str, head_dim: int) -> int:
        return head_dim

    def outliers_for(self, head_dim: int) -> int:
        """Outlier channels per head at ``head_dim``: as set, or a quarter of it in multiples of 8."""
        return self.outlier_channels if self.outlier_channels is not None else 8 * (head_dim // 32)

    def resolve_for_model(self, num_kv_heads: int, head_dim: int) -> TurboQuantPlusSpec:
        if self.outlier_channels is not None:
            return self
        return self.replace(outlier_channels=self.outliers_for(head_dim))

    def _parts(self, head_dim: int) -> list[tuple[str, int, int]]:
        """(name, dimension, total bits) of the outlier and regular parts."""
        parts = []
        n_out = self.outliers_for(head_dim)
        if n_out:
            parts.append(("out", n_out, self.outlier_bits))
        parts.append(("reg", head_dim - n_out, self.bits))
        return parts

    def check_model(self, num_kv_heads: int, head_dim: int) -> None:
        super().check_model(num_kv_heads, head_dim)
        for name, n, _ in self._parts(head_dim):
            if n < 3 or n % 8:
                raise MethodConfigError(
                    f"{self.name}: the {'outlier' if name == 'out' else 'regular'} part has {n} channels "
                    f"(head_dim {head_dim}, outlier_channels {self.outliers_for(head_dim)}); each part needs a "
                    "multiple of 8 channels, at least 8"
                )

    # -- state -------------------------------------------------------------------------------
    def observe_prompt(self, state: LayerState, keys: torch.Tensor | None, values: torch.Tensor | None,
                       pad: list[int], layer_input: torch.Tensor | None) -> None:
        """Choose each sequence's outlier channels (largest mean |x| over its prompt, per head)."""
        for tag, x in (("k", keys), ("v", values)):
            if x is None:
                continue
            d = x.shape[-1]
            n_out = self.outliers_for(d)
            for b, seq in enumerate(state.per_seq):
                real = x[b, :, pad[b]:].float()
                score = real.abs().mean(dim=1) if real.shape[1] else torch.zeros(x.shape[1], d, device=x.device)
                order = torch.argsort(score, dim=-1, descending=True, stable=True)
                out = order[:, :n_out].sort(dim=-1).values
                reg = order[:, n_out:].sort(dim=-1).values
                seq[f"{tag}_perm"] = torch.cat([out, reg], dim=-1).cpu()  # [H, D], outliers first

    def _perm(self, ctx: BlockContext, tag: str, n: int, device: torch.device) -> torch.Tensor:
        return torch.stack([ctx.seq(i)[f"{tag}_perm"] for i in range(n)]).to(device)  # [N, H, D]

    def _seed(self, ctx: BlockContext, part: int, what: int) -> int:
        layer = ctx.state.layer_idx or 0
        return self.seed * 1_000_003 + layer * 1009 + part * 17 + what

    def _tables(self, ctx: BlockContext, part: int, n: int, mse_bits: int, device: torch.device):
        """(centroids, rotation, QJL projection or None) of one part, cached per layer and device."""
        key = ("turboquant", self.seed, self.qjl, part, n, mse_bits, str(device))
        cached = ctx.state.shared.get(key)
        if cached is None:
            cents = codebook.lloyd_max(n, mse_bits).to(device=device, dtype=torch.float32)
            rot = codebook.haar_rotation(n, self._seed(ctx, part, 0), device)
            s = codebook.qjl_matrix(n, self._seed(ctx, part, 1), device) if self.qjl else None
            cached = ctx.state.shared[key] = (cents, rot, s)
        return cached

    # -- numerics ------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, ctx: BlockContext, tag: str) -> Block:
        n_units, h, t, d = x.shape
        perm = self._perm(ctx, tag, n_units, x.device)
        xp = torch.gather(x.float(), -1, perm[:, :, None, :].expand(n_units, h, t, d))
        block: Block = {}
        start = 0
        for p, (name, n, bits) in enumerate(self._parts(d)):
            part = xp[..., start : start + n]
            start += n
            norm = _vector_norm(part)
            u = part / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(-1)
            mse_bits = bits - 1 if self.qjl else bits
            cents, rot, s = self._tables(ctx, p, n, mse_bits, x.device)
            y = u @ rot.T
            codes = codebook.nearest_code(y, cents)
            block[f"{name}_codes"] = codebook.pack(codes, mse_bits)
            block[f"{name}_norm"] = saturate(norm, torch.float16)  # inf/NaN of non-finite inputs kept
            if self.qjl:
                r = y - cents[codes.long()]
                block[f"{name}_qjl"] = codebook.pack(codebook.qjl_encode(r, s), 1)
                block[f"{name}_rnorm"] = r.norm(dim=-1).half()
        return block

    def _decode(self, block: Block, dtype: torch.dtype, ctx: BlockContext, tag: str) -> torch.Tensor:
        first = next(iter(block.values()))
        n_units, h, t = first.shape[:3]
        parts = self._parts(self._head_dim(block))
        d = sum(n for _, n, _ in parts)
        outs = []
        for p, (name, n, bits) in enumerate(parts):
            mse_bits = bits - 1 if self.qjl else bits
            codes = codebook.unpack(block[f"{name}_codes"], mse_bits)
            cents, rot, s = self._tables(ctx, p, n, mse_bits, codes.device)
            y = cents[codes.long()]
            if self.qjl:
                y = y + codebook.qjl_decode(codebook.unpack(block[f"{name}_qjl"], 1), block[f"{name}_rnorm"], s)
            outs.append((y @ rot) * block[f"{name}_norm"].float().unsqueeze(-1))
        xp = torch.cat(outs, dim=-1)
        perm = self._perm(ctx, tag, n_units, xp.device)
        inv = torch.argsort(perm, dim=-1)
        return saturate(torch.gather(xp, -1, inv[:, :, None, :].expand(n_units, h, t, d)), dtype)

    def _head_dim(self, block: Block) -> int:
        dim = 0
        for name, bits in (("out", self.outlier_bits), ("reg", self.bits)):
            if f"{name}_codes" in block:
                dim += codebook.codes_in(block[f"{name}_codes"].shape[-1], bits - 1 if self.qjl else bits)
        return dim

    @contextual
    def encode_keys(self, k: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        return self._encode(k, ctx, "k")

    @contextual
    def decode_keys(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode(block, dtype, ctx, "k")

    @contextual
    def encode_values(self, v: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        return self._encode(v, ctx, "v")

    @contextual
    def decode_values(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode(block, dtype, ctx, "v")

    # -- accounting ----------------------------------------------------------------------------
    def code_bits_per_element(self, head_dim: int) -> float:
        """Bits per quantized element: codes (+ QJL signs) and the fp16 norms of each part."""
        bits = 0.0
        for _, n, b in self._parts(head_dim):
            bits += n * b + 16 * (2 if self.qjl else 1)
        return bits / head_dim

    def bits_per_element(self, seq_len: int, num_kv_heads: int, head_dim: int) -> float:
        r, t = self.residual_length, seq_len
        quant = (t // r) * r if r > 0 else t
        v_quant = max(t - r, 0) if self.value_flush == "token" else quant
        q = self.code_bits_per_element(head_dim)
        total = (quant + v_quant) * q + ((t - quant) + (t - v_quant)) * 16.0
        return total / (2 * t)


@dataclass(frozen=True)
class TurboQuantSpec(TurboQuantPlusSpec):
    name: ClassVar[str] = "turboquant"
    description: ClassVar[str] = "TurboQuant (prod): (b-1)-bit codebook + 1-bit QJL residual sketch, unbiased"
    qjl: ClassVar[bool] = True
