"""``token_norms`` as it was before the overflow guard (commit 3bd9f3d): its documented fixed order, no
scaling. The oracle the core tests compare the guarded version with, bit for bit."""

from __future__ import annotations

import torch


def naive_token_norms(k: torch.Tensor) -> torch.Tensor:
    x = k.float()
    per_head = x[..., 0] * x[..., 0]
    for c in range(1, x.shape[-1]):
        per_head = per_head + x[..., c] * x[..., c]
    total = per_head[:, 0]
    for h in range(1, x.shape[1]):
        total = total + per_head[:, h]
    n = total.sqrt()
    return torch.where(n > 0, n, torch.ones_like(n))
