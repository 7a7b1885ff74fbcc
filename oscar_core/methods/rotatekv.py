"""RotateKV (Su et al., IJCAI 2025): outlier-aware pre-RoPE grouped-head key rotation, sink-aware.

1. **Calibration** (offline, :func:`oscar_core.calibration.calibrate_rotatekv`, from a text file the
   user gives): the grouped-head Hadamard is applied to each layer's pre-RoPE keys, each of the
   layer's ``H*D`` rotated channels is summed (signed) over the calibration tokens, and the channels
   are sorted ascending: one permutation per layer (as the official ``k_reordering_calibration.py``).
   Stored with the model's fingerprint and reused; ``calibration="identity"`` runs without one.
2. **Keys**: the cache receives post-RoPE keys; RoPE (an orthogonal map per position, times the
   model's ``attention_scaling``) is undone exactly for the token's position within its sequence
   (= ``generate``'s position id with left padding), the key of ``head_group`` consecutive KV heads
   (4 in the paper: ``4*D`` channels) is multiplied by the normalized Hadamard of that size, the
   layer's ``H*D`` channels are permuted, and the result is quantized. At attention time: dequantize,
   un-permute, inverse Hadamard, re-apply RoPE for the position. Queries are untouched (the attention basis is the model's).
3. **Values/outputs**: per-head Hadamard fused into ``v_proj``/``o_proj`` (as OScaR step 2).
4. **Attention sinks**: at prefill, per layer and sequence, the tokens holding the 20 largest ``|x|``
   of the decoder layer's *input* hidden states (the residual stream, "massive activations") keep
   their K and V in full precision (cache overrides).
5. Per-token quantization, ``G = 128`` consecutive channels of the token's (permuted) ``H*D`` vector,
   integer zero point, clip ratio 0.8, ``b = 2`` (one head per group when ``D = 128``, as the original's
   ``[.., head_dim=128]`` groups); values likewise over the rotated ``H*D`` vector.

Defaults adapt to the model (:meth:`RotateKVSpec.resolve_for_model`; ``make_cache`` records the
resolved values in ``cache.spec``): ``head_group`` is the largest of 4, 2, 1 that divides the KV heads
(the Hadamard here needs a power-of-two width ``head_group*D``, so 3 KV heads get 1, not 3);
``group_size`` is ``min(128, D)``: the official quantizer groups along each head's ``D`` channels
(``k_groupsize`` must divide ``head_dim``) and uses 128, one group per head at ``D = 128``, so a group
never spans heads; at ``D = 64`` that costs 2.5 instead of 2.25 bits/element. Explicit values are kept
and checked, and an unusable one is an error that lists the values that work on the model.

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
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from oscar_core import calibration_store as store
from oscar_core.decoder import text_decoder
from oscar_core.hadamard import check_hadamard_size, hadamard_transform, is_power_of_two
from oscar_core.methods.base import (
    KEEP_FULL,
    Block,
    BlockContext,
    LayerState,
    MethodConfigError,
    MethodSpec,
    check_clip_ratio,
    contextual,
)
from oscar_core.quant import PackedGroups, dequantize, ldexp_saturating, pow2_shift, quantize, saturate

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


def rope_per_layer(model: torch.nn.Module, num_layers: int, head_dim: int) -> list[tuple[torch.Tensor, float]]:
    """Each decoder layer's RoPE ``(inv_freq, attention_scaling)``; a clear error if unsupported.

    Most models have one rotary embedding (``rotary_emb.inv_freq``). Models with one RoPE per layer type
    (Gemma 3: ``rope_parameters[layer_type]`` and ``rotary_emb.<layer_type>_inv_freq``, e.g. another
    base for the sliding layers) get the RoPE of each layer's ``config.layer_types[i]``.
    """
    decoder = text_decoder(model)
    config = decoder.config
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    layer_types = list(getattr(config, "layer_types", None) or [])
    per_type = bool(layer_types) and all(isinstance(params.get(t), dict) for t in set(layer_types))
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is None:
        raise MethodConfigError(f"rotatekv: no rotary embedding (rotary_emb) found in {type(decoder).__name__}")

    def check(p: dict) -> None:
        if "mrope_section" in p or getattr(config, "mrope_section", None):
            raise MethodConfigError(
                f"rotatekv: {type(model).__name__} uses multimodal RoPE (M-RoPE, 3-D positions); undoing RoPE "
                "per token position is not supported for it. Use another method for this model."
            )
        rope_type = p.get("rope_type", p.get("type", "default"))
        if rope_type in _UNSUPPORTED_ROPE:
            raise MethodConfigError(f"rotatekv: RoPE type {rope_type!r} depends on the sequence length; not supported")

    out = []
    for i in range(num_layers):
        prefix = f"{layer_types[i]}_" if per_type else ""
        check(params[layer_types[i]] if per_type else params)
        inv_freq = getattr(rotary, f"{prefix}inv_freq", None)
        if inv_freq is None:
            raise MethodConfigError(f"rotatekv: no rotary embedding (rotary_emb.{prefix}inv_freq) found in "
                                    f"{type(decoder).__name__}")
        inv_freq = inv_freq.detach().float().cpu()
        if 2 * inv_freq.numel() != head_dim:
            raise MethodConfigError(
                f"rotatekv: partial rotary embeddings ({2 * inv_freq.numel()} of {head_dim} channels) are not supported"
            )
        out.append((inv_freq, float(getattr(rotary, f"{prefix}attention_scaling", 1.0))))
    return out


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


# -- model-dependent defaults ----------------------------------------------------------------
MAX_HEAD_GROUP = 4  # the paper's and the official code's head_group_num
PAPER_GROUP_SIZE = 128  # the official k_groupsize / v_groupsize


def head_groups_for(num_kv_heads: int, head_dim: int) -> list[int]:
    """Head groups the grouped Hadamard can use: divisors of the KV heads whose width
    ``head_group*head_dim`` is a power of two (what :func:`oscar_core.hadamard.hadamard_transform` does)."""
    return [g for g in range(1, num_kv_heads + 1) if num_kv_heads % g == 0 and is_power_of_two(g * head_dim)]


def default_head_group(num_kv_heads: int, head_dim: int) -> int:
    """The largest usable head group up to :data:`MAX_HEAD_GROUP` (1 when none is: check_model says why)."""
    return max([g for g in head_groups_for(num_kv_heads, head_dim) if g <= MAX_HEAD_GROUP], default=1)


def default_group_size(head_dim: int) -> int:
    """The largest divisor of ``head_dim`` up to 128: groups stay within one head's channels, as the
    official quantizer's (it groups each head's ``head_dim`` channels), and are 128 wide where they fit."""
    return max(g for g in range(1, min(PAPER_GROUP_SIZE, head_dim) + 1) if head_dim % g == 0)


# -- the stored calibration (oscar_core.calibration_store) --------------------------------------
def _calibrate_hint(spec: Any, info: Any) -> str:
    flag = "" if spec.head_group == default_head_group(info.num_kv_heads, info.head_dim) else \
        f" --set head_group={spec.head_group}"
    return f"`oscar-eval calibrate rotatekv --model PATH --text FILE{flag}`"


def permutations_for(spec: Any, model: torch.nn.Module, info: Any) -> list[torch.Tensor]:
    """Per-layer permutations ``[H*D]`` for ``spec.calibration`` on ``model`` (clear errors otherwise)."""
    spec = spec.resolve_for_model(info.num_kv_heads, info.head_dim)
    hd = info.num_kv_heads * info.head_dim
    if spec.calibration == "identity":
        return [torch.arange(hd) for _ in range(info.num_layers)]
    fp = store.model_fingerprint(model)
    if spec.calibration is None:
        path = store.calibration_path(fp, head_group=spec.head_group)
        if not path.is_file():
            others = store.stored_head_groups(fp, path.parent)
            if others:
                listed = ", ".join(f"head_group={g} ({p})" for g, p in others.items())
                raise MethodConfigError(
                    f"rotatekv: this model's calibration for head_group={spec.head_group} (the value this cache "
                    f"uses) is not at {path}; found {listed}. A permutation is only valid for the head group it "
                    f"was computed with: run with that head_group, or calibrate with {_calibrate_hint(spec, info)}"
                )
            raise MethodConfigError(
                f"rotatekv needs a calibration for this model (fingerprint {fp[:12]}, head_group={spec.head_group}), "
                f"none found at {path}. Create one with {_calibrate_hint(spec, info)} (a text file of your choice, "
                "never evaluation data), pass calibration=PATH, or calibration='identity' to run without reordering"
            )
    else:
        path = Path(spec.calibration)
    data = store.load_calibration(path)
    if data.get("model_fingerprint") != fp:
        raise MethodConfigError(
            f"rotatekv: calibration {path} belongs to another model (fingerprint "
            f"{str(data.get('model_fingerprint'))[:12]}, this model is {fp[:12]}); recalibrate for this model"
        )
    if int(data["head_group"]) != spec.head_group:
        raise MethodConfigError(
            f"rotatekv: calibration {path} was computed with head_group={data['head_group']}, this cache uses "
            f"head_group={spec.head_group}; run with head_group={data['head_group']} or calibrate with "
            f"{_calibrate_hint(spec, info)}"
        )
    perms = data["permutations"]
    if tuple(perms.shape) != (info.num_layers, hd):
        raise MethodConfigError(
            f"rotatekv: calibration {path} has permutations of shape {tuple(perms.shape)}, expected "
            f"({info.num_layers}, {hd}) for this model"
        )
    return [perms[i].long() for i in range(info.num_layers)]


@dataclass(frozen=True)
class RotateKVSpec(MethodSpec):
    name: ClassVar[str] = "rotatekv"
    description: ClassVar[str] = "RotateKV: calibrated pre-RoPE grouped-head Hadamard + reorder, sink-aware"
    uses_context: ClassVar[bool] = True
    observes_layer_input: ClassVar[bool] = True
    rotates_values: ClassVar[bool] = True
    key_axis: ClassVar[Literal["token", "channel"]] = "channel"
    value_axis: ClassVar[Literal["token", "channel"]] = "channel"

    #: None: chosen for the model (:func:`default_group_size`: ``min(128, head_dim)``)
    group_size: int | None = None
    clip_ratio: float = 0.8
    #: KV heads per grouped Hadamard (the rotation is head_group * head_dim wide); None: chosen for the
    #: model (:func:`default_head_group`: the largest of 4, 2, 1 that divides the KV heads)
    head_group: int | None = None
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
        check_clip_ratio(self.name, self.clip_ratio)
        if (self.head_group is not None and self.head_group < 1) or self.sink_tokens < 0:
            raise MethodConfigError("rotatekv: head_group must be >= 1 and sink_tokens >= 0")

    def resolve_for_model(self, num_kv_heads: int, head_dim: int) -> RotateKVSpec:
        """``head_group`` / ``group_size`` left as None get the model's defaults; explicit ones are kept."""
        hg, gs = self._resolved(num_kv_heads, head_dim)
        if (hg, gs) == (self.head_group, self.group_size):
            return self
        return self.replace(head_group=hg, group_size=gs)

    def _resolved(self, num_kv_heads: int, head_dim: int) -> tuple[int, int]:
        hg = self.head_group if self.head_group is not None else default_head_group(num_kv_heads, head_dim)
        return hg, self.group_size if self.group_size is not None else default_group_size(head_dim)

    def check_model(self, num_kv_heads: int, head_dim: int) -> None:
        try:
            check_hadamard_size(head_dim, "head_dim")
        except ValueError as exc:
            raise MethodConfigError(f"rotatekv: {exc}") from None
        hg, gs = self._resolved(num_kv_heads, head_dim)
        usable = head_groups_for(num_kv_heads, head_dim)
        if hg not in usable:
            raise MethodConfigError(
                f"rotatekv: head_group={hg} does not fit {num_kv_heads} KV heads of head_dim {head_dim} (it must "
                f"divide the KV heads and head_group*head_dim must be a power of two); works here: head_group="
                f"{', '.join(map(str, usable))} (default for this model: {default_head_group(num_kv_heads, head_dim)})"
            )
        hd = num_kv_heads * head_dim
        if hd % gs:
            works = [g for g in range(8, hd + 1) if hd % g == 0]
            raise MethodConfigError(
                f"rotatekv: group_size={gs} does not divide num_kv_heads*head_dim ({hd}); works here: group_size="
                f"{', '.join(map(str, works))} (default for this model: {default_group_size(head_dim)})"
            )

    # -- state ---------------------------------------------------------------------------------
    def init_layer_states(self, model: torch.nn.Module, info: Any) -> list[dict[str, Any]]:
        ropes = rope_per_layer(model, info.num_layers, info.head_dim)
        perms = permutations_for(self, model, info)
        return [{"inv_freq": ropes[i][0], "rope_scaling": ropes[i][1], "perm": perms[i]} for i in range(info.num_layers)]

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
    def _quant(self, x: torch.Tensor, head_dim: int) -> Block:
        if self.no_quant:
            return {"raw": x.float()}
        gq = quantize(x, self.bits, self.group_for("channel", head_dim), "channel", "integer", self.clip_ratio)
        p = PackedGroups.from_quant(gq)
        return {"codes": p.packed, "scale": p.scale, "zero": p.zero}

    def _encode_block(self, x: torch.Tensor, head_dim: int, ctx: BlockContext) -> Block:
        """``x`` ``[N, T, H*D]`` quantized, its sink tokens marked to be kept in full precision."""
        block = self._quant(x, head_dim)
        keep = self._keep(ctx, x.shape[1])
        if keep is not None:
            block[KEEP_FULL] = keep
        return block

    def _dequant(self, block: Block) -> torch.Tensor:
        if "raw" in block:
            return block["raw"].float()
        p = PackedGroups(block["codes"], block["scale"], block["zero"], self.bits, "integer")
        return dequantize(p.unpack(), "channel", torch.float32)

    @contextual
    def encode_keys(self, k: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        n, h, t, d = k.shape
        perm, inv_freq, scaling = self._layer(ctx, h, d)
        cos, sin = rope_tables(inv_freq, ctx.positions(t, k.device), scaling)
        # tokens near fp32's limit (|x| >= 2^124) are scaled by a power of two through RoPE and back
        # (exact; the grouped Hadamard guards its own range): finite keys never overflow to inf
        shift = pow2_shift(k.float().abs().amax(dim=(1, 3)), 125)  # [N, T]; 0 for ordinary tokens
        pre = undo_rope(torch.ldexp(k.float(), -shift[:, None, :, None]), cos, sin)
        x = ldexp_saturating(grouped_hadamard(pre, self._resolved(h, d)[0]), shift[:, :, None])
        x = x[..., perm.to(k.device)]  # [N, T, H*D]
        return self._encode_block(x, d, ctx)

    @contextual
    def decode_keys(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        x = self._dequant(block)  # [N, T, H*D]
        n, t, hd = x.shape
        perm = ctx.state.shared.get("perm")
        if perm is None:
            raise MethodConfigError("rotatekv: decode before encode in a standalone context")
        heads = hd // (2 * ctx.state.shared["inv_freq"].numel())
        x = x[..., torch.argsort(perm).to(x.device)]
        pre = grouped_hadamard_inverse(x, heads, self._resolved(heads, hd // heads)[0])
        cos, sin = rope_tables(ctx.state.shared["inv_freq"], ctx.positions(t, x.device), ctx.state.shared["rope_scaling"])
        return saturate(apply_rope(pre, cos, sin), dtype)

    @contextual
    def encode_values(self, v: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        n, h, t, d = v.shape
        self._layer(ctx, h, d)
        return self._encode_block(v.float().transpose(1, 2).reshape(n, t, h * d), d, ctx)

    @contextual
    def decode_values(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        x = self._dequant(block)
        n, t, hd = x.shape
        if "inv_freq" not in ctx.state.shared:
            raise MethodConfigError("rotatekv: decode before encode in a standalone context")
        d = 2 * ctx.state.shared["inv_freq"].numel()
        return saturate(x.reshape(n, t, hd // d, d).transpose(1, 2), dtype)

    # -- accounting ----------------------------------------------------------------------------
    def group_for(self, axis: str, head_dim: int) -> int:
        return self.group_size if self.group_size is not None else default_group_size(head_dim)

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
