"""Method specs (registry, defaults, overrides, validation, bit accounting) and their numerics."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import ClassVar, Literal

import pytest
import torch
from norms_oracle import naive_token_norms

import oscar_core as oc
from oscar_core.hadamard import hadamard_transform
from oscar_core.methods import MethodConfigError
from oscar_core.methods.base import MethodParameterTypeError
from oscar_core.methods.oscar import token_norms
from oscar_core.quant import SUPPORTED_BITS, fake_quantize
from oscar_core.reference import roundtrip_keys, roundtrip_values

H, D = 8, 128


def _keys(n=2, h=4, t=64, d=128, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, h, t, d, generator=g) + 0.5 * torch.randn(1, h, 1, d, generator=g)
    k[..., 5] += 12.0  # an outlier channel, as in real keys
    k[..., 70] -= 8.0
    return k


# ------------------------------------------------------------------------------ registry


def test_registry_lists_the_core_methods():
    names = oc.list_methods()
    for name in ("fp16", "kivi", "quarot", "oscar"):
        assert name in names
    for name in names:
        spec = oc.get_method(name)
        assert spec.name == name and isinstance(spec, oc.MethodSpec)
    assert oc.get_method("OScaR").name == "oscar"  # case-insensitive


def test_unknown_method_is_a_clear_error():
    with pytest.raises(MethodConfigError, match=r"unknown method 'kivy'.*available: .*kivi"):
        oc.get_method("kivy")
    assert issubclass(MethodConfigError, ValueError)


def test_specs_are_frozen_and_serializable():
    spec = oc.get_method("oscar")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.bits = 4  # type: ignore[misc]
    d = spec.to_dict()
    assert d["name"] == "oscar"
    assert d["params"] == {
        "bits": 2,
        "group_size": 32,
        "residual_length": 128,
        "value_flush": "block",
        "quantized_prefill": False,
        "rotation": True,
        "token_scaling": True,
    }


# ------------------------------------------------------------------------------ defaults


def test_kivi_defaults():
    s = oc.get_method("kivi")
    assert (s.bits, s.group_size, s.residual_length) == (2, 32, 128)
    assert s.value_flush == "token" and s.quantized_prefill is False
    assert s.key_axis == "token" and s.value_axis == "channel"  # per-channel keys, per-token values
    assert not s.rotates_keys and not s.rotates_values
    assert s.block_tokens == 128 and s.group_for("token", 128) == 32 and s.group_for("channel", 128) == 32
    # Float minimum, no clipping: exactly the documented quantizer.
    k = _keys()
    torch.testing.assert_close(roundtrip_keys(s, k), fake_quantize(k, 2, 32, "token", "float"), rtol=0, atol=0)
    torch.testing.assert_close(roundtrip_values(s, k), fake_quantize(k, 2, 32, "channel", "float"), rtol=0, atol=0)
    assert not torch.equal(roundtrip_keys(s, k), fake_quantize(k, 2, 32, "token", "integer"))


def test_oscar_defaults():
    s = oc.get_method("oscar")
    assert (s.bits, s.group_size, s.residual_length) == (2, 32, 128)
    assert s.value_flush == "block" and s.quantized_prefill is False
    assert s.rotation is True and s.token_scaling is True
    assert s.rotates_keys and s.rotates_values
    assert s.key_axis == "token" and s.value_axis == "channel"


def test_quarot_defaults_and_original_setting():
    s = oc.get_method("quarot")
    # G = one group per head: head_dim (128 for every model in the paper).
    assert (s.bits, s.group_for("channel", 128), s.residual_length, s.clip_ratio) == (2, 128, 128, 0.95)
    assert s.group_for("channel", 64) == 64 and oc.get_method("quarot", group_size=32).group_for("channel", 128) == 32
    assert s.quantized_prefill is False and s.value_flush == "block"
    assert s.key_axis == "channel" and s.value_axis == "channel"  # per-token, one group per head
    assert s.rotates_keys and s.rotates_values
    orig = oc.get_method("quarot", residual_length=0, quantized_prefill=True)
    assert orig.residual_length == 0 and orig.quantized_prefill is True and orig.block_tokens == 1
    k = _keys()
    assert torch.equal(roundtrip_keys(orig, k), roundtrip_keys(s, k))  # same numerics, other schedule


def test_fp16_is_the_identity():
    s = oc.get_method("fp16")
    assert s.quantizes is False and s.bits == 16
    k = _keys().half()
    out = roundtrip_keys(s, k)
    assert torch.equal(out, k) and out is not k
    assert torch.equal(roundtrip_values(s, k), k)
    assert s.bits_per_element(seq_len=32768, num_kv_heads=H, head_dim=D) == 16.0


# ------------------------------------------------------------------------------ overrides/validation


def test_overrides_work():
    s = oc.get_method("kivi", bits=4, group_size=64, residual_length=256, value_flush="block")
    assert (s.bits, s.group_size, s.residual_length, s.value_flush) == (4, 64, 256, "block")
    assert oc.get_method(s) is s
    s2 = oc.get_method(s, bits=2)
    assert s2.bits == 2 and s2.group_size == 64 and s.bits == 4
    q = oc.get_method("quarot", clip_ratio=1.0, group_size=64)
    assert q.clip_ratio == 1.0 and q.group_for("channel", 128) == 64
    o = oc.get_method("oscar", rotation=False, token_scaling=False)
    assert not o.rotates_keys and not o.rotates_values


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        ("kivi", {"residual_length": 100}, r"residual_length \(100\) must be a positive multiple of group_size \(32\)"),
        ("oscar", {"residual_length": 48}, r"multiple of group_size"),
        ("oscar", {"group_size": 48}, r"residual_length \(128\) must be a positive multiple of group_size \(48\)"),
        ("kivi", {"residual_length": 0}, r"positive multiple"),
        ("kivi", {"residual_length": -32}, r"residual_length must be >= 0"),
        ("oscar", {"bits": 5}, r"bits=5 is not supported"),
        ("kivi", {"bits": 16}, r"bits=16 is not supported"),
        ("quarot", {"bits": 0}, r"bits=0"),
        ("kivi", {"group_size": 0}, r"group_size must be positive"),
        ("kivi", {"value_flush": "sliding"}, r"value_flush must be 'block' or 'token'"),
        ("quarot", {"clip_ratio": 1.5}, r"quarot: clip_ratio must be in \(0, 1\]"),
        ("rotatekv", {"clip_ratio": 0.0}, r"rotatekv: clip_ratio must be in \(0, 1\], got 0\.0"),
        ("kivi", {"group": 32}, r"unknown parameter\(s\) \['group'\]"),
        ("kivi", {"rotation": True}, r"unknown parameter\(s\) \['rotation'\]"),
        ("oscar", {"clip_ratio": 0.9}, r"unknown parameter"),
    ],
)
def test_validation_errors_are_clear(name, overrides, match):
    with pytest.raises(MethodConfigError, match=match):
        oc.get_method(name, **overrides)


def test_fp16_validation_error_is_a_method_config_error():
    # Every spec's validation raises MethodConfigError (callers catch that one class).
    with pytest.raises(MethodConfigError, match="fp16: bits is fixed at 16"):
        oc.get_method("fp16", bits=2)


def test_quarot_accepts_any_residual_length():
    # Per-token groups need no whole-block flushes.
    assert oc.get_method("quarot", residual_length=100).residual_length == 100


@pytest.mark.parametrize("name", ["oscar", "quarot"])
def test_rotating_methods_need_power_of_two_head_dim(name):
    spec = oc.get_method(name, group_size=32) if name == "quarot" else oc.get_method(name)
    spec.check_model(num_kv_heads=8, head_dim=128)
    with pytest.raises(MethodConfigError, match=rf"{name}: the Hadamard transform needs a power-of-two head_dim; got 96"):
        spec.check_model(num_kv_heads=8, head_dim=96)
    with pytest.raises(MethodConfigError, match="power-of-two"):
        roundtrip_keys(spec, torch.randn(1, 2, 32, 96))


def test_non_rotating_methods_accept_other_head_dims():
    oc.get_method("kivi").check_model(num_kv_heads=8, head_dim=96)
    oc.get_method("oscar", rotation=False).check_model(num_kv_heads=8, head_dim=96)
    oc.get_method("fp16").check_model(num_kv_heads=8, head_dim=80)
    with pytest.raises(MethodConfigError, match="head_dim 80 is not a multiple of the values group size 32"):
        oc.get_method("kivi").check_model(num_kv_heads=8, head_dim=80)
    with pytest.raises(MethodConfigError, match="head_dim 64 is not a multiple of the keys group size 128"):
        oc.get_method("quarot", group_size=128).check_model(num_kv_heads=8, head_dim=64)
    oc.get_method("quarot").check_model(num_kv_heads=8, head_dim=64)  # default: one group per head


def test_reference_rejects_bad_shapes():
    spec = oc.get_method("kivi")
    with pytest.raises(ValueError, match=r"\[batch, kv_heads, tokens, head_dim\]"):
        roundtrip_keys(spec, torch.randn(4, 64, 128))
    with pytest.raises(ValueError, match="flushed whole"):
        roundtrip_keys(spec, torch.randn(1, 2, 33, 128))  # per-channel groups need whole blocks


# ------------------------------------------------------------------------------ bit accounting


def _bpe(seq, r, k_bits, v_bits, k_quant, v_quant, side_per_token=0, h=H, d=D) -> float:
    """The documented formula, spelled out with exact fractions."""
    ph = h * d
    total = (
        Fraction(k_quant * ph) * k_bits
        + Fraction(v_quant * ph) * v_bits
        + (seq - k_quant) * ph * 16
        + (seq - v_quant) * ph * 16
        + k_quant * side_per_token
    )
    return float(total / (2 * seq * ph))


def test_bits_per_element_kivi():
    s = oc.get_method("kivi")
    # 32768 tokens, R = 128: all keys quantized; the sliding value window keeps the last 128 values.
    # codes 2 bits + (16 + 16)/32 metadata = 3 bits; (32768*3 + 32640*3 + 128*16) / (2*32768).
    assert s.bits_per_element(32768, H, D) == 198272 / 65536 == 3.025390625
    assert abs(s.bits_per_element(32768, H, D) - 3.0) < 0.05
    assert s.bits_per_element(1000, H, D) == pytest.approx(_bpe(1000, 128, 3, 3, 896, 872))
    assert s.replace(value_flush="block").bits_per_element(32768, H, D) == 3.0
    assert s.bits_per_element(100, H, D) == 16.0  # nothing quantized yet


def test_bits_per_element_oscar():
    s = oc.get_method("oscar")
    # 3 bits per element plus one fp32 norm per token for all H*D key elements and the H*D values:
    # 3 + 32/(2*8*128) = 3.015625.
    assert s.bits_per_element(32768, H, D) == 3.015625
    assert abs(s.bits_per_element(32768, H, D) - 3.0) < 0.05
    assert s.bits_per_element(1000, H, D) == pytest.approx(_bpe(1000, 128, 3, 3, 896, 896, 32))
    assert s.replace(token_scaling=False).bits_per_element(32768, H, D) == 3.0
    assert s.bits_per_element(32768, 2, 64) == 3 + 32 / (2 * 2 * 64)


def test_bits_per_element_quarot():
    s = oc.get_method("quarot")
    # 2 + 32/128 = 2.25 (one scale+zero pair per 128-channel group).
    assert s.bits_per_element(32768, H, D) == 2.25
    assert s.bits_per_element(1000, H, D) == pytest.approx(_bpe(1000, 128, 2.25, 2.25, 896, 896))
    orig = oc.get_method("quarot", residual_length=0, quantized_prefill=True)
    assert orig.bits_per_element(1000, H, D) == 2.25  # no window at all
    assert s.bits_per_element(32768, H, 64) == 2.5  # one group per head of 64: 2 + 32/64


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("name", ["kivi", "oscar", "quarot"])
def test_reported_bits_match_the_encoded_block(name, bits):
    # One fully quantized block of R = 128 tokens: what bits_per_element reports must be what the
    # encoded block really occupies (packed codes + fp16 metadata + side data).
    overrides = {"bits": bits}
    if name == "kivi":
        overrides["value_flush"] = "block"
    spec = oc.get_method(name, **overrides)
    k = _keys(n=1, h=2, t=128)
    blocks = [spec.encode_keys(spec.keys_to_attention(k)), spec.encode_values(spec.values_to_cache(k))]
    nbits = 8 * sum(t.numel() * t.element_size() for b in blocks for t in b.values())
    actual, reported = nbits / (2 * k.numel()), spec.bits_per_element(128, 2, D)
    assert actual == reported, f"{name} {bits}-bit: encoded block uses {actual} bits/element, reported {reported}"


# ------------------------------------------------------------------------------ OScaR numerics


def test_token_norm_over_all_heads_fp32_zero_is_one():
    k = torch.zeros(1, 2, 3, 4)
    k[0, 0, 0, 0] = 3.0  # head 0
    k[0, 1, 0, 1] = 4.0  # head 1: together 5 (per head it would be 3 and 4)
    k[0, :, 2, :] = 0.5  # 8 entries of 0.5: sqrt(8 * 0.25) = sqrt(2)
    n = token_norms(k)
    assert n.shape == (1, 3) and n.dtype == torch.float32
    torch.testing.assert_close(n, torch.tensor([[5.0, 1.0, 2.0**0.5]]))  # token 1 is all zero -> 1
    # fp16 input: 300^2 overflows fp16, the norm is computed in fp32: 300*sqrt(8*128).
    big = torch.full((1, 8, 2, 128), 300.0, dtype=torch.float16)
    torch.testing.assert_close(token_norms(big), torch.full((1, 2), 300.0 * 32.0))


def test_oscar_block_carries_the_fp32_norm():
    spec = oc.get_method("oscar")
    k = _keys()
    block = spec.encode_keys(spec.keys_to_attention(k))
    assert block["norm"].shape == (2, 64) and block["norm"].dtype == torch.float32
    torch.testing.assert_close(block["norm"], k.pow(2).sum(dim=(1, 3)).sqrt(), rtol=1e-5, atol=1e-4)
    assert "norm" not in oc.get_method("oscar", token_scaling=False).encode_keys(k)


def _manual(k: torch.Tensor, rotate: bool, scale: bool) -> torch.Tensor:
    """rotate -> divide by the all-heads norm -> per-channel int quantize -> dequant -> times norm -> unrotate."""
    x = hadamard_transform(k) if rotate else k.float()
    n = token_norms(x)[:, None, :, None] if scale else torch.ones(1)  # its summation order: tested above
    x_hat = fake_quantize(x / n, 2, 32, "token", "integer") * n
    return hadamard_transform(x_hat) if rotate else x_hat


@pytest.mark.parametrize(
    "overrides, rotate, scale",
    [({}, True, True), ({"token_scaling": False}, True, False), ({"rotation": False}, False, True),
     ({"rotation": False, "token_scaling": False}, False, False)],
)
def test_oscar_roundtrip_equals_manual_pipeline(overrides, rotate, scale):
    spec = oc.get_method("oscar", **overrides)
    k = _keys()
    k[:, :, 9] = 0.0  # a token that is zero in every head: norm counts as 1, no NaN
    out = roundtrip_keys(spec, k)
    assert torch.isfinite(out).all() and out.dtype == k.dtype
    torch.testing.assert_close(out, _manual(k, rotate, scale), rtol=1e-6, atol=1e-6)
    assert out[:, :, 9].abs().max() < 1e-5


def test_oscar_ablation_off_is_integer_zero_kivi_layout():
    both_off = oc.get_method("oscar", rotation=False, token_scaling=False)
    assert both_off.value_flush == "block"
    k = _keys()
    assert torch.equal(roundtrip_keys(both_off, k), fake_quantize(k, 2, 32, "token", "integer"))
    assert torch.equal(roundtrip_values(both_off, k), fake_quantize(k, 2, 32, "channel", "integer"))
    kivi = oc.get_method("kivi")
    assert not torch.equal(roundtrip_keys(both_off, k), roundtrip_keys(kivi, k))  # float vs integer zero


def test_ablations_differ_from_full_oscar():
    k = _keys()
    full = roundtrip_keys(oc.get_method("oscar"), k)
    for overrides in ({"rotation": False}, {"token_scaling": False}):
        assert not torch.allclose(roundtrip_keys(oc.get_method("oscar", **overrides), k), full)


def test_oscar_values_rotated_per_token_integer():
    v = _keys(seed=4)
    spec = oc.get_method("oscar")
    expected = hadamard_transform(fake_quantize(hadamard_transform(v), 2, 32, "channel", "integer"))
    torch.testing.assert_close(roundtrip_values(spec, v), expected, rtol=0, atol=0)
    no_rot = oc.get_method("oscar", rotation=False)
    assert torch.equal(roundtrip_values(no_rot, v), fake_quantize(v, 2, 32, "channel", "integer"))
    # Token scaling is keys only.
    assert torch.equal(roundtrip_values(oc.get_method("oscar", token_scaling=False), v), roundtrip_values(spec, v))


def test_oscar_bf16_keys():
    k = _keys().bfloat16()
    out = roundtrip_keys(oc.get_method("oscar"), k)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    kf = k.float()
    err_bf16 = (out.float() - kf).norm() / kf.norm()
    err_fp32 = (roundtrip_keys(oc.get_method("oscar"), kf) - kf).norm() / kf.norm()
    assert abs(err_bf16 - err_fp32) < 0.05 * err_fp32  # bf16 I/O costs nothing measurable at 2 bits


def test_quarot_roundtrip_equals_manual_pipeline():
    k = _keys()
    spec = oc.get_method("quarot")
    expected = hadamard_transform(fake_quantize(hadamard_transform(k), 2, 128, "channel", "integer", 0.95))
    torch.testing.assert_close(roundtrip_keys(spec, k), expected, rtol=0, atol=0)
    torch.testing.assert_close(roundtrip_values(spec, k), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["kivi", "oscar", "quarot"])
def test_reconstruction_improves_with_bits(name):
    k = _keys()
    errs = [(roundtrip_keys(oc.get_method(name, bits=b), k) - k).norm().item() for b in (1, 2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.02 * k.norm().item()


def test_token_norm_sums_in_its_documented_order():
    # the order is part of the definition (the CUDA pack kernel reproduces it bit for bit): per head
    # channel by channel with fp32 rounding at every step, then the heads in order
    g = torch.Generator().manual_seed(5)
    k = torch.randn(2, 3, 5, 16, generator=g) * torch.logspace(-3, 3, 16)
    n = token_norms(k)
    for b in range(2):
        for t in range(5):
            total = None
            for h in range(3):
                s = torch.tensor(0.0)
                for c in range(16):
                    x = k[b, h, t, c]
                    s = s + x * x if c else x * x
                total = s if total is None else total + s
            assert torch.equal(n[b, t], total.sqrt()), (b, t)


def test_token_norm_overflow_guard_keeps_the_bits_where_nothing_overflowed():
    k = _keys(n=2, h=8, t=16)
    k[0, 2, 3, 7] = 2.0**62  # scaled by the guard (max >= 2^57); its sum of squares, 2^124, fits fp32
    k[1, :, 5] *= 1e17  # every element scaled: about 2^126 in all, still finite
    k[1, 0, 9, 1] = 2.0**63  # shift 7: the square of the next element, normal before, becomes subnormal
    k[1, 0, 9, 0] = 3 * 2.0**-61
    old = naive_token_norms(k)
    assert torch.isfinite(old).all()
    assert torch.equal(token_norms(k), old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_norm_does_not_overflow_fp32(dtype):
    k = torch.full((1, 8, 3, 128), 1e30, dtype=dtype)  # before: (1e30)^2 = inf in fp32
    k[0, :, 1] = torch.finfo(dtype).max  # its true norm (32x the max) is past fp32: saturates
    k[0, :, 2] = 0.5
    n = token_norms(k)
    exact = k.double().pow(2).sum(dim=(1, 3)).sqrt()
    assert torch.isfinite(n).all()
    torch.testing.assert_close(n[0, 0].double(), exact[0, 0], rtol=1e-6, atol=0)
    assert n[0, 1] == torch.finfo(torch.float32).max and n[0, 2] == 16.0


def test_token_norm_propagates_inf_and_nan():
    k = _keys(n=1, h=2, t=4)
    k[0, 1, 1, 3], k[0, 0, 2, 0] = math.inf, math.nan
    n = token_norms(k)
    assert n[0, 1] == math.inf and torch.isnan(n[0, 2]) and torch.isfinite(n[0, [0, 3]]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_oscar_roundtrip_at_the_dtype_max_is_finite(dtype):
    # fp16: the rotation of a 65504-channel passes fp16's range (it was inf, then NaN); bf16/fp32: the
    # token norm of 1e30-sized keys overflowed fp32 (the keys became 0/inf = NaN)
    big = torch.finfo(dtype).max
    k = _keys(n=1, h=4, t=64, d=128).to(dtype)
    k[0, :, 10:20, 5] = big
    k[0, 1, 30, :] = -big
    for spec in (oc.get_method("oscar"), oc.get_method("oscar", rotation=False), oc.get_method("quarot")):
        for fn in (roundtrip_keys, roundtrip_values):
            out = fn(spec, k)
            assert out.dtype == dtype and torch.isfinite(out).all(), (spec.name, fn.__name__)


def test_oscar_keys_far_past_fp16_reconstruct_to_scale():
    # Omni-token scaling normalizes the key, so bf16 keys of any magnitude keep their relative error
    k = _keys(n=1, h=4, t=64, d=128)
    small = roundtrip_keys(oc.get_method("oscar"), k)
    huge = roundtrip_keys(oc.get_method("oscar"), k * 2.0**100)
    torch.testing.assert_close(huge, small * 2.0**100, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ott_block_mean_does_not_overflow(dtype):
    spec = oc.get_method("ott")
    k = torch.full((1, 2, 128, 64), torch.finfo(dtype).max / 2, dtype=dtype)
    k[0, :, 40] = 0.0  # the traced (smallest-|k|) tokens get the block mean: 127 halves of the max
    out = roundtrip_keys(spec, k)
    assert torch.isfinite(out).all()


def test_turboquant_norm_does_not_overflow_and_propagates_inf():
    spec = oc.get_method("turboquant+")
    x = _keys(n=1, h=2, t=32, d=128) * 1e30  # before: ||x|| = inf in fp32, stored as 65504, x/inf = 0
    out = roundtrip_values(spec, x)
    assert torch.isfinite(out).all() and float(out.abs().max()) > 1000.0
    x = _keys(n=1, h=2, t=32, d=128)
    x[0, 1, 7, 9] = math.inf  # before: the norm's inf was clamped to 65504: a finite vector came back
    out = roundtrip_values(spec, x)
    assert not torch.isfinite(out[0, 1, 7, 9]) and torch.isfinite(out[0, 0]).all()


def test_rotatekv_keys_near_fp32_max_are_finite():
    spec = oc.get_method("rotatekv", calibration="identity")
    k = _keys(n=1, h=4, t=32, d=128)
    k[0, :, 3] = torch.finfo(torch.float32).max * 0.9  # undoing RoPE on these overflowed fp32 (inf - inf)
    for fn in (roundtrip_keys, roundtrip_values):
        assert torch.isfinite(fn(spec, k)).all()


@pytest.mark.parametrize("name", [m for m in oc.list_methods() if m != "fp16"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_inputs_propagate_in_every_method(name, bad):
    # the documented policy: a non-finite element never comes back as a number
    spec = oc.get_method(name, **({"calibration": "identity"} if name == "rotatekv" else {}))
    x = _keys(n=1, h=4, t=64, d=128)
    x[0, 2, 33, 17] = bad
    for fn in (roundtrip_keys, roundtrip_values):
        out = fn(spec, x)
        assert not torch.isfinite(out[0, 2, 33, 17]), fn.__name__


# ------------------------------------------------------------------------------ parameter types


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        ("oscar", {"bits": 2.0}, r"oscar: bits must be an int, got 2\.0 \(float\)"),
        ("oscar", {"bits": True}, r"oscar: bits must be an int, got True \(bool\)"),
        ("oscar", {"rotation": "maybe"}, r"oscar: rotation must be a bool \(true or false\), got 'maybe' \(str\)"),
        ("oscar", {"token_scaling": 1}, r"token_scaling must be a bool"),
        ("kivi", {"group_size": "32"}, r"kivi: group_size must be an int, got '32' \(str\)"),
        ("kivi", {"value_flush": "tokens"}, r"value_flush must be 'block' or 'token', got 'tokens'"),
        ("quarot", {"clip_ratio": "0.9"}, r"clip_ratio must be a finite number, got '0\.9'"),
        ("quarot", {"clip_ratio": math.nan}, r"clip_ratio must be a finite number, got nan"),
        ("quarot", {"group_size": 64.0}, r"group_size must be an int or None, got 64\.0"),
        ("rotatekv", {"calibration": 3}, r"calibration must be a string or None, got 3 \(int\)"),
        ("ott", {"pool_size": 5.5}, r"pool_size must be an int, got 5\.5"),
        ("fp16", {"bits": 16.0}, r"fp16: bits must be an int"),
        ("turboquant+", {"seed": None}, r"seed must be an int, got None"),
    ],
)
def test_parameter_types_are_checked(name, overrides, match):
    with pytest.raises(MethodConfigError, match=match) as info:
        oc.get_method(name, **overrides)
    assert isinstance(info.value, TypeError)  # MethodParameterTypeError is both


def test_type_check_is_generic_for_any_spec_class():
    @dataclasses.dataclass(frozen=True)
    class Custom(oc.get_method("kivi").__class__):
        name: ClassVar[str] = "custom"
        alpha: float = 0.5
        mode: Literal["a", "b"] = "a"
        tag: str | None = None

    assert Custom(alpha=1).alpha == 1.0 and isinstance(Custom(alpha=1).alpha, float)
    for bad in ({"alpha": True}, {"mode": "c"}, {"tag": 7}, {"bits": 3.0}):
        with pytest.raises(MethodParameterTypeError, match=next(iter(bad))):
            Custom(**bad)

    @dataclasses.dataclass(frozen=True)
    class Odd(Custom):  # an annotation its module cannot resolve: unchecked, the rest still checked
        extra: NoSuchType = None  # type: ignore[name-defined]  # noqa: F821

    assert Odd(extra=object()).alpha == 0.5
    with pytest.raises(MethodParameterTypeError, match="alpha"):
        Odd(alpha="x")


def test_equal_values_of_another_numeric_type_serialize_equally():
    # an int for a float field is stored as the float: --set clip_ratio=1 and 1.0 are one configuration
    assert oc.get_method("quarot", clip_ratio=1).to_dict() == oc.get_method("quarot", clip_ratio=1.0).to_dict()
    assert type(oc.get_method("quarot", clip_ratio=1).clip_ratio) is float


# ------------------------------------------------------------------------------ harness --set


def _specs(pairs: list[str], methods: list[str]):
    from oscar_eval.api import method_spec, overrides_for, parse_overrides

    ov = parse_overrides(pairs)
    return [method_spec(m, overrides_for(m, ov, methods)) for m in methods]


@pytest.mark.parametrize(
    "pairs, methods, match",
    [
        (["oscr.bits=3"], ["oscar", "kivi"], r"--set oscr\.bits: unknown method prefix 'oscr' "
                                             r"\(methods in this run: oscar, kivi\)"),
        (["quarot.clip_ratio=0.9"], ["oscar", "kivi"], r"unknown method prefix 'quarot'"),
        (["bitz=3"], ["oscar", "kivi"], r"--set bitz: unknown parameter 'bitz' for every method of this run "
                                        r"\(oscar, kivi\) \(oscar has bits, .*; kivi has arithmetic, bits, "),
        (["oscar.bitz=3"], ["oscar", "kivi"], r"unknown parameter 'bitz' for method 'oscar'"),
        (["clip_ratio=0.9"], ["quarot", "oscar"], r"'clip_ratio' is not a parameter of oscar, .*METHOD\.clip_ratio"),
        (["bits=2.0"], ["oscar"], r"method 'oscar': bits must be an int, got 2\.0 \(float\)"),
        (["bits=true"], ["oscar"], r"bits must be an int, got True \(bool\)"),
        (["rotation=maybe"], ["oscar"], r"rotation must be a bool \(true or false\), got 'maybe'"),
        (["bits=3", "bits=4"], ["oscar"], r"--set bits is given twice \(bits=3 and bits=4\)"),
        ([".bits=3"], ["oscar"], r"expected key or method\.key"),
    ],
)
def test_set_overrides_that_reach_no_parameter_are_errors(pairs, methods, match):
    from oscar_eval.cli import UserError

    with pytest.raises(UserError, match=match):
        _specs(pairs, methods)


def test_set_overrides_reach_their_methods():
    oscar, kivi = _specs(["oscar.bits=3", "KIVI.residual_length=64", "group_size=64"], ["oscar", "kivi"])
    assert (oscar.bits, oscar.group_size, oscar.residual_length) == (3, 64, 128)
    assert (kivi.bits, kivi.group_size, kivi.residual_length) == (2, 64, 64)
    (quarot,) = _specs(["clip_ratio=1e-1"], ["quarot"])  # YAML 1.1 reads 1e-1 as a string
    assert quarot.clip_ratio == 0.1
    (oscar,) = _specs(["rotation=false"], ["oscar"])
    assert oscar.rotation is False


# ------------------------------------------------------------------------------ the packed-KV attention must run


def _tiny_llama():
    from tiny_models import llama

    return llama()


def test_switching_the_attention_implementation_after_make_cache_raises():
    from tiny_models import generate

    model, inputs = _tiny_llama()
    inp = inputs(40)
    cache = oc.make_cache(model, "oscar", residual_length=32)
    generate(model, inp, cache, max_new_tokens=2)  # the packed path itself works
    cache = oc.make_cache(model, "oscar", residual_length=32)
    model.config._attn_implementation = "sdpa"
    try:
        with pytest.raises(RuntimeError, match=r"layer 0 would attend without its packed KV history: its "
                                               r"attention implementation is 'sdpa', not 'oscar_kv'"):
            generate(model, inp, cache, max_new_tokens=2)
        # an fp16 cache made later puts the model's own attention back: the oscar cache must refuse too
        cache = oc.make_cache(model, "oscar", residual_length=32)
        oc.make_cache(model, "fp16")
        with pytest.raises(RuntimeError, match="would attend without its packed KV history"):
            generate(model, inp, cache, max_new_tokens=2)
    finally:
        oc.make_cache(model, "oscar")


def test_a_foreign_attention_function_under_our_name_is_caught_at_the_next_update():
    from tiny_models import generate
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    from oscar_core.cache.attention import ATTN_NAME, packed_kv_attention

    model, inputs = _tiny_llama()
    cache = oc.make_cache(model, "kivi", residual_length=32)
    AttentionInterface.register(ATTN_NAME, sdpa_attention_forward)  # config says oscar_kv, yet not ours
    try:
        with pytest.raises(RuntimeError, match="never taken by the packed-KV attention function"):
            generate(model, inputs(40), cache, max_new_tokens=2)
    finally:
        AttentionInterface.register(ATTN_NAME, packed_kv_attention)


def test_filling_a_cache_through_update_and_commit_is_still_allowed():
    model, inputs = _tiny_llama()
    cache = oc.make_cache(model, "oscar", residual_length=32)
    cfg = model.config
    ids = inputs(41)["input_ids"]
    with torch.no_grad():  # the speed harness's pattern: store a prompt through Cache.update, commit it
        for i in range(cfg.num_hidden_layers):
            k = torch.randn(1, cfg.num_key_value_heads, 40, cfg.head_dim)
            cache.update(k, torch.randn_like(k), i)
            cache.layers[i].commit_prompt([0])
        logits = model(ids[:, 40:], past_key_values=cache, position_ids=torch.tensor([[40]])).logits
        assert torch.isfinite(logits).all()
        model(ids[:, 40:], past_key_values=cache, position_ids=torch.tensor([[41]]))  # and the next step
