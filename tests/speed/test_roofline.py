"""Bytes per decode step, checked against hand arithmetic (PERFORMANCE.md)."""

from __future__ import annotations

import pytest

from oscar_eval.speed import roofline as rf


def test_bf16_bytes_per_token_head_is_512_at_d128():
    assert rf.bf16_bytes_per_token_head(128) == 512


def test_oscar_bytes_per_token_head_is_about_97():
    lay = rf.layout_for("oscar")
    # K codes 128*2/8 = 32, K scale+zero 128 channels * 2 fp16 / 32 tokens = 16,
    # V codes 32, V scale+zero (128/32 groups) * 2 fp16 = 16, norm 4 B / 8 heads = 0.5.
    assert rf.packed_key_bytes_per_token_head(128, lay) == 32 + 16
    assert rf.packed_value_bytes_per_token_head(128, lay) == 32 + 16
    assert rf.packed_bytes_per_token_head(128, 8, lay) == 96.5
    assert 512 / 96.5 == pytest.approx(5.3, abs=0.01)


def test_kivi_has_no_norm():
    assert rf.packed_bytes_per_token_head(128, 8, rf.layout_for("kivi")) == 96.0


def test_split_tokens_decode_state_keeps_1_to_R_in_the_window():
    lay = rf.layout_for("oscar")
    assert rf.split_tokens(131072, lay) == (130944, 128, 130944, 128)
    assert rf.split_tokens(129, lay) == (128, 1, 128, 1)
    assert rf.split_tokens(128, lay) == (0, 128, 0, 128)
    # after a prompt (bits_per_element convention)
    assert rf.split_tokens(131072, lay, decode=False) == (131072, 0, 131072, 0)


def test_kivi_sliding_value_window():
    lay = rf.layout_for("kivi")
    # keys flushed in blocks; the last 128 values are always full precision
    assert rf.split_tokens(1000, lay) == (896, 104, 872, 128)


def test_attention_step_bytes_bf16_by_hand():
    # batch 1, 128K, 32 q heads, 8 kv heads, D 128:
    # KV: 131072 tokens * 8 heads * 512 B = 536870912; q + o: 2 * 32 * 128 * 2 = 16384
    assert rf.attention_step_bytes("bf16", 1, 131072, 32, 8, 128) == 536870912 + 16384


def test_attention_step_bytes_oscar_by_hand():
    # 130944 quantized tokens: per head 96 B + norm 4 B per token; 128 window tokens in bf16.
    quant = 130944 * (8 * 96 + 4)
    window = 128 * 8 * 512
    qo = 2 * 32 * 128 * 2
    assert rf.attention_step_bytes("oscar", 1, 131072, 32, 8, 128) == quant + window + qo
    ratio = rf.kv_bytes("bf16", 1, 131072, 8, 128) / rf.kv_bytes("oscar", 1, 131072, 8, 128)
    assert 5.2 < ratio < 5.35


def test_batch_scales_linearly():
    one = rf.kv_bytes("oscar", 1, 4096, 8, 128)
    assert rf.kv_bytes("oscar", 48, 4096, 8, 128) == 48 * one


def test_kivi_bytes_by_hand():
    # T = 4096: keys 3968 quantized + 128 bf16; values 3968 quantized + 128 bf16 (sliding window)
    per_head = 3968 * 48 + 3968 * 48 + (128 + 128) * 128 * 2
    assert rf.kv_bytes("kivi", 1, 4096, 8, 128) == 8 * per_head


def test_model_step_bytes_adds_weights_once_and_layers():
    att = rf.attention_step_bytes("bf16", 2, 1024, 32, 8, 128)
    assert rf.model_step_bytes(1000.0, "bf16", 2, 1024, 36, 32, 8, 128) == 1000.0 + 36 * att


def test_roofline_time_and_fraction():
    # 4.3 TB/s: 4.3e12 B/s = 4.3e6 B/us; 537 MB -> ~124.9 us
    us = rf.roofline_us(536870912, 4300.0)
    assert us == pytest.approx(536870912 / 4.3e6)
    assert rf.roofline_fraction(536870912, 2 * us, 4300.0) == pytest.approx(0.5)
    assert rf.achieved_gbps(4.3e6, 1.0) == pytest.approx(4300.0)
    assert rf.roofline_fraction(1.0, 0.0, 4300.0) == 0.0
    with pytest.raises(ValueError):
        rf.roofline_us(1.0, 0.0)


def test_method_of_impl_names():
    assert rf.method_of("oscar-int2") == "oscar"
    assert rf.method_of("kivi-ref") == "kivi"
    assert rf.method_of("bf16-sdpa-cudnn") == "bf16"
    with pytest.raises(ValueError):
        rf.layout_for("quarot")


def test_byte_model_agrees_with_the_method_specs_bits_per_element():
    """The profiler's bytes and oscar_core's storage accounting describe the same cache."""
    import oscar_core as oc

    for method in ("oscar", "kivi"):
        spec = oc.get_method(method)
        for t in (1024, 4096, 131072):
            bits = spec.bits_per_element(seq_len=t, num_kv_heads=8, head_dim=128)
            expected = bits * 2 * t * 8 * 128 / 8
            assert rf.kv_bytes(method, 1, t, 8, 128, decode=False) == pytest.approx(expected)
