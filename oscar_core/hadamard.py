"""The one Hadamard transform: normalized Sylvester fast Walsh-Hadamard transform.

``H_n`` (n a power of two) is built by Sylvester's recursion ``H_2n = [[H_n, H_n], [H_n, -H_n]]``
and normalized by ``1/sqrt(n)``: entries are +-1/sqrt(n), no random signs. It is symmetric and
orthogonal, hence its own inverse. Applied along the last axis in O(n log n), in float32.

Range. The butterfly's partial sums grow up to ``n * max|x|``, so bf16/fp32 inputs (whose values can
come within a factor ``n`` of fp32's limit) are scaled by ``2^-log2(n)`` before it and back after, and a
result past the output dtype's range saturates to it (e.g. an fp16 key near 65504 rotates to up to
``65504*sqrt(n)``): finite inputs never give inf/NaN. A power-of-two scale is exact, so the bits are
those of the plain fp32 butterfly except where the scaled values fall below fp32's normal range
(``|x| < 2^(log2(n) - 126)``, about 1e-35: such tiny values keep up to ``log2(n)`` fewer bits). inf/NaN
inputs propagate (every output of their row becomes inf or NaN).
"""

from __future__ import annotations

import math

import torch

from oscar_core.quant import saturate


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def check_hadamard_size(n: int, what: str = "size") -> None:
    if not is_power_of_two(n):
        raise ValueError(f"the Hadamard transform needs a power-of-two {what}; got {n}")


#: Input dtypes whose values cannot overflow fp32 in the butterfly (65504 * n stays far below 2^128).
_SMALL_RANGE = (torch.float16, torch.int8, torch.uint8, torch.int16, torch.bool)
_FP32_MAX = torch.finfo(torch.float32).max


def hadamard_transform(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``x @ H_n`` along the last axis (``H_n`` symmetric, so also ``H_n @ x``).

    Computed in fp32 and returned as ``out_dtype`` (default ``x.dtype``), saturated to its finite
    range; see the module docstring for values near fp32's limit and for inf/NaN.
    """
    n = x.shape[-1]
    check_hadamard_size(n, "last dimension")
    lead = x.shape[:-1]
    out = out_dtype or x.dtype
    log2n = n.bit_length() - 1
    wide = x.dtype not in _SMALL_RANGE  # bf16/fp32 values can come within a factor n of fp32's limit
    y = saturate(x, torch.float32).reshape(-1, n)
    if wide:  # the butterfly grows |y| at most n-fold: scaled by 1/n first, it cannot overflow
        y = y * 2.0**-log2n
    h = 1
    while h < n:
        # Butterfly on pairs (i, i+h) inside blocks of 2h: [a, b] -> [a + b, a - b].
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    summed = y.reshape(-1, n)
    # the normalization 1/sqrt(n) and the undoing of the 1/n scale in one (power-of-two exact) product
    y = summed * ((1.0 / math.sqrt(n)) * (2.0**log2n if wide else 1.0))
    if out.is_floating_point and (wide or torch.finfo(out).max < 65504.0 * 2.0 ** ((log2n + 1) / 2)):
        top = min(torch.finfo(out).max, _FP32_MAX)  # saturate what passed the range (y is fp32)
        y = torch.where(torch.isfinite(summed), y.clamp(-top, top), y)  # inf/NaN of non-finite inputs kept
    return y.reshape(*lead, n).to(out)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The dense normalized ``H_n`` (for weight fusion and tests)."""
    return hadamard_transform(torch.eye(n, dtype=torch.float32, device=device)).to(dtype)
