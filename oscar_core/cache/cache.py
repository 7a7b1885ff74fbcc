"""The transformers ``Cache`` classes and :func:`make_cache`.

:class:`QuantizedKVCache` holds one :class:`~oscar_core.cache.layer.PackedKVLayer` per full-attention
layer (the packed storage; :mod:`oscar_core.cache.layer`) and hands each updated layer to the registered
attention function (:mod:`oscar_core.cache.attention`); :class:`FullPrecisionCache` is transformers' own
dynamic cache for the ``fp16`` method. Both report their memory (:mod:`oscar_core.cache.memory`).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicSlidingWindowLayer

from oscar_core.cache.attention import check_packed_attention, hand_off, take_handoff
from oscar_core.cache.layer import PackedKVLayer
from oscar_core.cache.memory import (
    FULL_PRECISION,
    QUANTIZED,
    WINDOW,
    full_precision_report,
    quantized_cache_report,
)
from oscar_core.cache.policy import FULL, SLIDING
from oscar_core.methods import MethodConfigError, MethodSpec, get_method
from oscar_core.methods.base import LayerState


class QuantizedKVCache(Cache):
    """A transformers ``Cache`` of :class:`PackedKVLayer` for one method spec, under a per-layer policy.

    ``layer_types`` (``oscar_core.model.FULL``/``SLIDING`` per layer; default all full): full-attention
    layers are ``layer_cls`` (the packed layer, or the CUDA-kernel one). Sliding layers are transformers'
    own ``DynamicSlidingWindowLayer`` (bounded, full precision, the model's dtype), or with
    ``quantize_sliding=True`` reference packed layers (see :func:`make_cache`). ``layer_policy`` records
    what each layer stores (:data:`QUANTIZED` or :data:`WINDOW`).
    """

    def __init__(self, spec: MethodSpec, num_layers: int, attention_modules: dict[int, torch.nn.Module],
                 fake_quant: bool = False, head_shape: tuple[int, int] | None = None,
                 layer_states: list[dict] | None = None, layer_cls: type[PackedKVLayer] | None = None,
                 *, layer_types: list[str] | None = None, sliding_window: int | None = None,
                 quantize_sliding: bool = False, **layer_kwargs):
        shared = layer_states if layer_states is not None else [{} for _ in range(num_layers)]
        cls = layer_cls or PackedKVLayer
        kinds = list(layer_types) if layer_types is not None else [FULL] * num_layers
        if len(kinds) != num_layers:
            raise ValueError(f"layer_types has {len(kinds)} entries for {num_layers} layers")
        if SLIDING in kinds and not sliding_window:
            raise ValueError("sliding layers need sliding_window (the model's attention window)")
        layers: list[CacheLayerMixin] = []
        for i, kind in enumerate(kinds):
            if kind == SLIDING and not quantize_sliding:
                layers.append(DynamicSlidingWindowLayer(sliding_window=sliding_window))
            elif kind == SLIDING:  # the reference layer: the window lives in the mask, which the kernel ignores
                layers.append(PackedKVLayer(spec, fake_quant, LayerState(i, shared[i])))
            else:
                layers.append(cls(spec, fake_quant, LayerState(i, shared[i]), **layer_kwargs))
        super().__init__(layers=layers)
        self.spec = spec
        self.fake_quant = fake_quant
        self._attention_modules = attention_modules
        #: (KV heads, head dim) of the quantized layers, for the BF16-equivalent bytes of memory_report
        self.head_shape = head_shape
        #: per layer: its kind, and what its cache stores (provenance)
        self.layer_types = kinds
        self.layer_policy = [QUANTIZED if isinstance(layer, PackedKVLayer) else WINDOW for layer in layers]
        self.sliding_window = sliding_window
        self.quantize_sliding = quantize_sliding
        self._decode_handoffs: set[int] = set()  # layers handed to attention for a step after the prompt

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        module = self._attention_modules.get(layer_idx)
        layer = self.layers[layer_idx]
        if module is not None and isinstance(layer, PackedKVLayer):
            check_packed_attention(module, layer, layer_idx, layer_idx in self._decode_handoffs)
            # a hand-off after the prompt must be taken by attention before the next update; the prompt's
            # may be committed without attention (filling a cache through update + commit_prompt)
            if layer.total_len:
                self._decode_handoffs.add(layer_idx)
            else:
                self._decode_handoffs.discard(layer_idx)
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if module is not None:
            # Captured by the pre-hook of oscar_core.model when spec.observes_layer_input.
            hidden = module.__dict__.pop("_oscar_layer_input", None)
            if not isinstance(layer, PackedKVLayer):  # a transformers layer: plain SDPA with its own mask
                take_handoff(module)
                return keys, values
            if hidden is not None and layer.has_pending_prompt:
                layer.layer_input = hidden
            hand_off(module, layer)
        return keys, values

    def memory_report(self) -> dict[str, object]:
        """Bytes actually held, per component and per layer kind, and the equivalent BF16 cache's bytes.

        Held bytes are the tensors' real sizes (the full-precision windows in the model's dtype). The BF16
        equivalent is what transformers' default cache would hold for the same tokens at 2 bytes per
        element: every real token of a full-attention layer, the last ``W - 1`` of a sliding layer (a
        full-precision window layer: its own tensors, padding included, at 2 bytes).
        """
        return quantized_cache_report(self)


class FullPrecisionCache(DynamicCache):
    """transformers' own dynamic cache (the ``fp16`` method), plus :meth:`memory_report`.

    Sliding layers are transformers' bounded windows, as in the default cache."""

    spec = get_method("fp16")

    @property
    def layer_types(self) -> list[str]:
        return [SLIDING if getattr(layer, "is_sliding", False) else FULL for layer in self.layers]

    @property
    def layer_policy(self) -> list[str]:
        return [WINDOW if getattr(layer, "is_sliding", False) else FULL_PRECISION for layer in self.layers]

    def memory_report(self) -> dict[str, object]:
        """As :meth:`QuantizedKVCache.memory_report`: real bytes in the model's dtype, BF16 at 2 bytes."""
        return full_precision_report(self)


def make_cache(model: torch.nn.Module, method: str | MethodSpec = "oscar", fake_quant: bool = False,
               kernels: str = "auto", quantize_sliding: bool = False, **overrides):
    """Prepare ``model`` for ``method`` (once; idempotent) and return a fresh transformers Cache.

    ``fake_quant=True`` stores dequantized tensors instead of packed codes (same numerics; for
    research and checks). Overrides are method parameters, e.g. ``residual_length=64``.

    ``kernels``: ``"auto"`` stores OScaR INT2 in the CUDA decode kernel's layout and attends through
    the kernel when the model is on a GPU and the extension builds (else the reference path, with a
    one-line notice why); ``"on"`` requires that (error otherwise); ``"fallback"`` uses the kernel
    layout with the kernels' PyTorch fallbacks (any device; for checks); ``"off"`` the reference path.
    The kernels serve full-attention layers only (they apply no window mask).

    Hybrid models (sliding-window and full-attention layers, e.g. Gemma 2/3): by default the sliding
    layers keep transformers' own ``DynamicSlidingWindowLayer`` (full precision, the model's dtype, the
    last ``W - 1`` tokens: memory bounded) and only the full-attention layers are quantized.
    ``quantize_sliding=True`` quantizes the sliding layers too, with the reference packed layer: it
    keeps *every* token (quantized, never evicted), and transformers' sliding mask, applied by SDPA over
    that whole timeline, restricts attention to the window. Memory then grows with the context like a
    full layer (at long contexts more than the bounded BF16 window); it measures the quantization error
    of the sliding layers. ``cache.layer_policy`` records what each layer stores. A model whose layers
    all slide needs ``quantize_sliding=True`` (else nothing would be quantized).
    """
    from oscar_core.model import inspect_model, prepare_model

    if kernels not in ("auto", "on", "off", "fallback"):
        raise ValueError(f"kernels must be 'auto', 'on', 'off' or 'fallback', got {kernels!r}")
    spec = get_method(method, **overrides)
    shape = inspect_model(model)  # model-dependent defaults (RotateKV's head group) made concrete: cache.spec
    spec = spec.resolve_for_model(shape.num_kv_heads, shape.head_dim)
    info = prepare_model(model, spec)
    if not spec.quantizes:
        return FullPrecisionCache(config=info.text_config)
    if FULL not in info.layer_types and not quantize_sliding:
        raise MethodConfigError(
            f"{spec.name}: every layer of {type(model).__name__} uses sliding-window attention, whose windows stay "
            "in full precision by default; pass quantize_sliding=True to quantize them"
        )
    layer_cls, layer_kwargs = None, {}
    if kernels != "off" and not fake_quant:
        from oscar_core.kernel_cache import kernel_layer_for

        # A model split over devices (device_map): the kernel layout when any attention layer is on a GPU;
        # each layer lives on its key_states' device and runs the kernel there (a CPU layer falls back).
        devices = [p.device for m in info.attention_modules.values() for p in m.parameters(recurse=True)]
        device = next((d for d in devices if d.type == "cuda"), next(model.parameters()).device)
        layer_cls, layer_kwargs = kernel_layer_for(spec, info.head_dim, device, kernels)
    return QuantizedKVCache(spec, info.num_layers, info.attention_modules, fake_quant,
                            (info.num_kv_heads, info.head_dim), spec.init_layer_states(model, info),
                            layer_cls, layer_types=info.layer_types, sliding_window=info.sliding_window,
                            quantize_sliding=quantize_sliding, **layer_kwargs)


def prepare_model(model: torch.nn.Module, method: str | MethodSpec = "oscar", **overrides):
    """See :func:`oscar_core.model.prepare_model`."""
    from oscar_core.model import prepare_model as _prepare

    return _prepare(model, get_method(method, **overrides))


__all__ = ["FullPrecisionCache", "QuantizedKVCache", "make_cache", "prepare_model"]
