"""The cache backend inside real transformers models and generate (issue 3 acceptance)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import generate, llama, qwen3
from transformers import DynamicCache

import oscar_core as oc
from oscar_core.cache import QuantizedKVCache
from oscar_core.methods import MethodConfigError

QUANT_METHODS = ["kivi", "oscar", "quarot"]
R = 32  # a small window so that short generations cross several flushes


def test_fp16_is_token_identical_to_default_cache(tiny_arch):
    name, model, inputs = tiny_arch
    x = inputs(40)
    ref_seq, ref_logits = generate(model, x, DynamicCache(config=model.config.get_text_config()), 25)
    cache = oc.make_cache(model, "fp16")
    seq, logits = generate(model, x, cache, 25)
    assert torch.equal(seq, ref_seq), name
    assert torch.equal(logits, ref_logits), name


# Short generations that still cross several flushes: groups and window of 16 tokens.
SMALL = {"group_size": 16, "residual_length": 16}


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_packed_and_fake_quant_paths_give_identical_logits(tiny_arch, method):
    name, model, inputs = tiny_arch
    x = inputs(21)  # 16 prompt tokens quantized at once, 5 in the window
    small = SMALL if method != "quarot" else {"residual_length": 16}
    packed = oc.make_cache(model, method, **small)
    fake = oc.make_cache(model, method, fake_quant=True, **small)
    seq_p, logits_p = generate(model, x, packed, 30)  # flushes at 32 and 48 tokens
    seq_f, logits_f = generate(model, x, fake, 30)
    assert isinstance(packed, QuantizedKVCache)
    # packed codes attend through blockwise's folded scales, fake-quant through dense K/V: fp32 sums
    # reordered (~1e-7 per attention), which can flip a later token's quantization code (~1e-5 in logits)
    torch.testing.assert_close(logits_p, logits_f, atol=1e-4, rtol=0, msg=f"{name}/{method}")
    assert torch.equal(seq_p, seq_f)
    layer = packed.layers[0]
    assert layer.k.n_units == [(21 + 30 - 1) // 16]  # the last generated token is never cached
    # Packed storage really holds uint8 codes and fp16 metadata; fake-quant holds dense tensors.
    assert layer.k.units["codes"].dtype == torch.uint8 and layer.k.units["scale"].dtype == torch.float16
    assert set(fake.layers[0].k.units) == {"dense"}
    # The quantizer changes the numbers: this is not secretly the full-precision path.
    _, ref_logits = generate(model, x, oc.make_cache(model, "fp16"), 30)
    assert not torch.equal(ref_logits, logits_p)


@pytest.mark.parametrize("method", ["oscar", "quarot"])
def test_vo_fusion_leaves_the_model_unchanged(method):
    model, inputs = llama()
    ids = inputs(50)["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
        oc.prepare_model(model, method)
        rotated = [layer.self_attn._oscar_vo_rotated for layer in model.model.layers]
        after = model(ids).logits
        oc.prepare_model(model, method)  # idempotent: no second rotation
        again = model(ids).logits
    assert all(rotated)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after, again)


def test_vo_fusion_rotates_the_value_projection_per_head():
    model, _ = llama()
    w = model.model.layers[0].self_attn.v_proj.weight.detach().clone()
    oc.prepare_model(model, "oscar")
    h = oc.hadamard.hadamard_matrix(64)
    expected = (h @ w.reshape(2, 64, -1)).reshape(w.shape)
    torch.testing.assert_close(model.model.layers[0].self_attn.v_proj.weight, expected, rtol=1e-5, atol=1e-6)


def _encode_log(spec):
    """Wrap a spec's encoders to record the token count of every encoded block."""
    calls = {"k": [], "v": []}

    class Logged(type(spec)):
        def encode_keys(self, k, ctx=None):
            calls["k"].append(k.shape[0] * k.shape[2])
            return super().encode_keys(k, ctx)

        def encode_values(self, v, ctx=None):
            calls["v"].append(v.shape[0] * v.shape[2])
            return super().encode_values(v, ctx)

    return Logged(**spec.to_dict()["params"]), calls


@pytest.mark.parametrize("prompt_len", [R - 1, R, R + 1, 2 * R + 3])
@pytest.mark.parametrize("method", ["oscar", "kivi"])
def test_blocks_are_flushed_whole_and_no_token_is_quantized_twice(prompt_len, method):
    model, inputs = qwen3()
    spec, calls = _encode_log(oc.get_method(method, residual_length=R))
    cache = oc.make_cache(model, spec)
    new = 2 * R + 5
    generate(model, inputs(prompt_len), cache, new)
    cached = prompt_len + new - 1  # the last generated token is never fed back
    layers = model.config.num_hidden_layers
    # Keys: only whole R-token blocks are ever quantized (never a 1-token per-channel group) ...
    assert calls["k"] and all(n % R == 0 for n in calls["k"])
    # ... and each token exactly once: what was encoded is exactly what is stored.
    assert sum(calls["k"]) == layers * (cached // R) * R
    for layer in cache.layers:
        assert layer.k.tokens_quantized == layer.k.n_units[0] * R
        assert layer.k.n_units[0] * R + layer.k.buf_len[0] == cached
        assert 1 <= layer.k.buf_len[0] <= R or cached < R
    assert sum(calls["k"]) == sum(layer.k.tokens_quantized for layer in cache.layers)
    assert sum(calls["v"]) == sum(layer.v.tokens_quantized for layer in cache.layers)
    value_window = R + 1 if method == "kivi" else None  # KIVI's sliding window attends the last R + 1
    for layer in cache.layers:
        if value_window:
            assert layer.v.buf_len[0] == min(cached, value_window)
            assert layer.v.tokens_quantized == cached - min(cached, value_window)
        else:
            assert layer.v.n_units == layer.k.n_units and layer.v.buf_len == layer.k.buf_len


@pytest.mark.parametrize("prompt_len", [R - 1, R, R + 1, 2 * R + 3])
def test_prompt_split_follows_floor_rule(prompt_len):
    model, inputs = llama()
    cache = oc.make_cache(model, "oscar", residual_length=R)
    with torch.no_grad():
        model(**inputs(prompt_len), past_key_values=cache, use_cache=True)
    for layer in cache.layers:
        assert layer.k.n_units == [prompt_len // R]
        assert layer.k.buf_len == [prompt_len % R]
        assert cache.get_seq_length() == prompt_len


@pytest.mark.parametrize("method", ["oscar", "kivi"])
def test_memory_at_4k_tokens_is_4_5x_below_fp16_and_matches_bits_per_element(method):
    model, inputs = llama(num_hidden_layers=1, head_dim=128, num_attention_heads=2, num_key_value_heads=2,
                          hidden_size=256)
    x = inputs(4096)
    fp16 = oc.make_cache(model, "fp16")
    packed = oc.make_cache(model, method)
    with torch.no_grad():
        model(**x, past_key_values=fp16, use_cache=True)
        model(**x, past_key_values=packed, use_cache=True)
    fp16_bytes = fp16.memory_report()["bytes"] / 2  # the test model is float32; fp16 holds 2 bytes
    report = packed.memory_report()
    held = report["bytes"] - report["components"].get("k_window", 0) / 2 - report["components"].get("v_window", 0) / 2
    assert fp16_bytes / held >= 4.5, report
    spec = oc.get_method(method)
    expected = spec.bits_per_element(4096, 2, 128) * 2 * 4096 * 2 * 128 / 8
    assert held == pytest.approx(expected, rel=0.01)


def test_batched_left_padding_matches_each_sequence_alone():
    model, _ = llama()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 200, (n,), generator=g) for n in (45, 70)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = p
        mask[b, width - len(p):] = 1
    batched, _ = generate(model, {"input_ids": ids, "attention_mask": mask},
                          oc.make_cache(model, "oscar", residual_length=R), 50)
    cache = None
    for b, p in enumerate(prompts):
        cache = oc.make_cache(model, "oscar", residual_length=R)
        alone, _ = generate(model, {"input_ids": p[None], "attention_mask": torch.ones(1, len(p), dtype=torch.long)},
                            cache, 50)
        assert torch.equal(batched[b, width:], alone[0, len(p):]), f"sequence {b}"
    assert cache.layers[0].k.n_units == [(70 + 49) // R]


def test_padding_never_enters_a_quantization_group():
    model, _ = llama()
    cache = oc.make_cache(model, "oscar", residual_length=R)
    ids = torch.randint(3, 200, (2, 40))
    mask = torch.ones_like(ids)
    mask[0, :8] = 0  # 8 pad tokens: 32 real tokens -> exactly one block, nothing from the pads
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    layer = cache.layers[0]
    assert layer.pad == [8, 0]
    assert layer.k.n_units == [1, 1] and layer.k.buf_len == [0, 8]


def test_right_padding_is_a_clear_error():
    model, _ = llama()
    ids = torch.randint(3, 200, (2, 40))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    with pytest.raises(ValueError, match="left padding"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask, past_key_values=oc.make_cache(model, "oscar"), use_cache=True)


def test_sampling_and_beam_search_run_on_the_packed_cache():
    model, inputs = llama()
    x = inputs(20, batch=2)
    torch.manual_seed(7)
    a = model.generate(**x, past_key_values=oc.make_cache(model, "oscar", **SMALL), do_sample=True,
                       max_new_tokens=20, pad_token_id=0)
    torch.manual_seed(7)
    b = model.generate(**x, past_key_values=oc.make_cache(model, "oscar", fake_quant=True, **SMALL),
                       do_sample=True, max_new_tokens=20, pad_token_id=0)
    assert torch.equal(a, b)
    beams = model.generate(**x, past_key_values=oc.make_cache(model, "kivi", **SMALL), num_beams=3,
                           do_sample=False, max_new_tokens=20, pad_token_id=0)
    assert beams.shape == (2, 40)


def test_crop_within_the_window_and_refusal_beyond_it():
    model, inputs = llama()
    cache = oc.make_cache(model, "oscar", residual_length=R)
    with torch.no_grad():
        model(**inputs(45), past_key_values=cache, use_cache=True)
    cache.crop(-5)
    assert cache.get_seq_length() == 40
    assert cache.layers[0].k.buf_len == [8]
    with pytest.raises(ValueError, match="quantized tokens cannot be un-quantized"):
        cache.crop(-20)
    # generation continues consistently after a crop
    ids = inputs(45)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids[:, 40:41], past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 41 and torch.isfinite(out.logits).all()


def test_unsupported_layers_fail_at_make_cache():
    model, _ = llama(head_dim=96, hidden_size=192)
    with pytest.raises(MethodConfigError, match="power-of-two head_dim"):
        oc.make_cache(model, "oscar")
    model, _ = qwen3(use_sliding_window=True, sliding_window=16, max_window_layers=1,
                     layer_types=["full_attention", "sliding_attention"])
    # sliding-window layers are supported now (tests/cache/test_hybrid.py): a window of their own
    assert oc.make_cache(model, "kivi").layer_policy == ["quantized", "full_precision_window"]
    with pytest.raises(MethodConfigError, match="unknown method"):
        oc.make_cache(model, "nope")
