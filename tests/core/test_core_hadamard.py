"""The normalized Sylvester Hadamard transform (oscar_core.hadamard)."""

from __future__ import annotations

import math

import pytest
import torch

from oscar_core.hadamard import check_hadamard_size, hadamard_matrix, hadamard_transform, is_power_of_two

SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def sylvester(n: int) -> torch.Tensor:
    """Unnormalized Sylvester matrix by the recursion H_2n = [[H_n, H_n], [H_n, -H_n]], in pure Python."""
    h = [[1]]
    while len(h) < n:
        h = [row + row for row in h] + [row + [-v for v in row] for row in h]
    return torch.tensor(h, dtype=torch.float64)


def test_sylvester_helper_small_cases():
    assert sylvester(2).tolist() == [[1, 1], [1, -1]]
    assert sylvester(4).tolist() == [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]


@pytest.mark.parametrize("n", SIZES)
def test_matrix_matches_sylvester_recursion(n):
    h = hadamard_matrix(n, dtype=torch.float64)
    assert h.shape == (n, n)
    torch.testing.assert_close(h, sylvester(n) / math.sqrt(n), rtol=0, atol=1e-7)
    # Entries are exactly +-1/sqrt(n) up to float32 rounding, no random signs.
    assert torch.allclose(h.abs(), torch.full_like(h, 1 / math.sqrt(n)), atol=1e-7)
    assert (h[0] > 0).all() and (h[:, 0] > 0).all()


@pytest.mark.parametrize("n", SIZES)
def test_orthogonal_symmetric_and_self_inverse(n):
    h = hadamard_matrix(n)
    eye = torch.eye(n)
    torch.testing.assert_close(h, h.T, rtol=0, atol=0)
    torch.testing.assert_close(h @ h.T, eye, rtol=0, atol=1e-6)
    torch.testing.assert_close(h @ h, eye, rtol=0, atol=1e-6)
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(hadamard_transform(hadamard_transform(x)), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [3, 6, 12, 96, 100, 0])
def test_non_power_of_two_is_a_clear_error(n):
    assert not is_power_of_two(n)
    with pytest.raises(ValueError, match="power-of-two"):
        check_hadamard_size(n)
    if n > 0:
        with pytest.raises(ValueError, match=f"power-of-two .*{n}"):
            hadamard_transform(torch.zeros(2, n))
        with pytest.raises(ValueError, match="power-of-two"):
            hadamard_matrix(n)


@pytest.mark.parametrize("n", [2, 16, 128])
def test_fast_transform_equals_dense_product(n):
    x = torch.randn(2, 8, 5, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = x @ (sylvester(n) / math.sqrt(n))
    fast = hadamard_transform(x.float())
    assert fast.shape == x.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), dense, rtol=1e-5, atol=1e-5)


def test_transform_acts_on_last_axis_only_and_handles_non_contiguous():
    x = torch.randn(4, 128, 6, generator=torch.Generator().manual_seed(1))
    xt = x.transpose(1, 2)  # non-contiguous [4, 6, 128]
    torch.testing.assert_close(hadamard_transform(xt), xt.contiguous() @ hadamard_matrix(128))


def test_scores_preserved_per_head():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 8, 4, 128, generator=g) * 3
    k = torch.randn(1, 8, 16, 128, generator=g) * 3
    k[..., 7] += 20.0  # an outlier channel
    scores = q @ k.transpose(-1, -2)
    rot = hadamard_transform(q) @ hadamard_transform(k).transpose(-1, -2)
    torch.testing.assert_close(rot, scores, rtol=1e-5, atol=1e-3)


def test_bf16_input_is_computed_in_fp32():
    x = torch.randn(3, 8, 128, generator=torch.Generator().manual_seed(3)).bfloat16()
    ref = x.double() @ (sylvester(128) / math.sqrt(128))
    # With an fp32 output the result is the fp32 transform of the bf16 values (no bf16 rounding inside).
    y32 = hadamard_transform(x, out_dtype=torch.float32)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), ref, rtol=1e-5, atol=1e-5)
    # Default: the input dtype comes back, rounded once at the end (within half a bf16 ulp of ref).
    y = hadamard_transform(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, y32.bfloat16())
    assert ((y.double() - ref).abs() <= ref.abs() * 2.0**-8 + 1e-6).all()


def test_fp16_input_with_large_values_does_not_overflow_inside():
    # 128 entries of 1000 sum to 128000 > fp16 max before the 1/sqrt(128) normalization; computing in
    # fp32 internally gives 1000*sqrt(128) = 11313.7 in channel 0 and zeros elsewhere.
    x = torch.full((1, 128), 1000.0, dtype=torch.float16)
    y = hadamard_transform(x)
    assert torch.isfinite(y).all()
    assert abs(y[0, 0].item() - 1000 * math.sqrt(128)) < 8
    assert (y[0, 1:] == 0).all()
