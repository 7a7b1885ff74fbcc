"""RotateKV (Su et al., IJCAI 2025): outlier-aware pre-RoPE grouped-head key rotation, sink-aware.

1. **Calibration** (offline, :func:`oscar_core.calibration.calibrate_rotatekv`, from a text file the
   user gives): the grouped-head Hadamard is applied to each layer's pre-RoPE keys, each of the
   layer's ``H*D`` rotated channels is summed (signed) over the calibration tokens, and the channels
   are sorted ascending: one permutation per layer (as the official ``k_reordering_calibration.py``).
   Stored with the model's fingerprint and reused; ``calibration="identity"`` runs without one.
2. **Keys**: the cache receives post-RoPE keys; RoPE (an orthogonal map per position, times the
   model's ``attention_scaling``) is undone exactly for the token's position within its sequence
   (= ``generate``'s position id with left padding), the key of 4 consecutive KV heads (``4*D``
   channels) is multiplied by the normalized Hadamard of size ``4*D``, the layer's ``H*D`` channels
   are permuted, and the result is quantized. At attention time: dequantize, un-permute, inverse
   Hadamard, re-apply RoPE for the position. Queries are untouched (the attention basis is the model's).
3. **Values/outputs**: per-head Hadamard fused into ``v_proj``/``o_proj`` (as OScaR step 2).
4. **Attention sinks**: at prefill, per layer and sequence, the tokens holding the 20 largest ``|x|``
   of the decoder layer's *input* hidden states (the residual stream, "massive activations") keep
   their K and V in full precision (cache overrides).
5. Per-token quantization, ``G = 128`` consecutive channels of the token's (permuted) ``H*D`` vector,
   integer zero point, clip ratio 0.8, ``b = 2`` (one head per group when ``D = 128``, as the original's
   ``[.., head_dim=128]`` groups); values likewise over the rotated ``H*D`` vector.

Choices written down: the clip ratio applies to keys and values alike; sinks are chosen per sequence
over its real tokens; a sink token's quantized slot is stored too and counted in
:meth:`bits_per_element` (2.25 + up to 20 full-precision tokens). Models with multimodal RoPE
(M-RoPE: Qwen3-VL, Qwen3-Omni) or a sequence-length-dependent RoPE (``dynamic``, ``longrope``) are
refused at :func:`oscar_core.make_cache`: undoing RoPE needs a fixed 1-D position per token.
``no_quant=True`` is a test switch: the rotate/permute/RoPE path without the quantizer (it must
reproduce the model exactly). Standalone reference round trips need ``calibration="identity"`` and
assume Llama RoPE with ``reference_rope_theta`` at positions ``0..T-1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from oscar_core.hadamard import check_hadamard_size, hadamard_transform
from oscar_core.methods.base import KEEP_FULL, Block, BlockContext, LayerState, MethodConfigError, MethodSpec
from oscar_core.quant import PackedGroups, dequantize, quantize

_UNSUPPORTED_ROPE = ("dynamic", "longrope")


# -- RoPE (rotate-half convention of Llama/Qwen/Mistral in transformers) -------------------------
def rope_tables(inv_freq: torch.Tensor, positions: torch.Tensor, scaling: float = 1.0):
    """cos/sin ``[..., D]`` for positions ``[...]`` exactly as transformers builds them (fp32)."""
    freqs = positions.float()[..., None] * inv_freq.float().to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[N, H, T, D]``, cos/sin ``[N, T, D]``."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def undo_rope(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`apply_rope` (RoPE is ``scaling *`` an orthogonal map per position)."""
    s2 = (cos * cos + sin * sin)[:, None]  # = scaling^2 (1 when attention_scaling == 1)
    return (y * cos[:, None] - _rotate_half(y) * sin[:, None]) / s2


def grouped_hadamard(k: torch.Tensor, group: int) -> torch.Tensor:
    """Hadamard over ``group`` consecutive heads: ``[N, H, T, D]`` -> ``[N, T, H*D]`` (fp32; self-inverse)."""
    n, h, t, d = k.shape
    x = k.float().transpose(1, 2).reshape(n, t, h // group, group * d)
    return hadamard_transform(x).reshape(n, t, h * d)


def grouped_hadamard_inverse(x: torch.Tensor, heads: int, group: int) -> torch.Tensor:
    """``[N, T, H*D]`` -> ``[N, H, T, D]``."""
    n, t, hd = x.shape
    d = hd // heads
    y = hadamard_transform(x.reshape(n, t, heads // group, group * d))
    return y.reshape(n, t, heads, d).transpose(1, 2)


def rope_of_model(model: torch.nn.Module, head_dim: int) -> tuple[torch.Tensor, float]:
    """The text decoder's RoPE ``inv_freq`` and ``attention_scaling``; a clear error if unsupported."""
    from oscar_core.model import _text_model

    decoder = _text_model(model)
    config = decoder.config
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if "mrope_section" in params or getattr(config, "mrope_section", None):
        raise MethodConfigError(
            f"rotatekv: {type(model).__name__} uses multimodal RoPE (M-RoPE, 3-D positions); undoing RoPE "
            "per token position is not supported for it. Use another method for this model."
        )
    if rope_type in _UNSUPPORTED_ROPE:
        raise MethodConfigError(f"rotatekv: RoPE type {rope_type!r} depends on the sequence length; not supported")
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise MethodConfigError(f"rotatekv: no rotary embedding (rotary_emb.inv_freq) found in {type(decoder).__name__}")
    inv_freq = rotary.inv_freq.detach().float().cpu()
    if 2 * inv_freq.numel() != head_dim:
        raise MethodConfigError(
            f"rotatekv: partial rotary embeddings ({2 * inv_freq.numel()} of {head_dim} channels) are not supported"
        )
    return inv_freq, float(getattr(rotary, "attention_scaling", 1.0))


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


@dataclass(frozen=True)
class RotateKVSpec(MethodSpec):
    name: ClassVar[str] = "rotatekv"
    description: ClassVar[str] = "RotateKV: calibrated pre-RoPE grouped-head Hadamard + reorder, sink-aware"
    uses_context: ClassVar[bool] = True
    observes_layer_input: ClassVar[bool] = True
    rotates_values: ClassVar[bool] = True
    key_axis: ClassVar[Literal["token", "channel"]] = "channel"
    value_axis: ClassVar[Literal["token", "channel"]] = "channel"

    group_size: int = 128
    clip_ratio: float = 0.8
    #: KV heads per grouped Hadamard (the rotation is head_group * head_dim wide)
    head_group: int = 4
    #: full-precision sink tokens per layer and sequence (top-|x| entries of the layer input)
    sink_tokens: int = 20
    #: None: the stored calibration of this model (an error if there is none); "identity"; or a file path
    calibration: str | None = None
    #: test switch: skip the quantizer, keep the rotate/permute/RoPE path
    no_quant: bool = False
    #: RoPE theta assumed by standalone reference round trips (the cache reads the model's own RoPE)
    reference_rope_theta: float = 500000.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.clip_ratio <= 1.0:
            raise MethodConfigError(f"rotatekv: clip_ratio must be in (0, 1], got {self.clip_ratio}")
        if self.head_group < 1 or self.sink_tokens < 0:
            raise MethodConfigError("rotatekv: head_group must be >= 1 and sink_tokens >= 0")

    def check_model(self, num_kv_heads: int, head_dim: int) -> None:
        if num_kv_heads % self.head_group:
            raise MethodConfigError(
                f"rotatekv: the grouped-head rotation needs the number of KV heads ({num_kv_heads}) to be a "
                f"multiple of head_group={self.head_group}"
            )
        for n, what in ((head_dim, "head_dim"), (self.head_group * head_dim, "head_group*head_dim")):
            try:
                check_hadamard_size(n, what)
            except ValueError as exc:
                raise MethodConfigError(f"rotatekv: {exc}") from None
        if (num_kv_heads * head_dim) % self.group_size:
            raise MethodConfigError(
                f"rotatekv: num_kv_heads*head_dim ({num_kv_heads * head_dim}) is not a multiple of group_size "
                f"{self.group_size}"
            )

    # -- state ---------------------------------------------------------------------------------
    def init_layer_states(self, model: torch.nn.Module, info: Any) -> list[dict[str, Any]]:
        from oscar_core import calibration

        inv_freq, scaling = rope_of_model(model, info.head_dim)
        perms = calibration.permutations_for(self, model, info)
        return [{"inv_freq": inv_freq, "rope_scaling": scaling, "perm": perms[i]} for i in range(info.num_layers)]

    def observe_prompt(self, state: LayerState, keys: torch.Tensor | None, values: torch.Tensor | None,
                       pad: list[int], layer_input: torch.Tensor | None) -> None:
        """Find each sequence's sink tokens: those holding the top-``sink_tokens`` ``|x|`` of the layer input."""
        if self.sink_tokens == 0 or state.layer_idx is None:
            return
        if layer_input is None:
            raise RuntimeError(
                "rotatekv: the decoder layer's input hidden states were not captured at prefill; create the cache "
                "with oscar_core.make_cache(model, 'rotatekv') on this model (it installs the capture hook)"
            )
        for b, seq in enumerate(state.per_seq):
            seq["sinks"] = massive_activation_tokens(layer_input[b, pad[b]:], self.sink_tokens)

    def _layer(self, ctx: BlockContext, heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        shared = ctx.state.shared
        if "perm" not in shared:  # standalone reference round trip
            if self.calibration != "identity":
                raise MethodConfigError(
                    "rotatekv: a standalone round trip (no model) needs calibration='identity'; calibrated "
                    "permutations belong to a model (use oscar_core.make_cache)"
                )
            shared["perm"] = torch.arange(heads * head_dim)
            shared["inv_freq"] = default_inv_freq(head_dim, self.reference_rope_theta)
            shared["rope_scaling"] = 1.0
        return shared["perm"], shared["inv_freq"], shared["rope_scaling"]

    def _keep(self, ctx: BlockContext, tokens: int) -> torch.Tensor | None:
        if self.sink_tokens == 0:
            return None
        pos = ctx.positions(tokens)
        keep = torch.zeros(pos.shape, dtype=torch.bool)
        for i in range(pos.shape[0]):
            sinks = ctx.seq(i).get("sinks")
            if sinks is not None and sinks.numel():
                keep[i] = torch.isin(pos[i], sinks)
        return keep

    # -- numerics ------------------------------------------------------------------------------
    def _quant(self, x: torch.Tensor) -> Block:
        if self.no_quant:
            return {"raw": x.float()}
        gq = quantize(x, self.bits, self.group_size, "channel", "integer", self.clip_ratio)
        p = PackedGroups.from_quant(gq)
        return {"codes": p.packed, "scale": p.scale, "zero": p.zero}

    def _dequant(self, block: Block) -> torch.Tensor:
        if "raw" in block:
            return block["raw"].float()
        p = PackedGroups(block["codes"], block["scale"], block["zero"], self.bits, "integer")
        return dequantize(p.unpack(), "channel", torch.float32)

    def encode_keys_at(self, k: torch.Tensor, ctx: BlockContext) -> Block:
        n, h, t, d = k.shape
        perm, inv_freq, scaling = self._layer(ctx, h, d)
        cos, sin = rope_tables(inv_freq, ctx.positions(t, k.device), scaling)
        pre = undo_rope(k.float(), cos, sin)
        x = grouped_hadamard(pre, self.head_group)[..., perm.to(k.device)]  # [N, T, H*D]
        block = self._quant(x)
        keep = self._keep(ctx, t)
        if keep is not None:
            block[KEEP_FULL] = keep
        return block

    def decode_keys_at(self, block: Block, dtype: torch.dtype, ctx: BlockContext) -> torch.Tensor:
        x = self._dequant(block)  # [N, T, H*D]
        n, t, hd = x.shape
        perm = ctx.state.shared.get("perm")
        if perm is None:
            raise MethodConfigError("rotatekv: decode before encode in a standalone context")
        heads = hd // (2 * ctx.state.shared["inv_freq"].numel())
        x = x[..., torch.argsort(perm).to(x.device)]
        pre = grouped_hadamard_inverse(x, heads, self.head_group)
        cos, sin = rope_tables(ctx.state.shared["inv_freq"], ctx.positions(t, x.device), ctx.state.shared["rope_scaling"])
        return apply_rope(pre, cos, sin).to(dtype)

    def encode_values_at(self, v: torch.Tensor, ctx: BlockContext) -> Block:
        n, h, t, d = v.shape
        self._layer(ctx, h, d)
        block = self._quant(v.float().transpose(1, 2).reshape(n, t, h * d))
        keep = self._keep(ctx, t)
        if keep is not None:
            block[KEEP_FULL] = keep
        return block

    def decode_values_at(self, block: Block, dtype: torch.dtype, ctx: BlockContext) -> torch.Tensor:
        x = self._dequant(block)
        n, t, hd = x.shape
        if "inv_freq" not in ctx.state.shared:
            raise MethodConfigError("rotatekv: decode before encode in a standalone context")
        d = 2 * ctx.state.shared["inv_freq"].numel()
        return x.reshape(n, t, hd // d, d).transpose(1, 2).to(dtype)

    # -- accounting ----------------------------------------------------------------------------
    def group_for(self, axis: str, head_dim: int) -> int:
        return self.group_size

    def bits_per_element(self, seq_len: int, num_kv_heads: int, head_dim: int) -> float:
        base = super().bits_per_element(seq_len, num_kv_heads, head_dim)
        r = self.residual_length
        quantized = (seq_len // r) * r if r > 0 else seq_len
        return base + min(self.sink_tokens, quantized) * 16.0 / seq_len


def massive_activation_tokens(hidden: torch.Tensor, k: int) -> torch.Tensor:
    """Token indices (sorted, unique, int64 CPU) holding the ``k`` largest ``|x|`` of ``hidden`` ``[T, C]``."""
    flat = hidden.detach().float().abs().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    idx = torch.topk(flat, min(k, flat.numel())).indices
    return torch.unique(idx // hidden.shape[-1]).cpu()
