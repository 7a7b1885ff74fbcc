"""The one Hadamard transform: normalized Sylvester fast Walsh-Hadamard transform.

``H_n`` (n a power of two) is built by Sylvester's recursion ``H_2n = [[H_n, H_n], [H_n, -H_n]]``
and normalized by ``1/sqrt(n)``: entries are +-1/sqrt(n), no random signs. It is symmetric and
orthogonal, hence its own inverse. Applied along the last axis in O(n log n), in float32.
"""

from __future__ import annotations

import math

import torch


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def check_hadamard_size(n: int, what: str = "size") -> None:
    if not is_power_of_two(n):
        raise ValueError(f"the Hadamard transform needs a power-of-two {what}; got {n}")


def hadamard_transform(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``x @ H_n`` along the last axis (``H_n`` symmetric, so also ``H_n @ x``)."""
    n = x.shape[-1]
    check_hadamard_size(n, "last dimension")
    lead = x.shape[:-1]
    y = x.float().reshape(-1, n)
    h = 1
    while h < n:
        # Butterfly on pairs (i, i+h) inside blocks of 2h: [a, b] -> [a + b, a - b].
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    y = y.reshape(*lead, n) * (1.0 / math.sqrt(n))
    return y.to(out_dtype or x.dtype)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The dense normalized ``H_n`` (for weight fusion and tests)."""
    return hadamard_transform(torch.eye(n, dtype=torch.float32, device=device)).to(dtype)
