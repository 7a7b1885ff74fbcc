"""End to end: one full-model decode step (all layers, LM head) at a given batch and context.

Arms (``plan.E2E_IMPLS``):

* ``bf16-static-graph``: the strong BF16 baseline, transformers ``StaticCache`` (preallocated, sized
  to the context plus a small margin) with one decode step captured in a CUDA graph and replayed.
  Attention is FlashDecoding-class: PyTorch's flash SDPA over the valid prefix of the static cache,
  the GQA group folded into the query rows (registered as :data:`ATTN_FLASHDECODE`).
* ``bf16-dynamic-eager``: the paper's style of baseline, transformers ``DynamicCache`` (``torch.cat``
  every step), eager launches, the same flash attention (the paper used flash-attn's
  ``flash_attn_with_kvcache``; PyTorch's default cuDNN backend would re-plan at every new length).
* ``oscar-cache``: ``oscar_core.make_cache(model, "oscar")``, eager unless the cache declares itself
  graph-capturable (the row's ``graph`` / ``graph_error`` say which).
* ``oscar-kernel-static``: the profiler's own static packed cache in :mod:`oscar_core.kernels`'
  layout (packed blocks + a device-side residual window), attention by
  ``oscar_core.kernels.decode_attention``, one step captured in a CUDA graph: what a decode step
  costs once the cache runs on the kernel. The V/O rotation is not fused (random weights; timing is
  unaffected); the block flush (one pack every R = 128 steps) is not part of the timed step.
* ``kivi-kernel-static``: the same static packed cache in KIVI's format (float minimum, no token
  norm, no rotation; values flushed in blocks with the keys), read by the same decode kernel.
* ``kivi-cache``: ``oscar_core.make_cache(model, "kivi")``, the reference path (the cache dequantizes
  its packed blocks every step; there is no KIVI kernel path in the cache).

Models are built from a named architecture (random weights: timing and memory do not depend on the
values) or loaded from a local path. The caches are filled through the public ``Cache.update`` with
random post-RoPE keys and values of ``context`` tokens per layer, which is what a prefill stores; a
prefill's compute is not part of a decode step.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch

from oscar_core.compat import forward_cache_kwarg
from oscar_eval.speed import plan as pl
from oscar_eval.speed import roofline as rf
from oscar_eval.speed.timing import Timing, time_fn

#: Extra static-cache slots: graph replays of a transformers 5.2x StaticLayer advance its write
#: position, so the cache has room for every replay (the extra slots are masked out).
STATIC_MARGIN = 64
MAX_STATIC_REPS = 40


ATTN_FLASHDECODE = "oscar_eval_flashdecode"
ATTN_KERNEL = "oscar_eval_packed_kernel"
#: Valid prefix of a static cache for :data:`ATTN_FLASHDECODE` (None: the whole K/V given).
_STATE: dict[str, Any] = {"kv_len": None, "kernel_cache": None}


def _flashdecode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Decode (one query token): flash SDPA over the valid prefix, GQA folded; else plain SDPA."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    n = _STATE["kv_len"]
    if n is not None:
        key, value = key[:, :, :n], value[:, :, :n]
    b, hq, _, d = query.shape
    hkv = key.shape[1]
    q = query.reshape(b, hkv, hq // hkv, d)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(q, key, value, scale=scaling)
    return out.reshape(b, 1, hq, d).contiguous(), None


def _kernel_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Decode attention by oscar_core.kernels.decode_attention on the profiler's packed cache."""
    cache = _STATE["kernel_cache"]
    if cache is None or query.shape[2] != 1:
        raise RuntimeError("the packed-kernel attention serves decode steps of a KernelStaticCache only")
    b, hq, _, d = query.shape
    out = cache.layers[module.layer_idx].packed_attend(query, scaling)
    return out.reshape(b, 1, hq, d), None


def _register_attention() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTN_FLASHDECODE, _flashdecode_attention)
    AttentionMaskInterface.register(ATTN_FLASHDECODE, sdpa_mask)
    AttentionInterface.register(ATTN_KERNEL, _kernel_attention)
    AttentionMaskInterface.register(ATTN_KERNEL, sdpa_mask)


def _set_attention(model, name: str) -> None:
    _register_attention()
    model.config.get_text_config(decoder=True)._attn_implementation = name


def _kernel_static_cache(batch: int, context: int, s: pl.Shape, device, method: str = "oscar"):
    """A transformers Cache whose layers are oscar_core.kernels packed buffers (random contents) in
    ``method``'s format (oscar or kivi)."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    from oscar_core import kernels as kx
    from oscar_eval.speed.packed_kernel import PackedLayer

    # OScaR's window keys are stored rotated: kernels.append_window rotates and writes the new token in
    # one launch per layer (KIVI's are written as they are).
    rotate = method == "oscar"

    class _Layer(CacheLayerMixin):
        is_compileable = True
        is_sliding = False

        def __init__(self) -> None:
            super().__init__()
            self.packed = PackedLayer(batch, context, s.num_kv_heads, s.head_dim, device, method=method)
            # The decode state counts this step's token in the window: it is written at rlens - 1.
            self.slot = (self.packed.rlens - 1).clamp(min=0).to(torch.int32)
            self.is_initialized = True
            self.max_cache_len = context + 1
            self.max_batch_size = batch
            self.device = torch.device(device)

        def lazy_initialization(self, key_states, value_states) -> None:
            return None

        def update(self, key_states, value_states, *args, **kwargs):
            p = self.packed
            kx.append_window(key_states[:, :, 0].to(p.res_k.dtype), value_states[:, :, 0].to(p.res_v.dtype),
                             p.res_k, p.res_v, self.slot, rotate=rotate)
            return key_states, value_states

        def packed_attend(self, query, scaling):
            return self.packed.attend(query[:, :, 0], softmax_scale=scaling)

        def get_seq_length(self) -> int:
            return context

        def get_mask_sizes(self, query_length) -> tuple[int, int]:
            # transformers 5.2x passes the query length, 5.1x the cache positions
            q = query_length.shape[0] if isinstance(query_length, torch.Tensor) else int(query_length)
            return context + q, 0

        def get_max_length(self) -> int:
            return context + 1

        def get_max_cache_shape(self) -> int:
            return context + 1

    class KernelStaticCache(Cache):
        def __init__(self) -> None:
            super().__init__(layers=[_Layer() for _ in range(s.num_layers)])

        def memory_report(self) -> dict[str, Any]:
            return {"bytes": sum(layer.packed.nbytes() for layer in self.layers)}

    return KernelStaticCache()


@dataclass
class ModelHandle:
    model: Any
    arch: str
    shape: pl.Shape
    weight_bytes: int  # all parameters
    weight_read_bytes: int  # what one decode step must read (the embedding table only as LM head)
    source: str
    accepts_cache_position: bool


def build_model(arch: str, layers: int | None = None, device: str = "cuda") -> ModelHandle:
    """A model from a named architecture (random weights) or a local model path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from oscar_eval import archs

    dtype = torch.bfloat16
    if os.path.isdir(arch):
        config = AutoConfig.from_pretrained(arch)
        if layers:
            config.num_hidden_layers = min(layers, config.num_hidden_layers)
        model = AutoModelForCausalLM.from_pretrained(arch, config=config, dtype=dtype, device_map=device,
                                                     attn_implementation="sdpa")
        label, source = os.path.basename(os.path.normpath(arch)), f"local path {arch}"
    else:
        config = archs.build_config(arch, layers)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        label, source = archs.canonical(arch), "named architecture config, random weights"
    model.eval().requires_grad_(False)
    cfg = model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    params = {id(p): p for p in model.parameters()}
    weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
    embed = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embed
    read = weight_bytes - (0 if tied else embed.numel() * embed.element_size())
    shape = pl.Shape(cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, cfg.num_hidden_layers,
                     weight_bytes, cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size)
    accepts = "cache_position" in inspect.signature(model.forward).parameters
    return ModelHandle(model, label, shape, weight_bytes, read, source, accepts)


def _rand_kv(batch: int, context: int, s: pl.Shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch, s.num_kv_heads, context, s.head_dim)
    return (torch.randn(shape, device=device, dtype=torch.bfloat16),
            torch.randn(shape, device=device, dtype=torch.bfloat16))


def _fill(cache, batch: int, context: int, s: pl.Shape, device) -> None:
    """Store ``context`` random tokens per layer through the public ``Cache.update``."""
    pos = torch.arange(context, device=device)
    for layer_idx in range(s.num_layers):
        k, v = _rand_kv(batch, context, s, device)
        cache.update(k, v, layer_idx, {"cache_position": pos})
        layer = cache.layers[layer_idx] if hasattr(cache, "layers") else None
        # A packed cache holds the prompt until attention tells it the padding; commit it now
        # (no padding) so that only the quantized form stays, one layer at a time.
        if layer is not None and getattr(layer, "has_pending_prompt", False) and hasattr(layer, "commit_prompt"):
            layer.commit_prompt([0] * batch)
        del k, v
    torch.cuda.empty_cache()


def _cache_bytes(cache) -> int:
    report = getattr(cache, "memory_report", None)
    if callable(report):
        try:
            return int(report()["bytes"])
        except Exception:
            pass
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _step_kwargs(h: ModelHandle, cache, batch: int, context: int, device) -> dict[str, Any]:
    ids = torch.randint(0, h.shape.vocab_size, (batch, 1), device=device)
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "position_ids": torch.full((batch, 1), context, device=device, dtype=torch.long),
        forward_cache_kwarg(h.model): cache,  # the name this transformers expects (oscar_core.compat)
        "use_cache": True,
    }
    if h.accepts_cache_position:
        kwargs["cache_position"] = torch.tensor([context], device=device)
    return kwargs


def _graph_capable(cache) -> tuple[bool, str | None]:
    flag = getattr(cache, "supports_cuda_graph", None)
    if flag is not None:
        return bool(flag), None if flag else "cache.supports_cuda_graph is False"
    layers = getattr(cache, "layers", [])
    if layers and all(getattr(layer, "is_compileable", False) for layer in layers):
        return True, None
    kind = type(layers[0]).__name__ if layers else type(cache).__name__
    return False, f"cache not graph-capturable ({kind}.is_compileable is False): eager launches"


@torch.no_grad()
def run_point(h: ModelHandle, impl: str, batch: int, context: int, device: str = "cuda",
              min_reps: int = 20, target_ms: float = 300.0, cache_kernels: str | None = None
              ) -> tuple[Timing, dict[str, Any]]:
    """Time one decode step of ``impl``; returns the timing and extra row fields."""
    from transformers import DynamicCache, StaticCache

    model = h.model
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    extra: dict[str, Any] = {}
    if impl == "bf16-static-graph":
        _restore_bf16(model)
        _set_attention(model, ATTN_FLASHDECODE)
        _STATE["kv_len"] = context + 1
        cache = StaticCache(config=model.config, max_cache_len=context + STATIC_MARGIN)
        _fill(cache, batch, context, h.shape, device)
        use_graph, why = True, None
        max_reps = MAX_STATIC_REPS
        extra["attention"] = "flash SDPA over the valid prefix (context + 1), GQA folded"
    elif impl == "bf16-dynamic-eager":
        _restore_bf16(model)
        _set_attention(model, ATTN_FLASHDECODE)
        _STATE["kv_len"] = None
        cache = DynamicCache()
        _fill(cache, batch, context, h.shape, device)
        use_graph, why = False, "DynamicCache (torch.cat every step): eager by design"
        max_reps = 60
        extra["attention"] = "flash SDPA, GQA folded"
    elif impl in ("oscar-kernel-static", "kivi-kernel-static"):
        _restore_bf16(model)
        _set_attention(model, ATTN_KERNEL)
        cache = _kernel_static_cache(batch, context, h.shape, device, method=impl.split("-", 1)[0])
        _STATE["kernel_cache"] = cache
        use_graph, why = True, None
        max_reps = 200
        extra["attention"] = "oscar_core.kernels.decode_attention"
    elif impl in ("oscar-cache", "kivi-cache"):
        import oscar_core as oc

        _restore_bf16(model)
        model.config.get_text_config(decoder=True)._attn_implementation = "sdpa"
        kw: dict[str, Any] = {}
        if cache_kernels is not None and "kernels" in inspect.signature(oc.make_cache).parameters:
            kw["kernels"] = cache_kernels
        cache = oc.make_cache(model, impl.split("-", 1)[0], **kw)
        _fill(cache, batch, context, h.shape, device)
        use_graph, why = _graph_capable(cache)
        max_reps = 60
    else:
        raise ValueError(f"unknown end-to-end impl {impl!r}")
    torch.cuda.synchronize()
    extra["kv_bytes"] = _cache_bytes(cache)
    layers = getattr(cache, "layers", None)
    extra["cache_layer"] = type(layers[0]).__name__ if layers else type(cache).__name__
    extra["kv_bytes_allocated_delta"] = int(torch.cuda.memory_allocated() - before)
    kwargs = _step_kwargs(h, cache, batch, context, device)

    def step():
        model(**kwargs)

    timing = time_fn(step, calls=1, warmup=3, min_reps=min_reps, max_reps=max_reps, target_ms=target_ms,
                     use_graph=use_graph)
    if not use_graph:
        timing.graph_error = why
    extra["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
    extra["tokens_per_s"] = batch / (timing.median_us * 1e-6)
    kwargs.clear()
    del cache
    _STATE["kernel_cache"] = None
    _STATE["kv_len"] = None
    model.config.get_text_config(decoder=True)._attn_implementation = "sdpa"
    torch.cuda.empty_cache()
    return timing, extra


def _restore_bf16(model) -> None:
    """Undo a packed method's model preparation (V/O rotation, attention), if one was applied."""
    if getattr(model.config.get_text_config(decoder=True), "_oscar_original_attn", None) is None:
        return
    import oscar_core as oc

    oc.prepare_model(model, "fp16")


def step_bytes(h: ModelHandle, impl: str, batch: int, context: int) -> float:
    method = "bf16" if impl.startswith("bf16") else rf.method_of(impl.replace("-cache", ""))
    s = h.shape
    return rf.model_step_bytes(h.weight_read_bytes, method, batch, context, s.num_layers, s.num_q_heads,
                               s.num_kv_heads, s.head_dim)
