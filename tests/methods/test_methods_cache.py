"""The issue-4 methods through make_cache/generate on the supported architectures."""

from __future__ import annotations

import pytest
import torch
from tiny_models import generate, llama, qwen3

import oscar_core as oc
from oscar_core.cache import QuantizedKVCache

R = 16
NEW = {"ott": dict(skip_layers=0, group_size=R), "turboquant+": {}, "turboquant": {}}  # tiny models have 2 layers: trace both


def test_registry_order():
    assert oc.list_methods()[:8] == ["fp16", "quarot", "rotatekv", "kivi", "ott", "turboquant+", "oscar", "turboquant"]
    for name in ("rotatekv", "ott", "turboquant+", "turboquant"):
        assert oc.get_method(name).name == name


def test_packed_and_fake_quant_agree_on_every_architecture(tiny_arch):
    name, model, inputs = tiny_arch
    x = inputs(40)
    methods = ["ott", "turboquant+"] + (["turboquant"] if name == "llama" else [])
    _, ref = generate(model, x, oc.make_cache(model, "fp16"), 25)
    for method in methods:
        packed = oc.make_cache(model, method, residual_length=R, **NEW[method])
        fake = oc.make_cache(model, method, residual_length=R, fake_quant=True, **NEW[method])
        seq_p, logits_p = generate(model, x, packed, 25)
        seq_f, logits_f = generate(model, x, fake, 25)
        assert isinstance(packed, QuantizedKVCache)
        # blockwise decode: folded scales (packed) vs dense K/V (fake-quant) reorder fp32 sums, which
        # can flip a later token's quantization code (~1e-5 in logits)
        torch.testing.assert_close(logits_p, logits_f, atol=1e-4, rtol=0, msg=f"{name}/{method}")
        assert not torch.equal(logits_p, ref), f"{name}/{method}"
        layer = packed.layers[0]
        assert layer.k.n_units == [(40 + 25 - 1 - 1) // R]  # 64 cached tokens, a full window of R
        assert layer.k.units[next(iter(layer.k.units))].dtype == torch.uint8  # really packed codes
        if method == "ott":
            assert layer.k.ov_vals is not None and "k_overrides" in packed.memory_report()["components"]


@pytest.mark.parametrize("build", [llama, qwen3], ids=["llama", "qwen3"])
def test_rotatekv_generates_packed_equal_to_fake(build):
    model, inputs = build(num_key_value_heads=4)
    x = inputs(40)
    packed = oc.make_cache(model, "rotatekv", calibration="identity", residual_length=R)
    fake = oc.make_cache(model, "rotatekv", calibration="identity", residual_length=R, fake_quant=True)
    _, lp = generate(model, x, packed, 20)
    _, lf = generate(model, x, fake, 20)
    torch.testing.assert_close(lp, lf, atol=1e-4, rtol=0)
    assert packed.layers[0].k.units["codes"].dtype == torch.uint8


@pytest.mark.parametrize("method", ["rotatekv", "ott", "turboquant+", "turboquant"])
def test_left_padded_batch_equals_sequences_alone(method):
    model, inputs = llama(num_key_value_heads=4)
    kw = {"calibration": "identity"} if method == "rotatekv" else NEW[method]
    x = inputs(40, batch=2)
    x["attention_mask"][1, :7] = 0  # sequence 1: 33 real tokens after 7 pads
    _, batched = generate(model, x, oc.make_cache(model, method, residual_length=R, **kw), 20)
    for b, pad in ((0, 0), (1, 7)):
        alone = {"input_ids": x["input_ids"][b : b + 1, pad:], "attention_mask": x["attention_mask"][b : b + 1, pad:]}
        _, single = generate(model, alone, oc.make_cache(model, method, residual_length=R, **kw), 20)
        torch.testing.assert_close(batched[b : b + 1], single, rtol=1e-4, atol=1e-4)
