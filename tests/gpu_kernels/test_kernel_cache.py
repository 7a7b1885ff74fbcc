"""The cache on the kernels' layout (oscar_core.kernel_cache): same codes, same answers as the reference."""

from __future__ import annotations

import pytest
import torch
from tiny_models import llama

import oscar_core as oc
from oscar_core import kernels as K
from oscar_core.kernel_cache import KernelOScaRLayer

R = 64
HEAD_DIMS = [64, 128, 256]  # SmolLM2 / Qwen2.5-0.5B, Llama / Qwen2.5-1.5B, Gemma 3


def _model(device="cpu", head_dim=128):
    model, inputs = llama(head_dim=head_dim, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    return model.to(device=device, dtype=torch.bfloat16), inputs


def _left_padded(inputs, device="cpu"):
    x = inputs(150, batch=2)
    x["attention_mask"][0, :20] = 0  # sequence 0 is 20 tokens shorter
    return {k: v.to(device) for k, v in x.items()}


def _generate(model, x, cache, n=40):
    out = model.generate(**x, past_key_values=cache, max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1).float()


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize(("device", "mode"), [
    ("cpu", "fallback"),
    pytest.param("cuda", "on", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="needs a CUDA device")]),
])
def test_kernel_layout_holds_exactly_the_reference_codes(device, mode, head_dim):
    # on CUDA the prompt and every flush go through the pack kernels: still the reference's bits
    model, inputs = _model(device, head_dim)
    x = _left_padded(inputs, device)
    ref, ker = oc.make_cache(model, "oscar", kernels="off", residual_length=R), \
        oc.make_cache(model, "oscar", kernels=mode, residual_length=R)
    _generate(model, x, ref)
    _generate(model, x, ker)
    for lr, lk in zip(ref.layers, ker.layers, strict=True):
        assert isinstance(lk, KernelOScaRLayer) and not isinstance(lr, KernelOScaRLayer)
        assert lk.k.n_units == lr.k.n_units == [(130 + 39) // R, (150 + 39) // R]
        kb, vb = K.to_reference_blocks(K.KernelKeys(lk.k.units["data"], lk.k.units["norm"]),
                                       K.KernelValues(lk.v.units["data"]))
        for b, n_units in enumerate(lr.k.n_units):
            tokens = n_units * R
            ref_keys = {n: t[b, :n_units] for n, t in lr.k.units.items()}
            # reference storage is per R-token unit; the kernel's is one token axis per sequence
            assert torch.equal(kb["codes"][b, :, : tokens // 32], ref_keys["codes"].transpose(0, 1).reshape(
                2, tokens // 32, head_dim, 8))
            assert torch.equal(kb["scale"][b, :, : tokens // 32], ref_keys["scale"].transpose(0, 1).reshape(
                2, tokens // 32, head_dim))
            assert torch.equal(kb["norm"][b, :tokens], ref_keys["norm"].reshape(tokens))
            ref_vals = lr.v.units["codes"][b, :n_units].transpose(0, 1).reshape(2, tokens, head_dim // 32, 8)
            assert torch.equal(vb["codes"][b, :, :tokens], ref_vals)


def _teacher_forced_logits(model, x, cache, steps=40):
    """Logits of the prompt and of ``steps`` single-token decode steps on fixed tokens (no divergence)."""
    g = torch.Generator().manual_seed(5)
    follow = torch.randint(3, 200, (x["input_ids"].shape[0], steps), generator=g).to(x["input_ids"].device)
    mask = x["attention_mask"]
    out = []
    with torch.no_grad():
        out.append(model(**x, past_key_values=cache, use_cache=True).logits[:, -1].float())
        for t in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out.append(model(input_ids=follow[:, t:t + 1], attention_mask=mask, past_key_values=cache,
                             use_cache=True).logits[:, -1].float())
    return torch.stack(out, 1)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_kernel_decode_path_gives_the_reference_answers(head_dim):
    model, inputs = _model(head_dim=head_dim)
    x = _left_padded(inputs)
    ref = _teacher_forced_logits(model, x, oc.make_cache(model, "oscar", kernels="off", residual_length=R))
    cache = oc.make_cache(model, "oscar", kernels="fallback", residual_length=R)
    ker = _teacher_forced_logits(model, x, cache)
    for layer in cache.layers:  # the device-side lengths tracked the host's through every flush
        assert layer._dev_lens.tolist() == layer._host_lens()
    assert torch.equal(ker[:, 0], ref[:, 0])  # the prompt step is the same code path
    # decode steps (across flushes at 192 tokens): fp32 kernel math vs bf16 SDPA, equal up to bf16 rounding
    torch.testing.assert_close(ker, ref, rtol=0, atol=0.05)
    assert (ker.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95


def test_kernel_modes_fail_clearly_where_they_cannot_apply():
    model, _ = _model()
    with pytest.raises(ValueError, match="kernels='on': the model is not on a CUDA device"):
        oc.make_cache(model, "oscar", kernels="on")
    with pytest.raises(ValueError, match="OScaR INT2 only, not kivi"):
        oc.make_cache(model, "kivi", kernels="fallback")
    with pytest.raises(ValueError, match="token_scaling"):
        oc.make_cache(model, "oscar", kernels="fallback", token_scaling=False)
    with pytest.raises(ValueError, match="kernels must be"):
        oc.make_cache(model, "oscar", kernels="fast")
    cache = oc.make_cache(model, "oscar")  # auto on CPU: the reference path
    assert not isinstance(cache.layers[0], KernelOScaRLayer)
    small, _ = _model(head_dim=32)  # a power of two OScaR rotates, but no kernel instantiation
    with pytest.raises(ValueError, match=r"kernels='fallback': the kernels need head_dim in \(64, 128, 256\) \(got 32\)"):
        oc.make_cache(small, "oscar", kernels="fallback")


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_cuda_kernels_in_the_cache_match_the_reference_path(head_dim):
    model, inputs = _model("cuda", head_dim)
    x = _left_padded(inputs, "cuda")
    ref = _teacher_forced_logits(model, x, oc.make_cache(model, "oscar", kernels="off", residual_length=R))
    cache = oc.make_cache(model, "oscar", kernels="on", residual_length=R)
    ker = _teacher_forced_logits(model, x, cache)
    assert isinstance(cache.layers[0], KernelOScaRLayer)
    torch.testing.assert_close(ker, ref, rtol=0, atol=0.05)
    assert (ker.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95


def test_device_lengths_follow_synchronised_and_staggered_flushes():
    model, inputs = _model()
    for padded in (False, True):
        x = inputs(100, batch=2)
        if padded:
            x["attention_mask"][1, :30] = 0
        cache = oc.make_cache(model, "oscar", kernels="fallback", residual_length=32)
        _teacher_forced_logits(model, x, cache, steps=70)
        layer = cache.layers[0]
        assert layer._dev_lens.tolist() == layer._host_lens()
        assert layer._host_lens()[0] == ([160, 160] if not padded else [160, 128])
