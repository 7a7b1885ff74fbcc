"""``with oc.quantized(model, method) as cache:``: the model is prepared inside the block and leaves it
exactly as it entered (weights bit for bit, attention implementation, hooks, ``_oscar_*`` tags)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import llama

import oscar_core as oc
from oscar_core.model import inspect_model

KV4 = dict(num_key_value_heads=4)  # RotateKV's grouped-head rotation needs a multiple of 4 KV heads


def _state(model) -> dict:
    """Everything preparing a model may change, in comparable form."""
    config = inspect_model(model).text_config
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "attn": config._attn_implementation,
        "config_tags": sorted(k for k in vars(config) if k.startswith("_oscar_")),
        "tags": {n: {k: v for k, v in vars(m).items() if k.startswith("_oscar_")} for n, m in model.named_modules()},
        "hooks": {n: list(m._forward_pre_hooks) for n, m in model.named_modules()},
    }


def _assert_same(model, before: dict) -> None:
    after = _state(model)
    changed = [k for k, v in before["weights"].items() if not torch.equal(v, after["weights"][k])]
    assert not changed, f"weights not restored bit for bit: {changed[:4]}"
    assert after["attn"] == before["attn"]
    assert after["config_tags"] == before["config_tags"]
    assert after["tags"] == before["tags"]
    assert after["hooks"] == before["hooks"]


def _greedy(model, x, **kwargs):
    return model.generate(**x, max_new_tokens=6, do_sample=False, **kwargs)


@pytest.mark.parametrize("method", ["oscar", "kivi", "quarot", "fp16"])
def test_model_leaves_the_block_as_it_entered(method):
    model, inputs = llama()
    x = inputs(40)
    reference = _greedy(model, x)
    before = _state(model)
    with oc.quantized(model, method, residual_length=32) as cache:
        inside = _greedy(model, x, **oc.cache_kwargs(cache))
        if method != "fp16":  # really prepared inside the block
            assert inspect_model(model).text_config._attn_implementation == "oscar_kv"
            assert cache.memory_report()["method"] == method
        rotated = any(not torch.equal(v, model.state_dict()[k]) for k, v in before["weights"].items())
        assert rotated == (method in ("oscar", "quarot"))  # the V/O Hadamard is fused only for these
    assert inside.shape == reference.shape
    _assert_same(model, before)
    assert torch.equal(_greedy(model, x), reference)  # the default cache generates exactly as before


def test_restored_after_an_exception_and_the_cache_refuses_to_run_afterwards():
    model, inputs = llama()
    x = inputs(40)
    before = _state(model)
    with pytest.raises(KeyError, match="boom"):
        with oc.quantized(model, "oscar") as cache:
            raise KeyError("boom")
    _assert_same(model, before)
    with oc.quantized(model, "oscar") as cache:
        pass
    with pytest.raises(RuntimeError, match="attention implementation"):  # never a silent wrong answer
        _greedy(model, x, **oc.cache_kwargs(cache))


def test_layer_input_hook_of_rotatekv_is_removed(tmp_path, monkeypatch):
    from oscar_core import calibration

    class ByteTokenizer:  # enough of a tokenizer for calibrate_rotatekv
        def __call__(self, text, return_tensors="pt", add_special_tokens=False):
            return {"input_ids": torch.tensor([[3 + b % 200 for b in text.encode()]])}

    model, inputs = llama(**KV4)
    monkeypatch.setenv("OSCAR_EVAL_CALIBRATION_DIR", str(tmp_path))
    text = tmp_path / "calib.txt"
    text.write_text("calibration text " * 20)
    calibration.calibrate_rotatekv(model, ByteTokenizer(), text, seq_len=64)
    before = _state(model)
    with oc.quantized(model, "rotatekv") as cache:
        assert any(m._forward_pre_hooks for m in model.modules())  # the capture hook is installed inside
        _greedy(model, inputs(40), **oc.cache_kwargs(cache))
    _assert_same(model, before)


def test_a_lasting_preparation_survives_a_block_for_another_method():
    """make_cache(model, "oscar") for good, then a kivi block (un-fuses the rotation inside): the oscar
    preparation is back, bit for bit, and an oscar cache generates as it did before the block."""
    model, inputs = llama()
    x = inputs(40)
    expected = _greedy(model, x, **oc.cache_kwargs(oc.make_cache(model, "oscar", residual_length=32)))
    before = _state(model)
    with oc.quantized(model, "kivi") as cache:
        assert not any(getattr(m, "_oscar_vo_rotated", False) for m in model.modules())
        _greedy(model, x, **oc.cache_kwargs(cache))
    _assert_same(model, before)
    assert torch.equal(_greedy(model, x, **oc.cache_kwargs(oc.make_cache(model, "oscar", residual_length=32))),
                       expected)


def test_a_rotation_fused_inside_a_block_that_did_not_save_weights_is_undone():
    model, _ = llama()
    before = _state(model)
    with oc.quantized(model, "kivi"):
        oc.make_cache(model, "oscar")  # fuses the V/O rotation; the kivi block kept no weight copy
    after = _state(model)
    assert after["attn"] == before["attn"] and after["tags"] == before["tags"]
    for k, v in before["weights"].items():  # rotated back: one rounding per toggle, not bit for bit
        torch.testing.assert_close(after["weights"][k], v, rtol=0, atol=1e-5)


def test_nested_blocks_restore_in_order():
    model, _ = llama()
    outer = _state(model)
    with oc.quantized(model, "oscar"):
        inner = _state(model)
        with oc.quantized(model, "kivi"):
            pass
        _assert_same(model, inner)
    _assert_same(model, outer)
