"""One-time model preparation for a method: find the text decoder, fuse V/O rotations, select attention.

Supported: decoder-only and multimodal transformers models whose text decoder layers have
``self_attn`` modules with ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and a ``layer_idx`` (Llama-3.x,
Qwen3, Qwen3-VL, LLaVA-NeXT, the Qwen3-Omni thinker, Gemma 3, ...). Anything else is a clear error here,
never a silent wrong answer later.

Layer kinds. Each layer is ``"full_attention"`` or ``"sliding_attention"``, exactly as transformers' own
``DynamicCache(config=...)`` decides (``config.layer_types``, or every layer when only
``config.sliding_window`` is set): a layer for which it builds a ``DynamicSlidingWindowLayer`` is a
sliding layer. Other kinds (chunked, linear, shared-KV layers) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from oscar_core.cache.attention import ATTN_NAME, register
from oscar_core.cache.policy import FULL, SLIDING, held_tokens
from oscar_core.decoder import text_decoder
from oscar_core.hadamard import hadamard_matrix
from oscar_core.methods.base import MethodConfigError, MethodSpec


@dataclass
class ModelInfo:
    text_config: object
    num_layers: int
    num_kv_heads: int
    head_dim: int
    attention_modules: dict[int, torch.nn.Module]
    #: per layer: :data:`FULL` or :data:`SLIDING` (see the module docstring)
    layer_types: list[str] = field(default_factory=list)
    #: tokens a sliding layer attends (the mask's window); None when no layer slides
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if not self.layer_types:
            self.layer_types = [FULL] * self.num_layers

    @property
    def sliding_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == SLIDING]


def _attention_modules(decoder: torch.nn.Module) -> dict[int, torch.nn.Module]:
    found: dict[int, torch.nn.Module] = {}
    for module in decoder.modules():
        if all(hasattr(module, a) for a in ("layer_idx", "q_proj", "k_proj", "v_proj", "o_proj")):
            found[module.layer_idx] = module
    return found


def inspect_model(model: torch.nn.Module) -> ModelInfo:
    decoder = text_decoder(model)
    config = getattr(decoder, "config", None)
    modules = _attention_modules(decoder)
    if config is None or not modules:
        raise MethodConfigError(
            f"unsupported model {type(model).__name__}: no decoder attention layers with q/k/v/o projections found"
        )
    num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer_types, window = _layer_kinds(model, config)
    return ModelInfo(config, config.num_hidden_layers, num_kv_heads, head_dim, modules, layer_types, window)


def _layer_kinds(model: torch.nn.Module, config) -> tuple[list[str], int | None]:
    """Per-layer kinds and the sliding window, as transformers' default cache builds its layers."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    layers = DynamicCache(config=config).layers
    name = type(model).__name__
    if not layers:  # no layer structure in the config: all full attention
        return [FULL] * config.num_hidden_layers, None
    if len(layers) != config.num_hidden_layers:
        raise MethodConfigError(
            f"{name}: the default cache has {len(layers)} layers for {config.num_hidden_layers} decoder layers "
            "(shared-KV layers are not supported)"
        )
    declared = getattr(config, "layer_types", None)
    kinds, windows = [], set()
    for i, layer in enumerate(layers):
        declared_i = declared[i] if declared else None
        if isinstance(layer, DynamicSlidingWindowLayer) and declared_i in (None, SLIDING) and getattr(
                config, "attention_chunk_size", None) is None:
            kinds.append(SLIDING)
            windows.add(int(layer.sliding_window))
        elif type(layer) is DynamicLayer:
            kinds.append(FULL)
        else:
            raise MethodConfigError(
                f"{name}: layer {i} is a {declared_i or type(layer).__name__} layer; only full-attention and "
                "sliding-window layers are supported"
            )
    if len(windows) > 1:
        raise MethodConfigError(f"{name}: sliding layers with different windows {sorted(windows)} are not supported")
    return kinds, (windows.pop() if windows else None)


def bits_per_element_for_model(spec: MethodSpec | str, model: ModelInfo | torch.nn.Module, seq_len: int,
                               quantize_sliding: bool = False) -> float:
    """Storage bits per cached K/V element of the whole model at ``seq_len`` tokens, under the per-layer
    policy of :func:`oscar_core.make_cache` (``model``: the model or its :class:`ModelInfo`).

    Full-attention layers hold ``seq_len`` tokens at ``spec.bits_per_element`` (window and metadata
    included). Sliding layers hold, by default, transformers' full-precision window: ``min(seq_len, W-1)``
    tokens at 16 bits; with ``quantize_sliding=True`` every token, quantized like a full layer. The result
    is the bits held over the elements held, summed over layers (all layers share KV heads and head dim),
    so a model without sliding layers gets exactly ``spec.bits_per_element``. It is not a compression
    ratio: a quantized sliding layer holds more elements than the window it attends.
    """
    from oscar_core.methods import get_method

    info = model if isinstance(model, ModelInfo) else inspect_model(model)
    spec = get_method(spec).resolve_for_model(info.num_kv_heads, info.head_dim)
    if seq_len <= 0:
        raise MethodConfigError(f"{spec.name}: bits_per_element needs seq_len > 0, got {seq_len}")
    quantized = spec.bits_per_element(seq_len, info.num_kv_heads, info.head_dim)
    bits = tokens = 0.0
    for kind in info.layer_types:
        n = held_tokens(kind, seq_len, info.sliding_window, quantize_sliding)
        in_window = kind == SLIDING and not quantize_sliding
        bits += n * (16.0 if in_window or not spec.quantizes else quantized)
        tokens += n
    return bits / tokens


@torch.no_grad()
def _rotate_vo(module: torch.nn.Module, head_dim: int) -> None:
    """Toggle the per-head Hadamard in v_proj rows (and bias) and o_proj columns (self-inverse)."""
    v, o = module.v_proj, module.o_proj
    h = hadamard_matrix(head_dim, device=v.weight.device)
    w = v.weight.float()
    rows = w.shape[0]
    v.weight.copy_((h @ w.reshape(rows // head_dim, head_dim, -1)).reshape(rows, -1).to(v.weight.dtype))
    if v.bias is not None:
        b = v.bias.float().reshape(-1, head_dim) @ h.T
        v.bias.copy_(b.reshape(-1).to(v.bias.dtype))
    wo = o.weight.float()
    cols = wo.shape[1]
    wo = (wo.reshape(wo.shape[0], cols // head_dim, head_dim) @ h).reshape(wo.shape[0], cols)
    o.weight.copy_(wo.to(o.weight.dtype))


def _capture_layer_input(layer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of a decoder layer: hand its input hidden states to its attention module."""
    attn = layer.self_attn
    if getattr(attn, "_oscar_capture_input", False):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is not None:
            attn._oscar_layer_input = hidden  # popped by QuantizedKVCache.update


def _install_input_capture(decoder: torch.nn.Module, modules: dict[int, torch.nn.Module], on: bool) -> None:
    """Enable/disable capturing each decoder layer's input (``spec.observes_layer_input``); the hook is
    registered once per layer and is inert while disabled."""
    attn_ids = {id(m) for m in modules.values()}
    found = 0
    for layer in decoder.modules():
        attn = getattr(layer, "self_attn", None)
        if attn is None or id(attn) not in attn_ids:
            continue
        found += 1
        if on and not getattr(layer, "_oscar_input_hook", False):
            layer.register_forward_pre_hook(_capture_layer_input, with_kwargs=True)
            layer._oscar_input_hook = True
        attn._oscar_capture_input = on
        attn.__dict__.pop("_oscar_layer_input", None)
    if on and found != len(modules):
        raise MethodConfigError(
            f"cannot find the decoder layer (a module with `self_attn`) of {len(modules) - found} attention "
            "modules, whose input hidden states this method needs"
        )


def prepare_model(model: torch.nn.Module, spec: MethodSpec) -> ModelInfo:
    """Make ``model`` ready for ``spec``; idempotent, and reversible by preparing for another method.

    * V/O rotation: fused when the method rotates values, un-fused (the Hadamard is its own inverse)
      when a later method does not. Each toggle rounds the weights once to their dtype.
    * Layer inputs: methods with ``observes_layer_input`` get each decoder layer's input hidden states
      at prefill (a forward pre-hook; disabled again when preparing for another method).
    * Attention: packed-KV methods use :data:`oscar_core.cache.attention.ATTN_NAME` (SDPA semantics);
      ``fp16`` restores the model's original implementation.
    """
    info = inspect_model(model)
    spec.check_model(info.num_kv_heads, info.head_dim)
    want_rotated = bool(spec.rotates_values)
    for module in info.attention_modules.values():
        if getattr(module, "_oscar_vo_rotated", False) != want_rotated:
            _rotate_vo(module, info.head_dim)
            module._oscar_vo_rotated = want_rotated
    if spec.observes_layer_input or any(getattr(m, "_oscar_capture_input", False)
                                        for m in info.attention_modules.values()):
        _install_input_capture(text_decoder(model), info.attention_modules, bool(spec.observes_layer_input))
    config = info.text_config
    if not hasattr(config, "_oscar_original_attn"):
        config._oscar_original_attn = config._attn_implementation
    if spec.quantizes:
        register()
        config._attn_implementation = ATTN_NAME
    else:
        config._attn_implementation = config._oscar_original_attn
    return info
