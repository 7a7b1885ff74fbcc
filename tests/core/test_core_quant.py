"""The one quantizer (oscar_core.quant) against hand-computed values and the formulas of METHODS.md.

Hand cases use groups whose scale is exact in fp16, so s, z (or mn), the codes and x_hat are worked
out on paper below. Random-data checks compare with an independent NumPy transcription of the
documented formulas (metadata rounded to fp16, codes computed from the stored fp16 values).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oscar_core import quant as q
from oscar_core.quant import (
    SUPPORTED_BITS,
    GroupQuant,
    PackedGroups,
    codes_per_byte,
    dequantize,
    dequantize_groups,
    fake_quantize,
    from_groups,
    ldexp_saturating,
    pack_codes,
    pow2_shift,
    quantize,
    quantize_groups,
    saturate,
    to_groups,
    unpack_codes,
)

FP16_MAX = 65504.0


def _q(rows, bits, zero_point, clip_ratio=1.0, dtype=torch.float32) -> GroupQuant:
    return quantize_groups(torch.tensor(rows, dtype=dtype), bits, zero_point, clip_ratio)


def _roundtrip(rows, bits, zero_point, clip_ratio=1.0, dtype=torch.float32) -> torch.Tensor:
    return dequantize_groups(_q(rows, bits, zero_point, clip_ratio, dtype))


# ---------------------------------------------------------------------------------------------
# Independent NumPy transcription of METHODS.md "The one quantizer" (used on random data only,
# where the degenerate-group scale floor never binds).
# ---------------------------------------------------------------------------------------------
def np_quant(g: np.ndarray, bits: int, zero_point: str, clip: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``g`` are groups. Returns (codes, x_hat) in float32."""
    g = g.astype(np.float32)
    qmax = 2**bits - 1
    mx = g.max(axis=-1, keepdims=True) * np.float32(clip)
    mn = g.min(axis=-1, keepdims=True) * np.float32(clip)
    s = np.float16((mx - mn) / np.float32(qmax)).astype(np.float32)
    if zero_point == "integer":
        z = np.rint(-mn / s).astype(np.float16).astype(np.float32)
        q = np.clip(np.rint(g / s) + z, 0, qmax)
        return q, s * (q - z)
    mn16 = mn.astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((g - mn16) / s), 0, qmax)
    return q, q * s + mn16


# ------------------------------------------------------------------------------ hand cases


def test_integer_zero_point_hand_case():
    # x = [-1, 0, 0.5, 2], b = 2: mn = -1, mx = 2, s = 3/3 = 1, z = round(1/1) = 1.
    # q = clamp(round(x/s) + z) = [-1+1, 0+1, round(0.5)=0 (half-even) +1, 2+1] = [0, 1, 1, 3]
    # x_hat = s*(q - z) = [-1, 0, 0, 2].
    gq = _q([[-1.0, 0.0, 0.5, 2.0]], 2, "integer")
    assert gq.scale.dtype == torch.float16 and gq.zero.dtype == torch.float16
    assert gq.scale.tolist() == [1.0] and gq.zero.tolist() == [1.0]
    assert gq.codes.dtype == torch.uint8 and gq.codes.tolist() == [[0, 1, 1, 3]]
    assert dequantize_groups(gq).tolist() == [[-1.0, 0.0, 0.0, 2.0]]


def test_float_minimum_hand_case():
    # Same x, float minimum: s = 1, mn = -1, q = clamp(round((x + 1)/1)) = [0, 1, round(1.5)=2, 3],
    # x_hat = q*s + mn = [-1, 0, 1, 2]: the 0.5 goes up here and down with the integer zero point.
    gq = _q([[-1.0, 0.0, 0.5, 2.0]], 2, "float")
    assert gq.scale.tolist() == [1.0] and gq.zero.tolist() == [-1.0]
    assert gq.codes.tolist() == [[0, 1, 2, 3]]
    assert dequantize_groups(gq).tolist() == [[-1.0, 0.0, 1.0, 2.0]]


def test_conventions_differ_when_min_is_off_the_integer_grid():
    # x = [-0.5, 0.25, 1.0, 1.75]: range 2.25, s = 0.75 (exact in fp16), mn = -0.5.
    # float:   grid mn + k*s = {-0.5, 0.25, 1.0, 1.75} -> x is reconstructed exactly.
    # integer: z = round(0.5/0.75) = round(0.667) = 1, grid s*(k - 1) = {-0.75, 0, 0.75, 1.5};
    #          q = round(x/0.75) + 1 = [round(-0.667)+1, round(0.333)+1, round(1.333)+1, round(2.333)+1]
    #            = [0, 1, 2, 3]; x_hat = [-0.75, 0, 0.75, 1.5], every error 0.25 <= s/2.
    x = [[-0.5, 0.25, 1.0, 1.75]]
    gf = _q(x, 2, "float")
    assert gf.scale.tolist() == [0.75] and gf.zero.tolist() == [-0.5] and gf.codes.tolist() == [[0, 1, 2, 3]]
    assert dequantize_groups(gf).tolist() == x
    gi = _q(x, 2, "integer")
    assert gi.scale.tolist() == [0.75] and gi.zero.tolist() == [1.0] and gi.codes.tolist() == [[0, 1, 2, 3]]
    assert dequantize_groups(gi).tolist() == [[-0.75, 0.0, 0.75, 1.5]]


def test_hand_cases_other_bit_widths():
    # b = 1: x = [-1, 0.2, 3]: s = 4/1 = 4.
    #   integer: z = round(1/4) = 0, q = round(x/4) = [round(-.25), round(.05), round(.75)] = [0, 0, 1],
    #            x_hat = [0, 0, 4].
    #   float:   q = round((x+1)/4) = [0, round(0.3), 1] = [0, 0, 1], x_hat = [-1, -1, 3].
    assert _roundtrip([[-1.0, 0.2, 3.0]], 1, "integer").tolist() == [[0.0, 0.0, 4.0]]
    assert _roundtrip([[-1.0, 0.2, 3.0]], 1, "float").tolist() == [[-1.0, -1.0, 3.0]]
    # b = 3: x = -1 + 0.5*k, k = 0..7: s = 3.5/7 = 0.5, z = round(1/0.5) = 2, codes = k; exact in both.
    x3 = [[-1.0 + 0.5 * k for k in range(8)]]
    for zp in ("integer", "float"):
        gq = _q(x3, 3, zp)
        assert gq.scale.tolist() == [0.5] and gq.codes.tolist() == [list(range(8))]
        assert dequantize_groups(gq).tolist() == x3
    assert _q(x3, 3, "integer").zero.tolist() == [2.0]
    # b = 4: x = [0, 1.2, 7.4, 15]: s = 15/15 = 1, z = 0, q = [0, 1, 7, 15], x_hat = [0, 1, 7, 15].
    assert _roundtrip([[0.0, 1.2, 7.4, 15.0]], 4, "integer").tolist() == [[0.0, 1.0, 7.0, 15.0]]
    # b = 8: x = [-2.55, 0, 0.0301, 0.05]: s = 2.6/255 ~ 0.0102; checked against the formula by hand
    # below: float codes round((x + 2.55)/s).
    x8 = torch.tensor([[-2.55, 0.0, 0.0301, 0.05]])
    gq = quantize_groups(x8, 8, "float")
    s = torch.tensor(2.6 / 255).half().float()
    mn = torch.tensor(-2.55).half().float()
    exp_codes = torch.round((x8 - mn) / s).clamp(0, 255)
    assert gq.codes.tolist() == exp_codes.to(torch.uint8).tolist()
    assert gq.codes.tolist()[0][0] == 0 and gq.codes.tolist()[0][-1] == 255


def test_clipping_hand_case():
    # x = [-4, -1, 1, 8], clip c = 0.5: mx = 4, mn = -2, s = 6/3 = 2.
    # integer: z = round(2/2) = 1, q = clamp(round(x/2) + 1) = [clamp(-1)=0, round(-0.5)=-0 -> 1,
    #          round(0.5)=0 -> 1, clamp(5)=3]; x_hat = 2*(q - 1) = [-2, 0, 0, 4].
    # float:   q = clamp(round((x + 2)/2)) = [clamp(-1)=0, round(0.5)=0, round(1.5)=2, clamp(5)=3];
    #          x_hat = 2q - 2 = [-2, -2, 2, 4].
    x = [[-4.0, -1.0, 1.0, 8.0]]
    gi = _q(x, 2, "integer", clip_ratio=0.5)
    assert gi.scale.tolist() == [2.0] and gi.zero.tolist() == [1.0] and gi.codes.tolist() == [[0, 1, 1, 3]]
    assert dequantize_groups(gi).tolist() == [[-2.0, 0.0, 0.0, 4.0]]
    gf = _q(x, 2, "float", clip_ratio=0.5)
    assert gf.scale.tolist() == [2.0] and gf.zero.tolist() == [-2.0] and gf.codes.tolist() == [[0, 0, 2, 3]]
    assert dequantize_groups(gf).tolist() == [[-2.0, -2.0, 2.0, 4.0]]
    # No clipping for comparison: s = 12/3 = 4, the outliers -4 and 8 are reproduced exactly (float).
    assert _roundtrip(x, 2, "float").tolist() == [[-4.0, 0.0, 0.0, 8.0]]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.01])
def test_bad_clip_ratio_raises(bad):
    with pytest.raises(ValueError, match="clip_ratio"):
        _q([[0.0, 1.0]], 2, "integer", clip_ratio=bad)


@pytest.mark.parametrize("bits", [0, 5, 6, 7, 16])
def test_unsupported_bits_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        _q([[0.0, 1.0]], bits, "integer")
    with pytest.raises(ValueError, match="bits"):
        pack_codes(torch.zeros(8, dtype=torch.uint8), bits)


def test_bad_zero_point_and_axis_raise():
    with pytest.raises(ValueError, match="zero_point"):
        _q([[0.0, 1.0]], 2, "symmetric")
    with pytest.raises(ValueError, match="axis"):
        to_groups(torch.zeros(4, 4), 2, "head")


def test_round_half_to_even():
    # s = 1, mn = 0 in every row (both conventions, z = 0): codes are round-half-to-even of x.
    rows = [[0.0, 0.5, 2.5, 3.0], [0.0, 1.5, 1.5, 3.0]]
    for zp in ("integer", "float"):
        assert _q(rows, 2, zp).codes.tolist() == [[0, 0, 2, 3], [0, 2, 2, 3]]
    # Negative halves, integer: s = 1, mn = -1.5, z = round(1.5) = 2 (even);
    # q = round(x) + 2 = [round(-1.5)=-2, round(-0.5)=-0, round(0.5)=0, round(1.5)=2] + 2 = [0, 2, 2, 4->3]
    # x_hat = q - 2 = [-2, 0, 0, 1]; the float minimum reconstructs these exactly.
    x = [[-1.5, -0.5, 0.5, 1.5]]
    gi = _q(x, 2, "integer")
    assert gi.zero.tolist() == [2.0] and gi.codes.tolist() == [[0, 2, 2, 3]]
    assert dequantize_groups(gi).tolist() == [[-2.0, 0.0, 0.0, 1.0]]
    assert _roundtrip(x, 2, "float").tolist() == x


# ------------------------------------------------------------------------------ grouping axes


def test_axis_token_groups_consecutive_tokens_of_one_channel():
    # x[t, c] = t*(c+1), 4 tokens x 3 channels, G = 4 along tokens: channel c's group is
    # {0, c+1, 2(c+1), 3(c+1)}: s = c+1, mn = 0, codes 0..3, exact.
    x = torch.tensor([[t * (c + 1.0) for c in range(3)] for t in range(4)])
    gq = quantize(x, 2, 4, "token", "float")
    assert gq.codes.shape == (1, 3, 4)  # [groups over tokens, channels, G]
    assert gq.scale.tolist() == [[1.0, 2.0, 3.0]] and gq.zero.tolist() == [[0.0, 0.0, 0.0]]
    assert gq.codes.tolist() == [[[0, 1, 2, 3]] * 3]
    assert torch.equal(dequantize(gq, "token"), x)
    # G = 2 along tokens: tokens {0,1} give {0, c+1} (s = (c+1)/3, mn = 0); tokens {2,3} give
    # {2(c+1), 3(c+1)} (s = (c+1)/3, mn = 2(c+1)).
    gq2 = quantize(x, 2, 2, "token", "float")
    assert gq2.codes.shape == (2, 3, 2)
    exp_s = [[(c + 1) / 3 for c in range(3)]] * 2
    torch.testing.assert_close(gq2.scale.float(), torch.tensor(exp_s).half().float())
    assert gq2.zero.tolist() == [[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]]
    assert gq2.codes.tolist() == [[[0, 3]] * 3, [[0, 3]] * 3]


def test_axis_channel_groups_consecutive_channels_of_one_token():
    # Same x, G = 3 along channels: token t's group is {t, 2t, 3t}: s = 2t/3, mn = t (t = 0: constant).
    # G = 4 channels of x.T (x.T[c, t] = t*(c+1)): row c = {0, c+1, 2(c+1), 3(c+1)}: s = c+1.
    x = torch.tensor([[t * (c + 1.0) for c in range(3)] for t in range(4)])
    gq = quantize(x.T.contiguous(), 2, 4, "channel", "float")
    assert gq.codes.shape == (3, 1, 4)  # [tokens, groups over channels, G]
    assert gq.scale.tolist() == [[1.0], [2.0], [3.0]]
    assert torch.equal(dequantize(gq, "channel"), x.T)
    gq3 = quantize(x, 2, 3, "channel", "float")
    assert gq3.codes.shape == (4, 1, 3)
    torch.testing.assert_close(gq3.scale.float().flatten(), torch.tensor([2 * t / 3 for t in range(4)]).half().float())
    assert gq3.zero.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("zero_point", ["integer", "float"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_random_groups_match_the_documented_formulas(axis, zero_point, bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 3, 64, 32, generator=g) * 3 + 0.7  # [N, H, T, D]
    groups = to_groups(x, 16, axis)
    if axis == "token":
        assert groups.shape == (2, 3, 4, 32, 16)
        assert torch.equal(groups[1, 2, 3, 5], x[1, 2, 48:64, 5])  # group 3, channel 5
    else:
        assert groups.shape == (2, 3, 64, 2, 16)
        assert torch.equal(groups[1, 2, 7, 1], x[1, 2, 7, 16:32])  # token 7, channels 16..31
    assert torch.equal(from_groups(groups, axis), x)
    gq = quantize(x, bits, 16, axis, zero_point)
    codes, x_hat = np_quant(groups.numpy(), bits, zero_point)
    assert np.array_equal(gq.codes.numpy(), codes.astype(np.uint8))
    np.testing.assert_array_equal(dequantize_groups(gq).numpy(), x_hat)
    torch.testing.assert_close(dequantize(gq, axis), from_groups(torch.from_numpy(x_hat), axis))
    torch.testing.assert_close(fake_quantize(x, bits, 16, axis, zero_point), dequantize(gq, axis))


def test_clipped_random_groups_match_the_documented_formulas():
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(3))
    for zp in ("integer", "float"):
        gq = quantize(x, 2, 128, "channel", zp, clip_ratio=0.95)
        codes, x_hat = np_quant(x.numpy(), 2, zp, clip=0.95)
        assert np.array_equal(gq.codes.reshape(4, 128).numpy(), codes.astype(np.uint8))
        np.testing.assert_array_equal(dequantize(gq, "channel").numpy(), x_hat)


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="flushed whole"):
        quantize(torch.zeros(33, 128), 2, 32, "token")
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize(torch.zeros(32, 96), 2, 64, "channel")


# ------------------------------------------------------------------------------ error bounds


def _error_bound(x: torch.Tensor, gq: GroupQuant, clip: float = 1.0) -> torch.Tensor:
    """Per-element bound: s/2 plus what fp16 metadata adds (METHODS.md stores s and mn as fp16).

    Integer: grid s16*(k - z) starts within s16/2 of mn and spans 3*s16 (not 3*s), so points near
    mx can sit 3*|s - s16| further out. Float: the grid starts at fp16(mn) instead of mn.
    """
    xf = x.float()
    qmax = 2**gq.bits - 1
    mx, mn = xf.amax(-1) * clip, xf.amin(-1) * clip
    s16 = gq.scale.float()
    s = (mx - mn) / qmax  # fp32 scale before fp16 storage
    if gq.zero_point == "integer":
        s = torch.maximum(s, torch.maximum(mx.abs(), mn.abs()) * 2.0**-10)  # documented floor
        extra = qmax * (s - s16).abs()
    else:
        extra = qmax * (s - s16).abs() + (mn - gq.zero.float()).abs()
    return (s16 / 2 + extra + 1e-6 * s16).unsqueeze(-1)


@pytest.mark.parametrize("zero_point", ["integer", "float"])
@pytest.mark.parametrize("magnitude", [1e-6, 1e-3, 1.0, 30.0, 3e4])
def test_error_bounded_by_half_step_at_all_magnitudes(zero_point, magnitude):
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(64, 32, generator=g) * 2 - 1) * magnitude
    gq = quantize_groups(x, 2, zero_point)
    x_hat = dequantize_groups(gq)
    assert torch.isfinite(x_hat).all() and torch.isfinite(gq.scale).all() and torch.isfinite(gq.zero).all()
    err = (x_hat - x).abs()
    assert (err <= _error_bound(x, gq)).all()
    # And the step is what the formula says (up to fp16 storage, incl. subnormal spacing 2^-24).
    s_exp = (x.amax(-1) - x.amin(-1)) / 3
    assert ((gq.scale.float() - s_exp).abs() <= s_exp * 2.0**-11 + 2.0**-25).all()


@pytest.mark.parametrize("zero_point", ["integer", "float"])
def test_near_constant_group_far_from_zero(zero_point):
    # Range 3e-3 around 1000: well-defined, finite, error within the documented bound; for the
    # integer zero point the scale floor (|x|/1024) binds, so the step is ~0.98 and the error < 0.49.
    x = 1000.0 + torch.tensor([[0.0, 1e-3, 2e-3, 3e-3], [-3e-3, -1e-3, 0.0, 2e-3]])
    x = torch.cat((x, -x))
    gq = quantize_groups(x, 2, zero_point)
    x_hat = dequantize_groups(gq)
    assert torch.isfinite(x_hat).all()
    assert ((x_hat - x).abs() <= _error_bound(x, gq)).all()
    assert ((x_hat - x).abs() <= 0.49).all()  # relative error < 5e-4
    if zero_point == "integer":
        assert (gq.zero.float().abs() <= 1025).all()  # the floor keeps z an exact fp16 integer
        assert torch.equal(gq.zero.float(), gq.zero.float().round())


CONSTANTS = [0.0, 1.0, -1.0, 0.5, -3.25, 1000.0, -3e4, 3e4, 65504.0, 0.0625, 0.01, -0.01, 1e-4, 2.0**-20, 6e-8]


@pytest.mark.parametrize("zero_point", ["integer", "float"])
@pytest.mark.parametrize("c", CONSTANTS)
def test_constant_group_reconstructs_exactly(zero_point, c):
    # METHODS.md: a group whose range is zero reconstructs its (fp16-representable) constant exactly
    # and never yields NaN/inf.
    c16 = float(np.float16(c))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.full((2, 32), c16, dtype=torch.float32)
        if dtype == torch.bfloat16 and float(torch.tensor(c16).bfloat16()) != c16:
            continue
        x = x.to(dtype)
        gq = quantize_groups(x, 2, zero_point)
        assert torch.isfinite(gq.scale).all() and torch.isfinite(gq.zero).all()
        x_hat = dequantize_groups(gq, dtype)
        assert torch.isfinite(x_hat).all()
        assert x_hat.float().unique().tolist() == [c16], (c16, zero_point, dtype, x_hat.float().unique().tolist())


@pytest.mark.parametrize("zero_point", ["integer", "float"])
def test_zero_group_and_mixed_degenerate_rows(zero_point):
    x = torch.tensor([[0.0] * 4, [-0.0] * 4, [2.0] * 4, [-1.0, -1.0, -1.0, 2.0]])
    gq = quantize_groups(x, 2, zero_point)
    x_hat = dequantize_groups(gq)
    assert torch.isfinite(x_hat).all()
    assert x_hat[:3].tolist() == [[0.0] * 4, [0.0] * 4, [2.0] * 4]
    assert x_hat[3].tolist() == [-1.0, -1.0, -1.0, 2.0]  # s = 1 and mn = -1 are both exact


@pytest.mark.parametrize("zero_point", ["integer", "float"])
def test_beyond_fp16_range_saturates_not_inf(zero_point):
    # bf16 can hold values fp16 metadata cannot describe: they reconstruct finite (saturated).
    x = torch.tensor([[-2e5, 0.0, 1e5, 3e5], [1e5] * 4]).bfloat16()
    gq = quantize_groups(x, 2, zero_point)
    assert torch.isfinite(gq.scale).all() and torch.isfinite(gq.zero).all()
    x_hat = dequantize_groups(gq, torch.bfloat16)
    assert torch.isfinite(x_hat).all()


@pytest.mark.parametrize("zero_point", ["integer", "float"])
def test_fp16_input_at_fp16_max_never_reconstructs_inf(zero_point):
    # A group [0, ..., 65504] in fp16: s = 65504/3 is stored as fp16 21840 (> 21834.67), so the top
    # code reconstructs 3*21840 = 65520, which overflows to inf when cast back to fp16.
    x = torch.tensor([[0.0, 100.0, 1000.0, 65504.0], [-65504.0, 0.0, 0.0, 0.0]], dtype=torch.float16)
    out = fake_quantize(x, 2, 4, "channel", zero_point)
    assert torch.isfinite(out).all(), out


def test_bf16_input_quantized_in_fp32():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1)).bfloat16()
    for zp in ("integer", "float"):
        a = quantize_groups(x, 2, zp)
        b = quantize_groups(x.float(), 2, zp)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero)
        assert fake_quantize(x, 2, 32, "channel", zp).dtype == torch.bfloat16


# ------------------------------------------------------------------------------ bit packing


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_pack_unpack_roundtrip_every_bit_width(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (3, 5, 64), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    k = codes_per_byte(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 64 // k)
    assert torch.equal(unpack_codes(packed, bits), codes)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_pack_bit_layout(bits):
    # Byte j holds codes j*k .. j*k+k-1, code i at bit offset (i % k)*bits (k = 8 // bits; 3-bit
    # codes are documented as one per byte).
    k = {1: 8, 2: 4, 3: 1, 4: 2, 8: 1}[bits]
    assert codes_per_byte(bits) == k
    g = torch.Generator().manual_seed(10 + bits)
    codes = torch.randint(0, 2**bits, (4, 16), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits).tolist()
    for r, row in enumerate(codes.tolist()):
        expected = [0] * (16 // k)
        for i, c in enumerate(row):
            expected[i // k] |= c << ((i % k) * bits)
        assert packed[r] == expected


def test_pack_hand_bytes():
    # 2-bit [1, 2, 3, 0] -> 1 | 2<<2 | 3<<4 | 0<<6 = 1 + 8 + 48 = 57; [3,3,3,3] -> 255.
    assert pack_codes(torch.tensor([1, 2, 3, 0, 3, 3, 3, 3], dtype=torch.uint8), 2).tolist() == [57, 255]
    # 4-bit [0xA, 0x3] -> 0x3A.
    assert pack_codes(torch.tensor([0xA, 0x3], dtype=torch.uint8), 4).tolist() == [0x3A]
    # 1-bit [1,0,1,1,0,0,0,1] -> 1 + 4 + 8 + 128 = 141.
    assert pack_codes(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1], dtype=torch.uint8), 1).tolist() == [141]
    assert unpack_codes(torch.tensor([141], dtype=torch.uint8), 1).tolist() == [1, 0, 1, 1, 0, 0, 0, 1]


def test_pack_needs_whole_bytes():
    with pytest.raises(ValueError, match="multiple"):
        pack_codes(torch.zeros(6, dtype=torch.uint8), 2)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_packed_groups_roundtrip_and_size(bits):
    x = torch.randn(2, 4, 64, 128, generator=torch.Generator().manual_seed(bits))
    gq = quantize(x, bits, 32, "token", "integer")
    pg = PackedGroups.from_quant(gq)
    back = pg.unpack()
    assert torch.equal(back.codes, gq.codes)
    assert torch.equal(dequantize(back, "token"), dequantize(gq, "token"))
    n_groups = x.numel() // 32
    assert pg.nbytes() == x.numel() // codes_per_byte(bits) + n_groups * 4


# ------------------------------------------------------------------------------ range and non-finite inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_integer_zero_point_keeps_signs_past_the_fp16_range(dtype):
    # Before: s saturated at 65504 and z = round(1e10/65504) at 65504, so s*(q - z) was about -4.3e9 for
    # every code: the +1e10 and +5e9 entries reconstructed negative.
    x = torch.tensor([[-1e10, 1e10, 0.0, 5e9], [1e6, 2e6, 1.5e6, 1e6]], dtype=dtype)
    gq = quantize_groups(x, 2, "integer")
    x_hat = dequantize_groups(gq)
    assert torch.isfinite(x_hat).all() and (gq.zero.float().abs() <= 1024).all()
    assert torch.equal(torch.sign(x_hat[0]), torch.sign(x[0].float()))
    torch.testing.assert_close(x_hat[1], torch.full((4,), FP16_MAX))  # saturated, sign kept


@pytest.mark.parametrize("zero_point", ["integer", "float"])
def test_values_past_fp16_reconstruct_as_the_saturated_group(zero_point):
    x = torch.tensor([[-3e5, -1e3, 2.0, 9e4], [1.0, 2.0, 3.0, 3e38]])
    expect = dequantize_groups(quantize_groups(x.clamp(-FP16_MAX, FP16_MAX), 2, zero_point))
    assert torch.equal(dequantize_groups(quantize_groups(x, 2, zero_point)), expect)


@pytest.mark.parametrize("zero_point", ["integer", "float"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_element_makes_its_group_nan(zero_point, bad):
    x = torch.tensor([[1.0, bad, 0.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    gq = quantize_groups(x, 2, zero_point)
    assert int(gq.codes.max()) <= 3  # codes stay valid 2-bit codes
    out = dequantize_groups(gq, torch.float16)
    assert torch.isnan(out[0]).all()  # propagated: never a number, never "saturated" to +-65504
    assert torch.equal(out[1], dequantize_groups(quantize_groups(x[1:], 2, zero_point), torch.float16)[0])


def test_saturate_clamps_only_what_would_overflow():
    x = torch.tensor([1.5, -70000.0, 65519.0, 65520.0, math.inf, -math.inf, math.nan])
    y = saturate(x, torch.float16)
    assert y.dtype == torch.float16
    assert y[:4].tolist() == [1.5, -FP16_MAX, FP16_MAX, FP16_MAX]  # 65519 rounds to 65504 anyway
    assert y[4] == math.inf and y[5] == -math.inf and torch.isnan(y[6])
    w = torch.tensor([3.4e38, 1.0e-3])  # finite in fp32, past bf16's max: the plain cast gives inf
    assert w.bfloat16()[0] == math.inf
    assert torch.equal(saturate(w, torch.bfloat16), torch.tensor([torch.finfo(torch.bfloat16).max, 1e-3]).bfloat16())
    assert torch.equal(saturate(w.half(), torch.float32), w.half().float())  # widening: the plain cast


def test_pow2_scaling_helpers_are_exact_and_saturate():
    amax = torch.tensor([1.0, 2.0**60, 3e38, math.inf])
    shift = pow2_shift(amax, 57)
    assert shift.tolist() == [0.0, 4.0, 71.0, 0.0]  # 2^60 < 2^61: 61 - 57; 3e38 < 2^128; inf: 0
    x = torch.tensor([1.25, 2.0**56, 1.0, math.inf])
    assert ldexp_saturating(x, shift).tolist() == [1.25, 2.0**60, 2.0**71, math.inf]
    big = torch.tensor([2.0**100])
    assert ldexp_saturating(big, torch.tensor([40.0])).item() == torch.finfo(torch.float32).max


# -- official KIVI's fp16 arithmetic (jy-yuan/KIVI quant/new_pack.py), bit for bit -------------------

def _official_kivi_fp16(groups: torch.Tensor, bits: int):
    """KIVI's quantizer on fp16 tensors, as its code computes it (each op an fp16 tensor op)."""
    mn = groups.amin(dim=-1, keepdim=True)
    mx = groups.amax(dim=-1, keepdim=True)
    scale = (mx - mn) / (2**bits - 1)
    codes = ((groups - mn) / scale).clamp(0, 2**bits - 1).round().to(torch.int32)
    return codes, scale.squeeze(-1), mn.squeeze(-1)


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_kivi_fp16_arithmetic_reproduces_official_kivi_bit_for_bit(axis):
    import oscar_core as oc

    g = torch.Generator().manual_seed(11)
    x = (torch.randn(2, 4, 64, 128, generator=g) * torch.rand(1, 4, 1, 128, generator=g) * 8).half()
    groups = q.to_groups(x, 32, axis)
    codes, scale, mn = _official_kivi_fp16(groups, 2)
    gq = q.quantize(x, 2, 32, axis, "float", arithmetic="fp16")
    assert torch.equal(gq.scale, scale) and torch.equal(gq.zero, mn)
    assert torch.equal(gq.codes.to(torch.int32), codes)
    default = q.quantize(x, 2, 32, axis, "float")  # fp32 arithmetic: scales one fp16 step off in about 1/4
    share = (default.scale != scale).float().mean().item()
    assert 0.1 < share < 0.4, share
    # through the method: the spec's blocks hold exactly these codes and metadata
    spec = oc.get_method("kivi", arithmetic="fp16")
    block = spec.encode_keys(x) if axis == "token" else spec.encode_values(x)
    assert torch.equal(block["scale"], scale) and torch.equal(block["zero"], mn)


def test_fp16_arithmetic_is_only_for_the_float_minimum():
    with pytest.raises(ValueError, match="float"):
        q.quantize(torch.randn(1, 1, 32, 32), 2, 32, "token", "integer", arithmetic="fp16")
