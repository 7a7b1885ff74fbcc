"""Codebook (non-uniform) quantization for TurboQuant: Lloyd-Max centroids, Haar rotations, QJL sketches.

This is *not* a group-affine quantizer, so it does not belong to :mod:`oscar_core.quant` (the one
min-max primitive); both TurboQuant variants (:mod:`oscar_core.methods.turboquant`) use only this
module for their codebook numerics.

Coordinate density. For ``x`` uniform on the unit sphere of ``R^n``, each coordinate ``t`` has density
``f(t) = (1 - t^2)^((n-3)/2) / B(1/2, (n-1)/2)`` on ``[-1, 1]`` (``(t+1)/2 ~ Beta((n-1)/2, (n-1)/2)``);
for large ``n`` it tends to ``N(0, 1/n)``. After a random rotation every coordinate of a unit vector
has this density, which is what makes one fixed scalar codebook near-optimal (TurboQuant, Zandieh et
al. 2025). :func:`lloyd_max` computes the ``2^b`` Lloyd-Max centroids of ``f`` (cell means between
midpoints, iterated to a fixed point) in float64 with closed-form cell masses and first moments, once
per ``(n, bits)`` (memoized).

QJL (Zandieh et al. 2024): ``sign(S r)`` with ``S`` an ``m x n`` i.i.d. ``N(0, 1)`` matrix and
``r_hat = sqrt(pi/2) / m * ||r|| * S^T sign(S r)`` is an unbiased estimate of ``r`` (``E[s sign(s.r)] =
sqrt(2/pi) r/||r||``), hence ``<y, r_hat>`` is an unbiased estimate of ``<y, r>`` for any ``y``.

Code packing: 1-, 2- and 4-bit codes use :func:`oscar_core.quant.pack_codes`; 3-bit codes are packed
8 per 3 bytes here (little-endian bit order within each 24-bit word).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from oscar_core.quant import codes_per_byte, pack_codes, unpack_codes


def coordinate_density(t: np.ndarray, n: int) -> np.ndarray:
    """``f(t)`` of one coordinate of a uniform unit vector in ``R^n`` (``n >= 2``)."""
    from scipy.special import beta as beta_fn

    alpha = (n - 3) / 2.0
    return np.clip(1.0 - t * t, 0.0, None) ** alpha / beta_fn(0.5, (n - 1) / 2.0)


def _cell_mass(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    from scipy.stats import beta as beta_dist

    p = (n - 1) / 2.0
    lo, hi = (a + 1.0) / 2.0, (b + 1.0) / 2.0
    # Differences of the survival function are accurate in the upper tail, of the CDF in the lower.
    upper = beta_dist.sf(lo, p, p) - beta_dist.sf(hi, p, p)
    lower = beta_dist.cdf(hi, p, p) - beta_dist.cdf(lo, p, p)
    return np.where(lo > 0.5, upper, lower)


def _cell_first_moment(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """``int_a^b t f(t) dt`` in closed form: ``-(1-t^2)^(alpha+1) / (2 (alpha+1) B)``."""
    from scipy.special import beta as beta_fn

    alpha = (n - 3) / 2.0
    g = lambda t: -np.clip(1.0 - t * t, 0.0, None) ** (alpha + 1.0) / (2.0 * (alpha + 1.0))  # noqa: E731
    return (g(b) - g(a)) / beta_fn(0.5, (n - 1) / 2.0)


@functools.cache
def _lloyd_max_np(n: int, bits: int) -> tuple[float, ...]:
    if n < 3:
        raise ValueError(f"the codebook needs a dimension n >= 3, got {n}")
    if bits < 1 or bits > 8:
        raise ValueError(f"codebook bits must be in 1..8, got {bits}")
    k = 2**bits
    # Start from the quantiles of the (near-Gaussian) density.
    from scipy.stats import norm

    c = norm.ppf((np.arange(k) + 0.5) / k) / math.sqrt(n)
    c = np.clip(c, -0.999, 0.999)
    for _ in range(10000):
        edges = np.concatenate(([-1.0], (c[1:] + c[:-1]) / 2.0, [1.0]))
        mass = _cell_mass(edges[:-1], edges[1:], n)
        new = _cell_first_moment(edges[:-1], edges[1:], n) / np.maximum(mass, 1e-300)
        new = (new - new[::-1]) / 2.0  # the density is even: keep the codebook exactly symmetric
        if np.max(np.abs(new - c)) < 1e-15:
            c = new
            break
        c = new
    return tuple(float(v) for v in c)


def lloyd_max(n: int, bits: int) -> torch.Tensor:
    """Sorted Lloyd-Max centroids (float64, ``[2^bits]``) for the coordinate density in ``R^n``."""
    return torch.tensor(_lloyd_max_np(n, bits), dtype=torch.float64)


def codebook_mse(n: int, bits: int) -> float:
    """Expected squared error per coordinate of the codebook (so ``n *`` this per unit vector)."""
    c = np.array(_lloyd_max_np(n, bits))
    edges = np.concatenate(([-1.0], (c[1:] + c[:-1]) / 2.0, [1.0]))
    from scipy.integrate import quad

    total = 0.0
    for i in range(len(c)):
        total += quad(lambda t, ci=c[i]: (t - ci) ** 2 * coordinate_density(np.array(t), n), edges[i], edges[i + 1],
                      limit=200)[0]
    return total


def nearest_code(y: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every element of ``y`` (uint8)."""
    c = centroids.to(device=y.device, dtype=torch.float32)
    edges = (c[1:] + c[:-1]) / 2.0
    return torch.bucketize(y.float().contiguous(), edges).to(torch.uint8)


@functools.lru_cache(maxsize=256)
def _haar_cpu(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]  # sign fix: Haar-distributed (Mezzadri 2007)
    return q.float()


def haar_rotation(n: int, seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A fixed Haar-random orthogonal ``n x n`` matrix (QR of a seeded Gaussian, sign-fixed)."""
    return _haar_cpu(n, seed).to(device) if device is not None else _haar_cpu(n, seed)


@functools.lru_cache(maxsize=256)
def _gaussian_cpu(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float32)


def qjl_matrix(n: int, seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The fixed ``n x n`` i.i.d. N(0, 1) QJL projection."""
    s = _gaussian_cpu(n, n, seed)
    return s.to(device) if device is not None else s


def qjl_encode(r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Sign bits (uint8 0/1) of ``S r`` for rows ``r`` ``[..., n]``."""
    return (r.float() @ s.T >= 0).to(torch.uint8)


def qjl_decode(bits: torch.Tensor, norm: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of ``r`` from its sign sketch and norm (``norm`` ``[...]``)."""
    signs = bits.float() * 2.0 - 1.0
    m = s.shape[0]
    return (signs @ s) * (math.sqrt(math.pi / 2.0) / m) * norm.float().unsqueeze(-1)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes along the last axis (3-bit: 8 codes per 3 bytes; else :func:`oscar_core.quant.pack_codes`)."""
    if bits != 3:
        return pack_codes(codes, bits)
    n = codes.shape[-1]
    if n % 8:
        raise ValueError(f"3-bit packing needs a multiple of 8 codes, got {n}")
    c = codes.to(torch.int32).reshape(*codes.shape[:-1], n // 8, 8)
    word = (c << torch.arange(0, 24, 3, dtype=torch.int32, device=codes.device)).sum(dim=-1)
    out = torch.stack([(word >> sh) & 0xFF for sh in (0, 8, 16)], dim=-1)
    return out.to(torch.uint8).reshape(*codes.shape[:-1], n // 8 * 3)


def codes_in(packed_len: int, bits: int) -> int:
    """How many codes :func:`pack` stored in ``packed_len`` bytes."""
    return packed_len // 3 * 8 if bits == 3 else packed_len * codes_per_byte(bits)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    if bits != 3:
        return unpack_codes(packed, bits)
    b = packed.to(torch.int32).reshape(*packed.shape[:-1], packed.shape[-1] // 3, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    c = (word.unsqueeze(-1) >> torch.arange(0, 24, 3, dtype=torch.int32, device=packed.device)) & 7
    return c.reshape(*packed.shape[:-1], packed.shape[-1] // 3 * 8).to(torch.uint8)
