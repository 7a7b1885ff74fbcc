"""End-to-end plumbing on CPU with a tiny model: the BF16 arms' decode attention computes the same
logits as transformers' own SDPA path, and every cache arm fills and steps."""

from __future__ import annotations

import pytest
import torch

from oscar_eval import archs
from oscar_eval.speed import e2e as E
from oscar_eval.speed import plan as pl


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    cfg = archs.build_config("qwen3-8b", layers=2)
    cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size = 512, 256, 512
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 8, 2, 128
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
    shape = pl.Shape(8, 2, 128, 2, 0, 512, 256, 512)
    return model, shape


def _decode_logits(model, cache, ids, nxt, n):
    with torch.no_grad():
        model(ids, past_key_values=cache)
        return model(nxt, past_key_values=cache, position_ids=torch.full((ids.shape[0], 1), n)).logits


def test_flashdecode_attention_matches_transformers_sdpa(tiny):
    from transformers import DynamicCache, StaticCache

    model, _ = tiny
    ids, nxt = torch.randint(0, 512, (2, 40)), torch.randint(0, 512, (2, 1))
    model.config._attn_implementation = "sdpa"
    ref = _decode_logits(model, DynamicCache(), ids, nxt, 40)
    try:
        E._set_attention(model, E.ATTN_FLASHDECODE)
        E._STATE["kv_len"] = None
        dyn = _decode_logits(model, DynamicCache(), ids, nxt, 40)
        E._STATE["kv_len"] = 41  # the valid prefix of a static cache holding 40 + 1 tokens
        static = _decode_logits(model, StaticCache(config=model.config, max_cache_len=100), ids, nxt, 40)
    finally:
        E._STATE["kv_len"] = None
        model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(dyn, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(static, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arm", ["static", "dynamic", "oscar", "oscar-kernel-layout"])
def test_every_cache_arm_fills_and_steps(tiny, arm):
    from transformers import DynamicCache, StaticCache

    import oscar_core as oc

    model, shape = tiny
    model = model.to(torch.bfloat16)
    batch, context = 2, 300
    if arm == "static":
        cache = StaticCache(config=model.config, max_cache_len=context + E.STATIC_MARGIN)
    elif arm == "dynamic":
        cache = DynamicCache()
    elif arm == "oscar":
        cache = oc.make_cache(model, "oscar")
    else:  # the kernel-layout cache through the kernels' PyTorch fallbacks
        cache = oc.make_cache(model, "oscar", kernels="fallback")
    E._fill(cache, batch, context, shape, "cpu")
    handle = E.ModelHandle(model, "tiny", shape, 0, 0, "test", False)
    kwargs = E._step_kwargs(handle, cache, batch, context, "cpu")
    with torch.no_grad():
        logits = model(**kwargs).logits
    assert logits.shape == (batch, 1, 512) and torch.isfinite(logits.float()).all()
    kv = E._cache_bytes(cache)
    bf16 = 2 * 2 * batch * context * shape.num_kv_heads * shape.head_dim * shape.num_layers
    if arm.startswith("oscar"):
        assert kv < bf16 / 2  # really packed
        assert E._graph_capable(cache)[0] is False
        E._restore_bf16(model)
    else:
        assert kv >= bf16
    model.to(torch.float32)


def test_kernel_static_cache_steps_with_the_fallback_kernels(tiny, monkeypatch):
    """The kernel arm's cache and attention, run through oscar_core.kernels' PyTorch fallbacks."""
    from oscar_core import kernels as kx
    from oscar_eval.speed import packed_kernel

    monkeypatch.setattr(packed_kernel, "_kernels", lambda: kx)
    model, shape = tiny
    cache = E._kernel_static_cache(2, 300, shape, "cpu")
    layer = cache.layers[0].packed
    assert (layer.quantized, layer.window_tokens) == (256, 44)
    try:
        E._STATE["kernel_cache"] = cache
        E._set_attention(model, E.ATTN_KERNEL)
        handle = E.ModelHandle(model, "tiny", shape, 0, 0, "test", False)
        with torch.no_grad():
            logits = model.to(torch.bfloat16)(**E._step_kwargs(handle, cache, 2, 300, "cpu")).logits
    finally:
        E._STATE["kernel_cache"] = None
        model.config._attn_implementation = "sdpa"
        model.to(torch.float32)
    assert torch.isfinite(logits.float()).all()
    assert cache.memory_report()["bytes"] < 2 * 2 * 2 * 300 * 2 * 128 * 2 / 2
