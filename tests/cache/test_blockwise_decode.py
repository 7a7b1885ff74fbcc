"""The blockwise decode (oscar_core.cache.blockwise) against the timeline path it replaces, for every method.

The oracle is the original path: ``PackedKVLayer._timeline`` (every stored unit dequantized onto the
padded timeline) through transformers' SDPA. Everything runs in fp32, so the two differ only by the
order of fp32 sums (the fast path folds scales and zeros into the query and the probabilities):
about 1e-6 on outputs of size ~1. ``ATOL`` leaves a factor ~20 of room; the queries are peaked (top
logit ~12 above the rest), so a dropped zero point or norm, a block off by one or a softmax scale 2%
off moves outputs by far more than that.
"""

from __future__ import annotations

import types

import pytest
import torch
from tiny_models import generate, llama
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import oscar_core as oc
import oscar_core.cache.attention as attention
from oscar_core.cache import PackedKVLayer, blockwise

R = 32
NEW = 20  # new tokens per test generation
ATOL = 2e-5
# name -> make_cache overrides (tiny models have 2 layers: OTT traces both)
METHODS = {
    "oscar": {},
    "kivi": {},
    "quarot": {},
    "quarot-quantized-prefill": {"method": "quarot", "residual_length": 0, "quantized_prefill": True},
    "ott": {"skip_layers": 0},
    "rotatekv": {"calibration": "identity", "sink_tokens": 4},
    "turboquant+": {},
    "turboquant": {},
    "oscar-fake-quant": {"method": "oscar", "fake_quant": True},
    "kivi-fake-quant": {"method": "kivi", "fake_quant": True},
}


@pytest.fixture(scope="module")
def tiny():
    return llama()  # 4 query heads, 2 KV heads (GQA), head_dim 64


def _make(model, name):
    kw = dict(METHODS[name])
    method = kw.pop("method", name)
    kw.setdefault("residual_length", R)
    return oc.make_cache(model, method, **kw)


def _padded_batch(inputs):
    x = inputs(90, batch=2)
    # sequence 1: 7 pads, so its blocks flush on other steps than sequence 0's (steps 7 and 14 of 20)
    x["attention_mask"][1, :7] = 0
    return x


def _oracle(layer, query, mask, scaling):
    rep = query.shape[1] // layer.k.buf.shape[1]
    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=rep, training=False)
    out, _ = sdpa_attention_forward(module, query, layer._timeline(layer.k), layer._timeline(layer.v), mask,
                                    scaling=scaling)
    return out


def _peaked_query(layer, heads, scaling, seed):
    """A query per head aimed at one stored (mostly quantized) key: its logit ~12 above zero."""
    g = torch.Generator().manual_seed(seed)
    k = layer._timeline(layer.k)  # [B, Hkv, T, D]
    batch, kv_heads, total, dim = k.shape
    rep = heads // kv_heads
    q = torch.empty(batch, heads, 1, dim)
    for b in range(batch):
        start = layer.pad[b]
        for h in range(heads):
            j = start + int(torch.randint(0, total - start, (1,), generator=g))
            kj = k[b, h // rep, j]
            q[b, h, 0] = 12.0 * kj / (scaling * kj.square().sum() + 1e-6) + 0.1 * torch.randn(dim, generator=g)
    return q


def _mask(x, total, window=None):
    """The bool mask transformers builds for one decode step (padding; optionally a sliding window)."""
    allowed = x["attention_mask"].bool()[:, None, None, :total].clone()
    if window is not None:
        allowed[..., : total - window] = False
    return allowed


@pytest.mark.parametrize("name", list(METHODS))
def test_every_decode_step_matches_the_timeline_path(tiny, name, monkeypatch):
    """Each layer's attention output at each step of a left-padded GQA batch: blockwise (fast and generic)
    equals the timeline path, and the blockwise path really ran."""
    model, inputs = tiny
    x = _padded_batch(inputs)
    calls = []

    def checked(layer, query, mask, scaling, fast=True):
        out = blockwise.decode_attention(layer, query, mask, scaling)
        assert out is not None, "a decode step fell back to the timeline path"
        ref = _oracle(layer, query, mask, scaling)
        generic = blockwise.decode_attention(layer, query, mask, scaling, fast=False)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(generic, ref, atol=ATOL, rtol=0)
        calls.append([list(layer.k.n_units), list(layer.v.n_units)])
        return out

    monkeypatch.setattr(attention, "decode_attention", checked)
    cache = _make(model, name)
    generate(model, x, cache, NEW)
    steps = NEW - 1  # the first new token comes from the prompt's forward
    assert len(calls) == steps * len(cache.layers)
    first, last = calls[0], calls[-1]
    assert sum(last[0]) > sum(first[0]), "no key block was flushed while decoding"
    assert any(len(set(c[0])) > 1 for c in calls), "the sequences never held different numbers of blocks"


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("window", [None, 40], ids=["causal", "sliding"])
def test_peaked_queries_match_with_scaling_and_masks(tiny, name, window):
    """After several flushes: peaked queries, a non-default ``scaling``, a padding or sliding-window mask."""
    model, inputs = tiny
    x = _padded_batch(inputs)
    cache = _make(model, name)
    generate(model, x, cache, NEW)
    for i, layer in enumerate(cache.layers):
        assert isinstance(layer, PackedKVLayer) and max(layer.k.n_units) >= 3
        if name == "ott":
            assert layer.k.ov_vals is not None and layer.v.ov_vals is not None  # overrides exercised
        total = layer.total_len
        full_mask = torch.cat([x["attention_mask"], torch.ones(2, total - x["attention_mask"].shape[1],
                                                               dtype=torch.long)], dim=1)
        mask = _mask({"attention_mask": full_mask}, total, window)
        for scaling in (0.125, 0.3):
            q = _peaked_query(layer, 4, scaling, seed=i)
            ref = _oracle(layer, q, mask, scaling)
            for fast in (True, False):
                out = blockwise.decode_attention(layer, q, mask, scaling, fast=fast)
                torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
            # the peak matters: the output is far from the plain mean of the values
            flat = blockwise.decode_attention(layer, q * 0, mask, scaling)
            assert (flat - ref).abs().max() > 100 * ATOL


@pytest.mark.parametrize("name", list(METHODS))
def test_generation_is_identical_to_the_timeline_path(tiny, name):
    model, inputs = tiny
    x = _padded_batch(inputs)
    new = _make(model, name)
    old = _make(model, name)
    for layer in old.layers:
        layer.blockwise_decode = False
    seq_new, logits_new = generate(model, x, new, 2 * NEW)
    seq_old, logits_old = generate(model, x, old, 2 * NEW)
    assert torch.equal(seq_new, seq_old)
    torch.testing.assert_close(logits_new, logits_old, atol=1e-4, rtol=0)


def test_falls_back_where_it_does_not_apply(tiny):
    model, inputs = tiny
    x = _padded_batch(inputs)
    cache = _make(model, "oscar")
    generate(model, x, cache, 5)
    layer = cache.layers[0]
    total = layer.total_len
    q = torch.randn(2, 4, 1, 64)
    mask = torch.ones(2, 1, 1, total, dtype=torch.bool)
    assert blockwise.decode_attention(layer, q, mask, 0.125) is not None
    assert blockwise.decode_attention(layer, torch.randn(2, 4, 2, 64), None, 0.125) is None  # several tokens
    assert blockwise.decode_attention(layer, q, mask.expand(2, 4, 1, total), 0.125) is None  # per-head mask
    fresh = _make(model, "oscar").layers[0]
    fresh.update(torch.randn(1, 2, 3, 64), torch.randn(1, 2, 3, 64))  # a held prompt
    assert blockwise.decode_attention(fresh, torch.randn(1, 4, 1, 64), None, 0.125) is None


def test_affine_forms_are_recognised_and_subclasses_are_not():
    assert blockwise.affine_form(oc.get_method("oscar"), True) == ("token", "integer")
    assert blockwise.affine_form(oc.get_method("kivi"), False) == ("channel", "float")
    assert blockwise.affine_form(oc.get_method("ott"), True) == ("token", "float")
    assert blockwise.affine_form(oc.get_method("quarot"), True) == ("channel", "integer")
    for name in ("rotatekv", "turboquant+", "turboquant"):
        assert blockwise.affine_form(oc.get_method(name), True) is None
    kivi = type(oc.get_method("kivi"))

    class Shifted(kivi):  # a decoder the fast path must not assume
        def decode_keys(self, block, dtype, ctx=None):
            return super().decode_keys(block, dtype, ctx) + 1

    assert blockwise.affine_form(Shifted(), True) is None
