"""Kernel-level cases that run on CPU (reference and paper-style arms): they build, step, and hold
the bytes the byte model says."""

from __future__ import annotations

import pytest
import torch

from oscar_eval.speed import kernel as K
from oscar_eval.speed import plan as pl
from oscar_eval.speed import roofline as rf

SHAPE = pl.Shape(8, 2, 128)


@pytest.mark.parametrize("impl", ["oscar-ref", "kivi-ref", "bf16-dynamic-flash", "bf16-dynamic-eager"])
def test_cpu_cases_build_and_step(impl):
    case = K.BUILDERS[impl](2, 1000, SHAPE, "cpu")
    case.fn()
    case.fn()
    method = rf.method_of(impl)
    assert case.kv_bytes == rf.kv_bytes(method, 2, 1000, SHAPE.num_kv_heads, SHAPE.head_dim)
    assert K.step_bytes(impl, 2, 1000, SHAPE) == case.kv_bytes + 2 * 2 * 8 * 128 * 2
    assert case.use_graph == impl.endswith("-ref")


def test_dynamic_cache_grows_one_token_per_call():
    for impl in ("bf16-dynamic-flash", "bf16-dynamic-eager"):
        case = K.BUILDERS[impl](1, 64, SHAPE, "cpu")
        assert case.state.get_seq_length() == 64
        for calls in range(1, 4):
            case.fn()
            assert case.state.get_seq_length() == 64 + calls, impl


def test_kernel_impls_explain_why_they_cannot_run_here():
    for impl in ("oscar-int2", "kivi-int2", "bf16-flash-attn"):
        with pytest.raises(K.Unavailable):
            K.BUILDERS[impl](1, 256, SHAPE, "cpu")


def test_reference_attention_of_folded_queries():
    q = torch.randn(1, 2, 4, 16)
    k = torch.randn(1, 2, 10, 16)
    v = torch.randn(1, 2, 10, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(K._ref_attention(q, k, v), ref, rtol=1e-5, atol=1e-5)
