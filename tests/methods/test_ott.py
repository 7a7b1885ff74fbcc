"""OTT: outlier token tracing on the cache layer (pool, substitution, masking, overflow, skipped layers)."""

from __future__ import annotations

import pytest
import torch

import oscar_core as oc
from oscar_core.cache import PackedKVLayer
from oscar_core.methods.base import LayerState
from oscar_core.quant import fake_quantize

R, H, D = 32, 2, 32


def _kv(tokens: int, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, H, tokens, D, generator=g), torch.randn(batch, H, tokens, D, generator=g)


def _layer(layer_idx: int = 5, fake_quant: bool = False, **overrides) -> PackedKVLayer:
    spec = oc.get_method("ott", residual_length=R, **overrides)
    return PackedKVLayer(spec, fake_quant=fake_quant, state=LayerState(layer_idx=layer_idx))


def _shrink(k: torch.Tensor, scales: dict[int, float]) -> torch.Tensor:
    k = k.clone()
    for pos, s in scales.items():
        k[:, :, pos] *= s
    return k


def _pool(layer, b=0):
    return sorted(p for _, p in layer.state.per_seq[b]["ott"]["pool"])


def test_keeps_exactly_the_lowest_magnitude_tokens_across_blocks():
    k, v = _kv(2 * R + 5)
    # Block 0: seven small-magnitude tokens; block 1: three even smaller ones.
    scales = {3: 0.05, 9: 0.06, 11: 0.07, 17: 0.08, 20: 0.09, 25: 0.10, 30: 0.11,
              R + 2: 0.01, R + 14: 0.02, R + 29: 0.03}
    k = _shrink(k, scales)
    layer = _layer()
    layer.update(k, v)
    layer.commit_prompt([0])  # quantizes blocks 0 and 1 of the prompt
    score = k.abs().sum(dim=(1, 3))[0]
    # Block 0 alone: the five smallest of its 32 tokens.
    # After block 1: the five smallest of block 1 + the pool = its three + the two smallest of block 0.
    assert _pool(layer) == sorted([R + 2, R + 14, R + 29, 3, 9])
    assert _pool(layer) == sorted(torch.argsort(score[: 2 * R])[:5].tolist())
    # Tokens that left the pool (11, 17, 20) went to the overflow pool, still in full precision.
    st = layer.state.per_seq[0]["ott"]
    assert sorted(st["overflow"]) == [11, 17, 20] and not st["stopped"]
    kept = {3, 9, 11, 17, 20, R + 2, R + 14, R + 29}
    assert sorted(zip(layer.k.ov_rows, layer.k.ov_pos, strict=True)) == [(0, p) for p in sorted(kept)]
    assert layer.k.ov_pos == layer.v.ov_pos  # K and V of the same tokens


@pytest.mark.parametrize("fake_quant", [False, True])
def test_substituted_slots_never_reach_attention(fake_quant):
    k, v = _kv(R + 3, seed=1)
    k = _shrink(k, {1: 0.02, 7: 0.03, 8: 0.04, 19: 0.05, 31: 0.06})
    layer = _layer(fake_quant=fake_quant)
    layer.update(k, v)
    layer.commit_prompt([0])
    pool = [1, 7, 8, 19, 31]
    assert _pool(layer) == pool
    k_att, v_att = layer._timeline(layer.k), layer._timeline(layer.v)
    # The pool copies (exact full precision) are what attention sees at those positions ...
    assert torch.equal(k_att[:, :, pool], k[:, :, pool]) and torch.equal(v_att[:, :, pool], v[:, :, pool])
    # ... while the stored block holds the block mean there, quantized with the others (KIVI quantizer):
    others = [t for t in range(R) if t not in pool]
    k_sub, v_sub = k[:, :, :R].clone(), v[:, :, :R].clone()
    k_sub[:, :, pool] = k[:, :, others].mean(dim=2, keepdim=True)
    v_sub[:, :, pool] = v[:, :, others].mean(dim=2, keepdim=True)
    ref_k = fake_quantize(k_sub, 2, 32, "token", "float")
    ref_v = fake_quantize(v_sub, 2, 32, "channel", "float")
    torch.testing.assert_close(k_att[:, :, others], ref_k[:, :, others], rtol=0, atol=1e-6)
    torch.testing.assert_close(v_att[:, :, others], ref_v[:, :, others], rtol=0, atol=1e-6)
    stored = layer._dense_quantized(layer.k)[:, :, :R]
    torch.testing.assert_close(stored, ref_k, rtol=0, atol=1e-6)
    assert not torch.allclose(stored[:, :, pool], k[:, :, pool])  # the slot itself is garbage for attention
    # Window tokens are untouched full precision.
    assert torch.equal(k_att[:, :, R:], k[:, :, R:])


def test_decode_flushes_trace_too_and_window_tokens_are_not_traced_early():
    k, v = _kv(R + 10, seed=2)
    layer = _layer()
    layer.update(k, v)
    layer.commit_prompt([0])
    first = _pool(layer)
    g = torch.Generator().manual_seed(9)
    new_k = []
    for i in range(R - 10 + 1):  # the window fills up and flushes once, as a whole block
        kt = torch.randn(1, H, 1, D, generator=g) * (0.001 if i == 4 else 1.0)
        new_k.append(kt)
        layer.update(kt, torch.randn(1, H, 1, D, generator=g))
        if layer.k.n_units[0] == 1:
            assert _pool(layer) == first  # nothing traced before the block is quantized
    assert layer.k.n_units == [2] and layer.v.n_units == [2]  # keys and values block-flushed
    assert R + 10 + 4 in _pool(layer)  # the tiny decoded token entered the pool at its flush
    assert torch.equal(layer._timeline(layer.k)[:, :, R + 14], new_k[4][:, :, 0])


def test_tracing_stops_when_the_overflow_pool_is_full():
    k, v = _kv(3 * R, seed=3)
    k = _shrink(k, {2: 0.2, 4: 0.2, 6: 0.2, 8: 0.2, 10: 0.2,  # block 0 fills the pool
                    R + 1: 0.05, R + 3: 0.05, R + 5: 0.05,  # block 1 evicts 3 (overflow 2: does not fit)
                    2 * R + 1: 0.01})
    layer = _layer(overflow_size=2)
    layer.update(k, v)
    layer.commit_prompt([0])
    st = layer.state.per_seq[0]["ott"]
    assert st["stopped"] and st["overflow"] == []
    assert _pool(layer) == [2, 4, 6, 8, 10]  # frozen, still full precision
    assert sorted(layer.k.ov_pos) == [2, 4, 6, 8, 10]  # nothing from blocks 1 and 2
    # Stopped tracing quantizes later blocks exactly as KIVI (float minimum, no substitution).
    k_att = layer._timeline(layer.k)
    torch.testing.assert_close(k_att[:, :, R : 2 * R], fake_quantize(k[:, :, R : 2 * R], 2, 32, "token", "float"),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("layer_idx", [0, 1])
def test_first_two_layers_use_no_pool(layer_idx):
    k, v = _kv(R + 2, seed=4)
    k = _shrink(k, {5: 0.01})
    layer = _layer(layer_idx=layer_idx)
    layer.update(k, v)
    layer.commit_prompt([0])
    assert layer.k.ov_vals is None and layer.v.ov_vals is None
    torch.testing.assert_close(layer._timeline(layer.k)[:, :, :R], fake_quantize(k[:, :, :R], 2, 32, "token", "float"),
                               rtol=0, atol=1e-6)


def test_pools_are_per_sequence_with_left_padding_and_follow_beam_reordering():
    k, v = _kv(R + 4, seed=5, batch=2)
    k = _shrink(k, {6: 0.01})
    pad = [0, 4]
    k[1, :, :4] = 0.0  # padding positions (never enter a group)
    layer = _layer()
    layer.update(k, v)
    layer.commit_prompt(pad)
    alone = _layer()
    alone.update(k[1:, :, 4:], v[1:, :, 4:])
    alone.commit_prompt([0])
    assert _pool(layer, 1) == _pool(alone, 0)
    assert torch.equal(layer._timeline(layer.k)[1:, :, 4:], alone._timeline(alone.k))
    layer.reorder_cache(torch.tensor([1, 1]))  # beams: deep copies, no shared mutable pool
    assert _pool(layer, 0) == _pool(layer, 1) == _pool(alone, 0)
    assert layer.state.per_seq[0]["ott"] is not layer.state.per_seq[1]["ott"]
    assert sorted(layer.k.ov_rows) == [0] * 5 + [1] * 5


def test_validation_and_storage():
    with pytest.raises(oc.MethodConfigError, match="value_flush"):
        oc.get_method("ott", value_flush="token")
    spec = oc.get_method("ott")
    kivi_block = oc.get_method("kivi", value_flush="block")
    t = 32768
    assert spec.bits_per_element(t, 8, 128) == pytest.approx(kivi_block.bits_per_element(t, 8, 128) + 37 * 16 / t)
