"""CPU tests of the kernel layout, the converters and the PyTorch fallbacks (run in CI)."""

from __future__ import annotations

import math

import pytest
import torch

from oscar_core import kernels as K
from oscar_core.hadamard import hadamard_transform
from oscar_core.kernels.layout import block_bytes_to_codes, codes_to_block_bytes, slot_map
from oscar_core.methods.oscar import OScaRSpec


def _rand(*shape, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2.0 + 0.3).to(dtype)


HEAD_DIMS = [64, 128, 256]


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_slot_map_is_a_permutation(d):
    for keys in (True, False):
        m = slot_map(keys, head_dim=d)
        assert m.shape == (32, d)
        assert torch.equal(m.flatten().sort().values, torch.arange(32 * d))


def test_key_slot_map_matches_mma_fragment():
    # lane 5 = (g=1, t=1) holds token 1 / channel 2 of k-tile 0, m-tile 0, reg 0, low half: word 0
    # field 0 bit 0 -> byte (0*32 + 5)*16 = 80, bit 0.
    m = slot_map(True)
    assert m[1, 2].item() == 80 * 4
    # the odd channel sits in the high half: bit 16 -> byte 82
    assert m[1, 3].item() == 82 * 4
    # token 9 (= g 1 + 8): reg 1 -> field 1 -> bit 2 of byte 80
    assert m[9, 2].item() == 80 * 4 + 1
    # channel 2 + 16 (k-tile 1): word 1 -> byte 84
    assert m[1, 18].item() == 84 * 4
    # values: row = channel, col = token: channel 1, token 2 -> same position as key (token 1, channel 2)
    assert slot_map(False)[2, 1].item() == 80 * 4


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_codes_block_bytes_roundtrip(d):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 4, (2, 3, 32, d), generator=g, dtype=torch.uint8)
    for keys in (True, False):
        packed = codes_to_block_bytes(codes, keys)
        assert packed.shape == (2, 3, 8 * d)
        assert torch.equal(block_bytes_to_codes(packed, keys), codes)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_reference_block_conversion_is_lossless(d):
    k = _rand(2, 4, 64, d, seed=2)
    v = _rand(2, 4, 64, d, seed=3)
    spec = OScaRSpec()
    kb = spec.encode_keys(hadamard_transform(k))
    vb = spec.encode_values(v)
    keys, values = K.from_reference_blocks(kb, vb)
    assert keys.data.shape == (2, 4, 2, 12 * d) and values.data.shape == (2, 4, 2, 12 * d)
    assert keys.head_dim == values.head_dim == d
    kb2, vb2 = K.to_reference_blocks(keys, values)
    for name in ("codes", "scale", "zero", "norm"):
        assert torch.equal(kb2[name], kb[name]), name
    for name in ("codes", "scale", "zero"):
        assert torch.equal(vb2[name], vb[name]), name


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_dequantize_matches_reference_decode(d):
    k = _rand(1, 8, 96, d, seed=4)
    v = _rand(1, 8, 96, d, seed=5)
    spec = OScaRSpec()
    k_att = hadamard_transform(k)
    keys = K.pack_oscar_keys(k, force_fallback=True)
    values = K.pack_values(v, force_fallback=True)
    ref_k = spec.decode_keys(spec.encode_keys(k_att), torch.float32)
    ref_v = spec.decode_values(spec.encode_values(v), torch.float32)
    torch.testing.assert_close(K.dequantize_keys(keys), ref_k, rtol=0, atol=0)
    torch.testing.assert_close(K.dequantize_values(values), ref_v, rtol=0, atol=0)
    # quantization really happened: 2-bit error, but correlated with the input
    err = (ref_k - k_att.float()).norm() / k_att.float().norm()
    assert 0.01 < err < 0.6


def test_pack_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of 32"):
        K.pack_oscar_keys(_rand(1, 2, 40, 128), force_fallback=True)
    with pytest.raises(ValueError, match=r"\[N, H, T, head_dim\] with head_dim in \(64, 128, 256\)"):
        K.pack_values(_rand(1, 2, 32, 96), force_fallback=True)


def _naive_attention(q, k_all, v_all, scale):
    # q [B, Hq, D] rotated fp32; k_all/v_all lists per sequence of [Hkv, T, D]
    outs = []
    for bi in range(q.shape[0]):
        kk, vv = k_all[bi], v_all[bi]
        hkv = kk.shape[0]
        gq = q.shape[1] // hkv
        rows = []
        for hq in range(q.shape[1]):
            s = kk[hq // gq] @ q[bi, hq] * scale
            rows.append(torch.softmax(s, dim=0) @ vv[hq // gq])
        outs.append(torch.stack(rows))
    return torch.stack(outs)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_decode_fallback_matches_naive_attention_with_lengths(d):
    b, hq, hkv, cap, r = 2, 8, 2, 128, 16
    q = _rand(b, hq, d, seed=6)
    keys = K.alloc_keys(b, hkv, cap, "cpu", head_dim=d)
    values = K.alloc_values(b, hkv, cap, "cpu", head_dim=d)
    kfull = _rand(b, hkv, cap, d, seed=7)
    vfull = _rand(b, hkv, cap, d, seed=8)
    K.pack_oscar_keys(kfull, force_fallback=True).copy_into(keys, 0)
    K.pack_values(vfull, force_fallback=True).copy_into(values, 0)
    rk = hadamard_transform(_rand(b, hkv, r, d, seed=9))
    rv = _rand(b, hkv, r, d, seed=10)
    qlens = torch.tensor([64, 128], dtype=torch.int32)
    rlens = torch.tensor([5, 0], dtype=torch.int32)
    out = K.decode_attention(q, keys, values, qlens, rk, rv, rlens, force_fallback=True)
    assert out.dtype == q.dtype and out.shape == (b, hq, d)
    kd, vd = K.dequantize_keys(keys), K.dequantize_values(values)
    k_all = [torch.cat([kd[i, :, : qlens[i]], rk[i, :, : rlens[i]].float()], 1) for i in range(b)]
    v_all = [torch.cat([vd[i, :, : qlens[i]], rv[i, :, : rlens[i]].float()], 1) for i in range(b)]
    ref = _naive_attention(hadamard_transform(q.float()), k_all, v_all, 1 / math.sqrt(d))
    ref32 = K.decode_attention_reference(q, keys, values, qlens, rk, rv, rlens)
    torch.testing.assert_close(ref32, ref, rtol=1e-5, atol=3e-5)  # fp32 sums in another order
    assert (out.float() - ref).norm() / ref.norm() < 1e-2


def test_decode_fallback_attention_matches_reference_roundtrip():
    # End to end against the public reference: quantized keys/values in the original basis.
    import oscar_core as oc

    spec = oc.get_method("oscar")
    k = _rand(1, 2, 64, 128, seed=11)
    v = _rand(1, 2, 64, 128, seed=12)
    q = _rand(1, 4, 128, seed=13)
    keys = K.pack_oscar_keys(k, force_fallback=True)
    values = K.pack_values(hadamard_transform(v), force_fallback=True)  # v_proj fused rotation
    empty = torch.zeros(1, 2, 0, 128, dtype=torch.bfloat16)
    out = K.decode_attention(
        q,
        keys,
        values,
        torch.tensor([64], dtype=torch.int32),
        empty,
        empty,
        torch.tensor([0], dtype=torch.int32),
        force_fallback=True,
    )
    k_hat = oc.reference.roundtrip_keys(spec, k).float()
    v_hat = oc.reference.roundtrip_values(spec, v).float()
    s = torch.einsum("bhd,bhtd->bht", q.float(), k_hat.repeat_interleave(2, dim=1)) / math.sqrt(128)
    ref = torch.einsum("bht,bhtd->bhd", torch.softmax(s, -1), v_hat.repeat_interleave(2, dim=1))
    out_orig = hadamard_transform(out.float())  # back from the rotated value basis
    assert (out_orig - ref).norm() / ref.norm() < 2e-2


def test_choose_splits_fills_the_gpu_from_capacity():
    n, gps = K.choose_splits(1, 8, 4096, 132)
    assert n * 8 >= 132 * 3 and gps % 4 == 0 and n * gps >= 4096
    n, gps = K.choose_splits(64, 8, 128, 132)
    assert n * gps >= 128 and n >= 1
    assert K.choose_splits(1, 8, 0, 132)[0] == 1


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_meta_perm_groups_each_threads_pairs(d):
    from oscar_core.kernels.layout import meta_perm

    for keys in (True, False):
        perm = meta_perm(keys, head_dim=d)
        assert torch.equal(perm.sort().values, torch.arange(d))
        # stored pairs are consecutive elements of the reference order (channel / token pairs)
        assert torch.equal(perm[1::2] - perm[0::2], torch.ones(d // 2, dtype=perm.dtype))
        # thread t4 of the decode kernel reads 16-byte chunk q * 4 + t4: its pairs are channels / tokens
        # 2 t4, 2 t4 + 1 (mod 8) of 16-channel tiles (keys) or 8-token halves (values)
        chunks = perm.view(d // 32, 4, 8)  # [chunk row q, t4, 8 fp16]
        assert torch.equal((chunks % 8) // 2, torch.arange(4).view(1, 4, 1).expand_as(chunks))
    # keys: thread t4 = 1 reads pairs 4..7 first: channels 2,3 | 10,11 | 18,19 | 26,27
    assert meta_perm(True)[8:16].tolist() == [2, 3, 10, 11, 18, 19, 26, 27]
    # values: thread t4 = 0, first chunk: group 0, tokens 0,1 | 8,9 | 16,17 | 24,25
    assert meta_perm(False)[0:8].tolist() == [0, 1, 8, 9, 16, 17, 24, 25]


def test_zero_point_is_stored_with_bias_1024():
    v = _rand(1, 1, 32, 128, seed=14)
    vb = OScaRSpec().encode_values(v)
    _, values = K.from_reference_blocks(None, vb)
    from oscar_core.kernels.layout import meta_fp16

    _, zz = meta_fp16(values.data, keys=False)  # [1, 1, 1, 4*32] as [group][token]
    z_ref = vb["zero"][0, 0].transpose(0, 1).reshape(-1)  # [4, 32] -> group-major
    assert torch.equal(zz[0, 0, 0].float(), z_ref.float() + 1024)


def test_workspace_shapes_on_cpu():
    keys = K.alloc_keys(2, 8, 4096, "cpu")
    ws = K.make_decode_workspace(32, keys, 128)
    s = ws.num_splits + 4  # one split per 32 residual tokens
    assert ws.pm.shape == (2, 32, s) and ws.po.shape == (2, 32, s, 128)
    assert ws.num_splits * ws.groups_per_split >= 128


def test_unavailable_reason_is_one_line():
    reason = K.unavailable_reason()
    assert "\n" not in reason
    if not torch.cuda.is_available():
        assert not K.available() and reason


# ---- KIVI's format in the kernel layout (float minimum, no token norm, no query rotation) ----


def test_kivi_block_conversion_is_lossless_and_keeps_the_minimum():
    from oscar_core.kernels.layout import meta_fp16
    from oscar_core.methods.kivi import KIVISpec

    k = _rand(2, 2, 64, 128, seed=20)
    v = _rand(2, 2, 64, 128, seed=21)
    spec = KIVISpec()
    kb, vb = spec.encode_keys(k), spec.encode_values(v)
    keys, values = K.from_reference_blocks(kb, vb, method="kivi")
    assert keys.norm is None and not keys.rotate_query and keys.zero_point == values.zero_point == "float"
    kb2, vb2 = K.to_reference_blocks(keys, values)
    assert set(kb2) == {"codes", "scale", "zero"}
    for name in ("codes", "scale", "zero"):
        assert torch.equal(kb2[name], kb[name]), name
        assert torch.equal(vb2[name], vb[name]), name
    # the stored zero is the group minimum itself (no 1024 bias)
    _, mn = meta_fp16(keys.data, keys=True)
    assert torch.equal(mn[0, 0, 0], kb["zero"][0, 0, 0])


def test_kivi_dequantize_matches_reference_decode():
    from oscar_core.methods.kivi import KIVISpec

    k = _rand(1, 4, 96, 128, seed=22)
    v = _rand(1, 4, 96, 128, seed=23)
    spec = KIVISpec()
    keys, values = K.pack_kivi_keys(k), K.pack_kivi_values(v)
    torch.testing.assert_close(K.dequantize_keys(keys), spec.decode_keys(spec.encode_keys(k), torch.float32),
                               rtol=0, atol=0)
    torch.testing.assert_close(K.dequantize_values(values),
                               spec.decode_values(spec.encode_values(v), torch.float32), rtol=0, atol=0)


def test_kivi_decode_fallback_is_unrotated_attention():
    from oscar_core.methods.kivi import KIVISpec

    b, hq, hkv, cap, r = 2, 8, 2, 128, 16
    q = _rand(b, hq, 128, seed=24)
    keys = K.alloc_keys(b, hkv, cap, "cpu", "kivi")
    values = K.alloc_values(b, hkv, cap, "cpu", "kivi")
    kfull, vfull = _rand(b, hkv, cap, 128, seed=25), _rand(b, hkv, cap, 128, seed=26)
    K.pack_kivi_keys(kfull).copy_into(keys, 0)
    K.pack_kivi_values(vfull).copy_into(values, 0)
    rk, rv = _rand(b, hkv, r, 128, seed=27), _rand(b, hkv, r, 128, seed=28)
    qlens = torch.tensor([96, 128], dtype=torch.int32)
    rlens = torch.tensor([7, 0], dtype=torch.int32)
    out = K.decode_attention(q, keys, values, qlens, rk, rv, rlens, force_fallback=True)
    spec = KIVISpec()
    kd = spec.decode_keys(spec.encode_keys(kfull), torch.float32)
    vd = spec.decode_values(spec.encode_values(vfull), torch.float32)
    k_all = [torch.cat([kd[i, :, : qlens[i]], rk[i, :, : rlens[i]].float()], 1) for i in range(b)]
    v_all = [torch.cat([vd[i, :, : qlens[i]], rv[i, :, : rlens[i]].float()], 1) for i in range(b)]
    ref = _naive_attention(q.float(), k_all, v_all, 1 / math.sqrt(128))  # no rotation, no norm
    torch.testing.assert_close(K.decode_attention_reference(q, keys, values, qlens, rk, rv, rlens), ref,
                               rtol=1e-5, atol=1e-5)
    assert (out.float() - ref).norm() / ref.norm() < 1e-2


def test_kivi_format_errors_name_the_problem():
    from oscar_core.methods.kivi import KIVISpec

    k = _rand(1, 2, 32, 128, seed=29)
    with pytest.raises(ValueError, match="no token norm"):
        K.from_reference_blocks(OScaRSpec().encode_keys(k), None, method="kivi")
    with pytest.raises(ValueError, match="has no 'norm'"):
        K.from_reference_blocks(KIVISpec().encode_keys(k), None)
    with pytest.raises(ValueError, match="serves oscar, kivi, not 'quarot'"):
        K.alloc_keys(1, 2, 32, "cpu", "quarot")
    keys = K.pack_kivi_keys(k)
    values = K.pack_values(k, force_fallback=True)  # OScaR's integer zero point
    one = torch.tensor([32], dtype=torch.int32)
    with pytest.raises(ValueError, match="differ in format"):
        K.decode_attention(_rand(1, 4, 128), keys, values, one, k[:, :, :0], k[:, :, :0], one * 0,
                           force_fallback=True)


def test_append_window_rotates_and_skips_out_of_range_slots():
    b, hkv, r = 3, 2, 8
    k, v = _rand(b, hkv, 128, seed=30), _rand(b, hkv, 128, seed=31)
    res_k = torch.zeros(b, hkv, r, 128, dtype=torch.bfloat16)
    res_v = torch.zeros_like(res_k)
    slots = torch.tensor([0, 5, r], dtype=torch.int32)  # the last sequence's slot is outside the window
    K.append_window(k, v, res_k, res_v, slots, force_fallback=True)
    assert torch.equal(res_k[0, :, 0], hadamard_transform(k)[0]) and torch.equal(res_v[1, :, 5], v[1])
    assert torch.equal(res_k[1, :, 5], hadamard_transform(k)[1])
    written = torch.zeros(b, r, dtype=torch.bool)
    written[0, 0] = written[1, 5] = True
    assert (res_k.abs().sum((1, 3)) > 0).eq(written).all() and (res_v.abs().sum((1, 3)) > 0).eq(written).all()
    K.append_window(k, v, res_k, res_v, torch.tensor([1, 1, 1], dtype=torch.int32), rotate=False,
                    force_fallback=True)
    assert torch.equal(res_k[:, :, 1], k)  # KIVI: the key as it is
    with pytest.raises(ValueError, match="share a dtype"):
        K.append_window(k.float(), v, res_k, res_v, slots, force_fallback=True)
