"""oscar_eval.analysis.layer_error on tiny random models: capture, isolation, window policy, statistics."""

from __future__ import annotations

import pytest
import torch
from tiny_models import _TEXT, llama

from oscar_core.diagnostics import collect_keys
from oscar_core.hadamard import hadamard_transform
from oscar_core.methods import get_method
from oscar_core.model import inspect_model
from oscar_eval.analysis.layer_error import (
    LayerInputs,
    capture_layer_inputs,
    group_range_energy,
    key_statistics,
    layer_output_error,
    top_channel_fraction,
)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model, inputs = llama()
    ids = inputs(104)["input_ids"]
    return model, ids, capture_layer_inputs(model, ids)


def test_capture_matches_the_models_own_cache(tiny):
    model, ids, caps = tiny
    keys = collect_keys(model, ids)
    assert len(caps) == len(keys) == 2
    for cap, k in zip(caps, keys, strict=True):
        assert torch.equal(cap.k, k)
        assert cap.q.shape == (1, 4, 104, 64) and cap.v.shape == (1, 2, 104, 64)
        assert cap.hidden.shape == (1, 104, 128) and cap.k_bias is None
    assert model.config._attn_implementation != "oscar_layer_capture"  # restored


def test_capture_records_k_proj_bias():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**_TEXT)).eval()
    caps = capture_layer_inputs(model, torch.randint(3, 200, (1, 40)))
    assert torch.equal(caps[1].k_bias, model.model.layers[1].self_attn.k_proj.bias)
    stats = key_statistics(caps[1])
    assert stats["k_bias_norm"] == pytest.approx(float(model.model.layers[1].self_attn.k_proj.bias.detach().norm()))


def test_capture_refuses_a_rotated_model(tiny):
    from oscar_core import make_cache

    model, _ = llama()
    make_cache(model, "oscar")
    with pytest.raises(ValueError, match="rotated"):
        capture_layer_inputs(model, torch.randint(3, 200, (1, 8)))


@pytest.mark.parametrize("method", ["oscar", "kivi", "quarot"])
def test_nothing_quantized_means_no_error_in_any_basis(tiny, method):
    # 20 + 8 tokens stay in the R=128 window: the only difference left would be a basis mix-up
    _, _, caps = tiny
    r = layer_output_error(get_method(method), caps[0], prompt_tokens=20, steps=8)
    assert r["key_tokens_quantized"] == r["value_tokens_quantized"] == 0
    for name in ("output", "output_keys_only", "output_values_only"):
        assert r[name] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("method,params", [
    ("kivi", {}), ("oscar", {}), ("oscar", {"rotation": False}), ("quarot", {}), ("ott", {}),
    ("turboquant", {}), ("turboquant+", {}), ("rotatekv", {"calibration": "identity"}),
])
def test_fast_path_equals_rebuilding_the_timeline_every_step(tiny, method, params):
    # R=32: the 40 steps after a 64-token prompt flush blocks (and KIVI's sliding values) on the way
    model, _, caps = tiny
    info = inspect_model(model)
    spec = get_method(method, residual_length=32, **params).resolve_for_model(info.num_kv_heads, info.head_dim)
    shared = spec.init_layer_states(model, info)[1]
    fast = layer_output_error(spec, caps[1], shared, prompt_tokens=64, steps=40)
    exact = layer_output_error(spec, caps[1], shared, prompt_tokens=64, steps=40, exact=True)
    assert fast.keys() == exact.keys()
    for name in fast:
        assert fast[name] == pytest.approx(exact[name], rel=1e-4, abs=1e-6), name
    assert fast["output"] > 0


def test_window_policy_is_the_caches(tiny):
    _, _, caps = tiny
    block = layer_output_error(get_method("oscar", residual_length=32), caps[0], prompt_tokens=64, steps=40)
    assert block["key_tokens_quantized"] == block["value_tokens_quantized"] == 96  # 3 blocks of 32
    sliding = layer_output_error(get_method("kivi", residual_length=32), caps[0], prompt_tokens=64, steps=40)
    assert sliding["key_tokens_quantized"] == 96 and sliding["value_tokens_quantized"] == 104 - 33


def test_error_falls_with_more_bits(tiny):
    _, _, caps = tiny
    two = layer_output_error(get_method("oscar", residual_length=32), caps[1], prompt_tokens=96, steps=8)
    eight = layer_output_error(get_method("oscar", bits=8, residual_length=32), caps[1], prompt_tokens=96, steps=8)
    assert eight["output"] < 0.05 * two["output"]
    assert eight["key"] < 0.05 * two["key"] and two["key_tokens_quantized"] == 96


def test_key_statistics_on_constructed_keys():
    torch.manual_seed(0)
    k = torch.randn(1, 2, 64, 64)
    k[:, :, 0] *= 0.1  # a low-norm sink
    x = LayerInputs(0, torch.zeros(1, 2, 64, 64), k, k, None, 0.125, None)
    stats = key_statistics(x)
    assert stats["sink_ratio"] == pytest.approx(0.1, rel=0.2)
    assert "k_bias_norm" not in stats


def test_channel_concentration_before_and_after_hadamard():
    k = torch.zeros(1, 1, 32, 64)
    k[..., 5] = torch.linspace(1, 2, 32)  # all energy in one channel
    assert top_channel_fraction(k) == pytest.approx(1.0)
    assert top_channel_fraction(hadamard_transform(k)) == pytest.approx(4 / 64)


def test_group_range_energy():
    x = torch.zeros(1, 1, 32, 4)
    x[:, :, ::2, 0] = 1.0  # channel 0 alternates 1, 0: range 1 in one group, energy 16
    assert group_range_energy(x) == pytest.approx(1 * 32 / 16)
