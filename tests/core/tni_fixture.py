"""A seeded synthetic Token-Norm-Imbalance (TNI) fixture for post-RoPE keys.

It reproduces the two structures of real LLM keys that 2-bit KV quantization has to cope with, at
magnitudes typical of Llama-class models (head_dim 128, 8 KV heads):

* **Outlier channels** (KIVI, Liu et al. 2024, Fig. 2; QuaRot): a few key channels per head carry a
  large magnitude, with the same sign, for every token. They sit in the low-frequency RoPE pairs,
  where RoPE barely rotates over a few hundred positions, so they survive RoPE as fixed channels. Here:
  two RoPE pairs (4 channels) per head, chosen among the 16 lowest-frequency pairs, with amplitude
  8-12 (ordinary channels have std ~1.1), i.e. ~10x the typical channel, as in the KIVI plots.
* **Token Norm Imbalance** (OScaR, Su et al.): a few tokens (the attention sink / BOS and a few
  delimiter-like tokens) have keys whose norm is a small fraction of the typical token's; the paper
  shows norms around 0.1-0.2x the median for text LLMs. Their keys are "flat": no outlier channels,
  the energy spread over all channels (here: a Gaussian direction). They sit at positions 0, 45, 131,
  203 (four different 32-token groups) with norm ratios 0.10, 0.13, 0.16, 0.20 of the median
  all-heads key norm of the ordinary tokens.

Ordinary tokens (pre-RoPE): a per-head, per-channel bias ~ N(0, 0.5^2) plus per-token content noise
~ N(0, 1); outlier channels add the fixed-direction amplitude and a larger noise (std 1.5). Then
Llama-3 RoPE (theta 500000, rotate-half layout) for positions 0..T-1. Nothing here is tuned to the
quantizers: the numbers come from the published observations above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SINK_POSITIONS = (0, 45, 131, 203)
SINK_NORM_RATIOS = (0.10, 0.13, 0.16, 0.20)
ROPE_THETA = 500000.0


@dataclass(frozen=True)
class TNIFixture:
    keys: torch.Tensor  # [1, H, T, D] float32, post-RoPE
    sink_positions: tuple[int, ...]
    outlier_channels: torch.Tensor  # [H, 4] channel indices of each head's outlier channels
    median_norm: float  # median all-heads key norm of the ordinary tokens


def _rope(x: torch.Tensor, theta: float = ROPE_THETA) -> torch.Tensor:
    """Llama rotate-half RoPE on [..., T, D] for positions 0..T-1."""
    t, d = x.shape[-2], x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # [D/2]
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = torch.cat((ang.cos(), ang.cos()), dim=-1).float()
    sin = torch.cat((ang.sin(), ang.sin()), dim=-1).float()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    rot = torch.cat((-x2, x1), dim=-1)
    return x * cos + rot * sin


def make_tni_keys(
    seed: int = 0, num_heads: int = 8, tokens: int = 256, head_dim: int = 128
) -> TNIFixture:
    g = torch.Generator().manual_seed(seed)
    h, t, d = num_heads, tokens, head_dim
    half = d // 2
    bias = 0.5 * torch.randn(h, 1, d, generator=g)
    keys = bias + torch.randn(h, t, d, generator=g)
    # Two low-frequency RoPE pairs per head (pair i = channels i and i + D/2).
    outliers = []
    for head in range(h):
        pairs = half - 16 + torch.randperm(16, generator=g)[:2]
        for p in pairs.tolist():
            amp = 8.0 + 4.0 * torch.rand(1, generator=g).item()
            phi = 2 * torch.pi * torch.rand(1, generator=g).item()
            a, b = amp * torch.cos(torch.tensor(phi)), amp * torch.sin(torch.tensor(phi))
            keys[head, :, p] = a + 1.5 * torch.randn(t, generator=g)
            keys[head, :, p + half] = b + 1.5 * torch.randn(t, generator=g)
        outliers.append(sorted([*pairs.tolist(), *(pairs + half).tolist()]))
    keys = _rope(keys)
    norms = keys.pow(2).sum(dim=(0, 2)).sqrt()  # all-heads norm per token
    ordinary = [i for i in range(t) if i not in SINK_POSITIONS]
    median = norms[ordinary].median().item()
    for pos, ratio in zip(SINK_POSITIONS, SINK_NORM_RATIOS, strict=True):
        direction = torch.randn(h, d, generator=g)
        keys[:, pos, :] = direction * (ratio * median / direction.norm())
    return TNIFixture(
        keys=keys.unsqueeze(0).contiguous(),
        sink_positions=SINK_POSITIONS,
        outlier_channels=torch.tensor(outliers),
        median_norm=median,
    )


def relative_errors(k: torch.Tensor, k_hat: torch.Tensor, sink_positions: tuple[int, ...]) -> tuple[float, float]:
    """(sink, overall) relative Frobenius reconstruction error, all heads together."""
    k, k_hat = k.float(), k_hat.float()
    idx = list(sink_positions)
    sink = (k_hat[:, :, idx] - k[:, :, idx]).norm() / k[:, :, idx].norm()
    overall = (k_hat - k).norm() / k.norm()
    return sink.item(), overall.item()
