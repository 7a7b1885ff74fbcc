"""DESIGN.md's public API contract, exactly as it is written there: the names users, notebooks and other
tools call keep working (issue 18: the layout work must not move them)."""

from __future__ import annotations

import inspect

import torch
from tiny_models import llama

import oscar_core as oc


def test_the_core_contract_as_written():
    names = oc.list_methods()
    assert {"fp16", "kivi", "quarot", "rotatekv", "ott", "turboquant+", "oscar"} <= set(names)
    spec = oc.get_method("oscar")
    assert (spec.bits, spec.group_size, spec.residual_length) == (2, 32, 128)  # the paper's defaults
    kivi = oc.get_method("kivi", bits=2, group_size=32, residual_length=128)
    assert 2 < kivi.bits_per_element(seq_len=32768, num_kv_heads=8, head_dim=128) < 4

    model, inputs = llama()
    cache = oc.make_cache(model, "oscar")
    with torch.inference_mode():
        out = model.generate(**inputs(40), past_key_values=cache, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 44)

    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64)
    k_hat, v_hat = oc.reference.roundtrip_keys(spec, k), oc.reference.roundtrip_values(spec, v)
    assert k_hat.shape == k.shape and v_hat.shape == v.shape
    # dequantized in the original basis: close to the input, not to its rotation
    assert (k_hat - k).norm() / k.norm() < 0.6 and (v_hat - v).norm() / v.norm() < 0.6


def test_a_python_equivalent_for_each_command(tmp_path):
    import pytest

    from oscar_eval.api import run_benchmark
    from oscar_eval.commands.tni import run_tni
    from oscar_eval.report import render_report
    from oscar_eval.speed import NoCudaError, run_speed

    assert {"benchmark", "methods", "model"} <= set(inspect.signature(run_benchmark).parameters)
    assert {"model", "text", "methods", "out"} <= set(inspect.signature(run_tni).parameters)
    # `oscar-eval report` on an empty store still writes both documents (a missing one is a clear error)
    (tmp_path / "results" / "runs").mkdir(parents=True)
    done = render_report(tmp_path / "results", tmp_path / "report")
    assert done.html.is_file() and done.markdown.is_file()
    if not torch.cuda.is_available():  # `oscar-eval speed` without a GPU: its own clear error, nothing measured
        with pytest.raises(NoCudaError):
            run_speed(levels=("kernel",), log=lambda m: None)
