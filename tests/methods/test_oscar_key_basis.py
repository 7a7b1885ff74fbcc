"""OScaR's optional key_basis="auto": per layer and sequence, the key quantization basis chosen at prefill
from the prompt's own queries."""

from __future__ import annotations

import pytest
import torch
from tiny_models import generate, llama

from oscar_core import make_cache
from oscar_core.hadamard import hadamard_transform
from oscar_core.kernel_cache import kernel_ineligibility
from oscar_core.methods import MethodConfigError, get_method
from oscar_core.methods.base import BlockContext, LayerState

DIM = 64


def _biased_keys(tokens: int = 256, heads: int = 2, seed: int = 0) -> torch.Tensor:
    """Model-basis keys as Qwen2.5's layer 0: small noise plus a large k_proj bias turned by RoPE in a few
    channel pairs (low frequencies act as offsets, high ones as sinusoids)."""
    g = torch.Generator().manual_seed(seed)
    k = 0.05 * torch.randn(1, heads, tokens, DIM, generator=g)
    pos = torch.arange(tokens, dtype=torch.float32)
    for pair, amp in ((0, 8.0), (3, 6.0), (20, 10.0), (31, 12.0)):
        angle = pos * 10000.0 ** (-pair / (DIM // 2))
        k[..., pair] += amp * torch.cos(angle)
        k[..., pair + DIM // 2] += amp * torch.sin(angle)
    return k


def _sink_keys(tokens: int = 256, heads: int = 2, seed: int = 0) -> torch.Tensor:
    """Gaussian keys plus low-norm sink tokens lying along channel 7: after token scaling the sink is an
    outlier of that channel's groups unless the rotation spreads it (the paper's case)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(1, heads, tokens, DIM, generator=g)
    k[:, :, ::16] = 0.0
    k[:, :, ::16, 7] = 0.5
    return k


def _queries_along(channels: list[int], tokens: int = 64, heads: int = 4, seed: int = 1) -> torch.Tensor:
    """Model-basis queries whose energy lies in the given channels."""
    g = torch.Generator().manual_seed(seed)
    q = torch.zeros(1, heads, tokens, DIM)
    q[..., channels] = torch.randn(1, heads, tokens, len(channels), generator=g)
    return q


def _logit_error(spec, k_model: torch.Tensor, q_model: torch.Tensor) -> float:
    """Relative change of the logits q . k when the keys go through the spec's cache encoding."""
    k_att, q_att = hadamard_transform(k_model), hadamard_transform(q_model)
    state = LayerState(None, {}, [{}])
    state.prompt_queries = q_att
    spec.observe_prompt(state, k_att, None, [0], None)
    ctx = BlockContext(state, torch.tensor([0]), torch.tensor([0]))
    k_hat = spec.decode_keys(spec.encode_keys(k_att, ctx), torch.float32, ctx)
    ref = q_att @ k_att.repeat_interleave(2, 1).transpose(-1, -2)
    got = q_att @ k_hat.repeat_interleave(2, 1).transpose(-1, -2)
    return float((got - ref).norm() / ref.norm())


def test_default_is_the_papers_rotated_basis_bit_for_bit():
    spec = get_method("oscar")
    assert spec.key_basis == "rotated" and not spec.observes_prompt_queries
    k = hadamard_transform(_biased_keys())
    ctx = spec.standalone_context(k, None)
    at, plain = spec.encode_keys(k, ctx), spec.encode_keys(k)
    assert "model_basis" not in at and at.keys() == plain.keys()
    assert all(torch.equal(at[n], plain[n]) for n in plain)


def test_queries_on_the_quiet_channels_choose_the_model_basis_and_it_helps():
    # the queries read the slowly turning bias pairs (near-constant, tiny group ranges); the rotation would pour every channel's error into them
    k, q = _biased_keys(), _queries_along([20, 52, 31, 63])
    auto, paper = get_method("oscar", key_basis="auto"), get_method("oscar")
    assert auto.model_basis_is_better(hadamard_transform(k), hadamard_transform(q))
    assert _logit_error(auto, k, q) < 0.5 * _logit_error(paper, k, q)


def test_queries_on_the_fast_turning_channels_keep_the_rotation():
    k, q = _biased_keys(), _queries_along([0, 32, 3, 35])
    auto, paper = get_method("oscar", key_basis="auto"), get_method("oscar")
    assert not auto.model_basis_is_better(hadamard_transform(k), hadamard_transform(q))
    assert _logit_error(auto, k, q) == _logit_error(paper, k, q)


def test_no_queries_or_too_short_keeps_the_rotated_basis():
    auto = get_method("oscar", key_basis="auto")
    q = hadamard_transform(_queries_along([20, 52, 31, 63]))
    assert not auto.model_basis_is_better(hadamard_transform(_biased_keys()), None)
    assert not auto.model_basis_is_better(hadamard_transform(_biased_keys(tokens=20)), q)
    assert auto.model_basis_is_better(hadamard_transform(_biased_keys(tokens=64)), q)  # two key groups


def test_auto_needs_rotation_and_keeps_off_the_kernels():
    with pytest.raises(MethodConfigError, match="rotation=True"):
        get_method("oscar", key_basis="auto", rotation=False)
    with pytest.raises(MethodConfigError, match="key_basis"):
        get_method("oscar", key_basis="sometimes")
    assert "key_basis" in kernel_ineligibility(get_method("oscar", key_basis="auto"), 128)


def test_through_the_cache_each_sequence_and_layer_records_its_choice():
    torch.set_num_threads(1)
    model, inputs = llama()
    x = inputs(160, batch=2)
    cache = make_cache(model, "oscar", key_basis="auto", kernels="off")
    seen = []
    original = type(cache.layers[0].spec).model_basis_is_better

    def spy(self, k, q):
        seen.append(q is not None and q.shape[2] == 160)
        return original(self, k, q)

    type(cache.layers[0].spec).model_basis_is_better = spy
    try:
        seqs, logits = generate(model, x, cache=cache, max_new_tokens=100)  # crosses a flush while decoding
    finally:
        type(cache.layers[0].spec).model_basis_is_better = original
    assert seen == [True] * 4  # 2 layers x 2 sequences, each with its prompt's queries
    assert seqs.shape == (2, 260) and torch.isfinite(logits).all()
    for layer in cache.layers:
        assert layer.state.prompt_queries is None and layer.prompt_queries is None  # not kept
        flags = layer.k.units["model_basis"]
        for b, seq in enumerate(layer.state.per_seq):
            assert layer.k.n_units[b] == 2  # the prompt's block and the one flushed while decoding
            assert bool(flags[b, 0]) == bool(flags[b, 1]) == seq["model_basis"]


def test_model_basis_choice_decodes_like_scaling_only_oscar():
    # a unit quantized in the model's basis is scaling-only OScaR's key, rotated into the attention basis
    k, q = _biased_keys(), hadamard_transform(_queries_along([20, 52, 31, 63]))
    auto = get_method("oscar", key_basis="auto")
    k_att = hadamard_transform(k)
    state = LayerState(None, {}, [{}])
    state.prompt_queries = q
    auto.observe_prompt(state, k_att, None, [0], None)
    ctx = BlockContext(state, torch.tensor([0]), torch.tensor([0]))
    got = auto.decode_keys(auto.encode_keys(k_att, ctx), torch.float32, ctx)
    plain = get_method("oscar", rotation=False)
    want = hadamard_transform(plain.decode_keys(plain.encode_keys(k), torch.float32))
    assert torch.allclose(got, want, atol=1e-5 * float(k.abs().max()))


def test_query_heads_are_matched_to_their_kv_head():
    # kv head 0: the biased keys; kv head 1: the sink keys (rotation wins for queries on channel 7).
    # Query heads 0, 1 belong to kv head 0 and 2, 3 to kv head 1 (transformers' repeat_kv).
    k = torch.cat([_biased_keys(heads=1), _sink_keys(heads=1)], dim=1)
    auto = get_method("oscar", key_basis="auto")
    first = _queries_along([20, 52, 31, 63])
    first[:, 2:] = 0.0
    assert auto.model_basis_is_better(hadamard_transform(k), hadamard_transform(first))
    second = _queries_along([7])
    second[:, :2] = 0.0
    assert not auto.model_basis_is_better(hadamard_transform(k), hadamard_transform(second))


def test_default_serializes_as_before_so_run_ids_stay():
    assert "key_basis" not in get_method("oscar").to_dict()["params"]
    assert get_method("oscar", key_basis="auto").to_dict()["params"]["key_basis"] == "auto"


def test_cli_overrides_reach_key_basis():
    from oscar_eval.api import check_overrides, method_spec, parse_overrides
    from oscar_eval.errors import UserError

    overrides = parse_overrides(["oscar.key_basis=auto"])
    check_overrides(["oscar", "kivi"], overrides)  # accepted although the default is not serialized
    assert method_spec("oscar", {"key_basis": "auto"}).key_basis == "auto"
    with pytest.raises(UserError, match="unknown parameter"):
        check_overrides(["oscar"], parse_overrides(["oscar.key_basiss=auto"]))
