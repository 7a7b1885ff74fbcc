"""Sweep planning: which points are measured, which are skipped for memory, and why."""

from __future__ import annotations

import pytest

from oscar_eval import archs
from oscar_eval.speed import plan as pl
from oscar_eval.speed import roofline as rf

GiB = 2**30
QWEN3_8B_ATTN = pl.Shape(32, 8, 128)


def test_default_sweeps_are_performance_md():
    assert pl.CONTEXT_SWEEP == (1024, 4096, 16384, 32768, 65536, 131072)
    assert pl.BATCH_SWEEP == (1, 8, 16, 32, 48, 64, 128)
    pts = pl.sweep_shapes()
    keys = [(b, c) for b, c, _ in pts]
    assert len(keys) == len(set(keys))
    assert keys[:6] == [(1, c) for c in pl.CONTEXT_SWEEP]
    # (1, 4K) is in both sweeps: measured once, tagged twice
    tags = {(b, c): t for b, c, t in pts}
    assert tags[(1, 4096)] == ["context-sweep", "batch-sweep"]
    # the paper's two settings are in, and tagged
    assert "paper" in tags[(1, 131072)] and "paper" in tags[(48, 4096)]
    assert len(keys) == 6 + 7 - 1


def test_paper_points_added_when_not_in_the_sweeps():
    pts = pl.sweep_shapes(contexts=[1024], batches=[8], paper=True)
    assert [(b, c) for b, c, _ in pts] == [(1, 1024), (8, 4096), (1, 131072), (48, 4096)]
    assert [(b, c) for b, c, _ in pl.sweep_shapes([1024], [8], paper=False)] == [(1, 1024), (8, 4096)]


def test_working_set_sets_exceed_l2():
    one = rf.kv_bytes("bf16", 1, 1024, 8, 128)  # 4 MiB
    n = pl.n_sets(one)
    assert n * one >= 4 * 60e6
    assert pl.n_sets(rf.kv_bytes("bf16", 1, 131072, 8, 128)) == 1
    assert pl.n_sets(1) == pl.MAX_SETS


def test_plan_skips_points_over_device_memory_with_a_reason():
    pts = pl.sweep_shapes()
    planned = pl.plan("kernel", "qwen3-8b", QWEN3_8B_ATTN, ["bf16-sdpa-cudnn"], pts, available_bytes=1 * GiB)
    by = {(p.batch, p.context): p for p in planned}
    assert by[(1, 1024)].skip is None
    # 128 x 4K bf16 one layer = 2 GiB > 1 GiB
    assert by[(128, 4096)].skip and "device memory" in by[(128, 4096)].skip
    assert by[(1, 131072)].skip is None  # 512 MiB


def test_plan_respects_a_budget_below_device_memory():
    pts = [(64, 4096, ["batch-sweep"])]
    planned = pl.plan("kernel", "a", QWEN3_8B_ATTN, ["bf16-sdpa-cudnn"], pts, available_bytes=100 * GiB,
                      budget_bytes=512 << 20)
    assert "memory budget" in planned[0].skip


def test_reference_paths_are_skipped_at_large_token_counts():
    pts = [(1, 131072, []), (1, 4096, [])]
    planned = pl.plan("kernel", "a", QWEN3_8B_ATTN, ["oscar-ref"], pts, 100 * GiB, ref_max_tokens=65536)
    assert "reference path" in planned[0].skip
    assert planned[1].skip is None


def _e2e_shape(name: str, layers: int | None = None) -> pl.Shape:
    v = archs.get_arch(name, layers)
    return pl.Shape(v["num_attention_heads"], v["num_key_value_heads"], v["head_dim"], v["num_hidden_layers"],
                    archs.param_count(v) * 2, v["vocab_size"], v["hidden_size"], v["intermediate_size"])


def test_e2e_memory_bf16_grows_with_the_cache_and_packed_is_smaller():
    s = _e2e_shape("qwen3-8b")
    b16 = pl.e2e_mem_estimate("bf16-static-graph", 1, 131072, s)
    osc = pl.e2e_mem_estimate("oscar-cache", 1, 131072, s)
    # 36 layers * 128K * 8 heads * 512 B = 18 GiB of bf16 cache on top of ~15 GiB of weights
    assert b16 > s.weight_bytes + 18 * GiB
    assert osc < b16


def test_e2e_full_depth_batch_128_does_not_fit_a_40_gib_budget():
    s = _e2e_shape("qwen3-8b")
    planned = pl.plan("e2e", "qwen3-8b", s, ["bf16-static-graph"], [(128, 4096, [])], 139 * GiB, 40 * GiB)
    assert planned[0].skip


def test_max_batch_under_budget():
    assert pl.max_batch_under_budget(100, 20, 10) == 8
    assert pl.max_batch_under_budget(25, 20, 10) == 0
    assert pl.max_batch_under_budget(10**12, 0, 1, cap=64) == 64
    with pytest.raises(ValueError):
        pl.max_batch_under_budget(100, 0, 0)


def test_packed_fits_about_5x_more_sequences_than_bf16():
    s = _e2e_shape("qwen3-8b")
    budget, fixed = 120 * GiB, s.weight_bytes
    b16 = pl.max_batch_under_budget(budget, fixed, pl.e2e_per_sequence_bytes("bf16", 32768, s))
    osc = pl.max_batch_under_budget(budget, fixed, pl.e2e_per_sequence_bytes("oscar", 32768, s))
    assert 4.5 < osc / b16 < 5.5


def test_budget_limits_the_steady_state_not_the_profilers_fill():
    s = _e2e_shape("qwen3-8b", layers=8)
    steady = pl.e2e_mem_estimate("oscar-kernel-static", 256, 4096, s, steady=True)
    peak = pl.e2e_mem_estimate("oscar-kernel-static", 256, 4096, s)
    assert peak > steady  # filling a layer with random K/V and packing it costs transients
    budget = (steady + peak) // 2
    (p,) = pl.plan("e2e", "qwen3-8b", s, ["oscar-kernel-static"], [(256, 4096, [])], 139 * GiB, budget)
    assert p.skip is None
    (p,) = pl.plan("e2e", "qwen3-8b", s, ["oscar-kernel-static"], [(256, 4096, [])], 139 * GiB, steady - 1)
    assert "memory budget" in p.skip
    (p,) = pl.plan("e2e", "qwen3-8b", s, ["oscar-kernel-static"], [(256, 4096, [])], peak - 1, None)
    assert "device memory" in p.skip


def test_order_points_puts_the_paper_settings_first():
    pts = pl.plan("e2e", "a", _e2e_shape("qwen3-8b", 2), ["bf16-static-graph", "oscar-cache"],
                  pl.sweep_shapes(), 139 * GiB)
    ordered = pl.order_points(pts, ["bf16-static-graph", "oscar-cache"])
    assert [(p.batch, p.context) for p in ordered[:4]] == [(1, 131072), (1, 131072), (48, 4096), (48, 4096)]
    assert [p.impl for p in ordered[:2]] == ["bf16-static-graph", "oscar-cache"]
    assert (ordered[4].batch, ordered[4].context) == (1, 1024)


def test_kivi_arms_are_planned_with_kivis_bytes():
    s = _e2e_shape("qwen3-8b")
    assert {"kivi-kernel-static", "kivi-cache"} <= set(pl.E2E_IMPLS) and "kivi-int2" in pl.KERNEL_IMPLS
    b16 = pl.e2e_mem_estimate("bf16-static-graph", 1, 131072, s, steady=True)
    kivi_k = pl.e2e_mem_estimate("kivi-kernel-static", 1, 131072, s, steady=True)
    kivi_ref = pl.e2e_mem_estimate("kivi-cache", 1, 131072, s, steady=True)
    osc_k = pl.e2e_mem_estimate("oscar-kernel-static", 1, 131072, s, steady=True)
    # KIVI keeps no token norm (fewer bytes than OScaR) and a sliding value window; the reference
    # cache dequantizes a layer per step on top of that
    assert kivi_k < osc_k < b16
    assert kivi_ref > kivi_k
    # the kernel arm holds KIVI with values flushed in blocks with the keys (equal quantized lengths)
    from oscar_eval.speed.packed_kernel import kernel_layout

    lay = kernel_layout("kivi")
    assert lay.value_window == "block" and not lay.token_norm
    assert rf.split_tokens(131072, lay)[0] == rf.split_tokens(131072, lay)[2]
