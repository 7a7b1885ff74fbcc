"""Token Norm Imbalance (TNI) diagnostics: how unequal are the key norms of a model's tokens?

The OScaR paper's observation: in text LLMs a few tokens (attention sinks, delimiters) have keys of
a small fraction of the median norm. Per-channel groups then get ranges set by ordinary tokens, and
the low-norm tokens are quantized to almost nothing. These functions measure that on any model.

Keys are taken post-RoPE (after ``k_norm`` where the model has one), as the cache sees them, by
running the prompt through the model with transformers' own dynamic cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from oscar_core.compat import forward_cache_kwarg
from oscar_core.methods import MethodSpec, get_method
from oscar_core.methods.oscar import token_norms
from oscar_core.reference import roundtrip_keys


@dataclass
class LayerTNI:
    layer: int
    norms: torch.Tensor  # [T] fp32 L2 norm of each token's key over all KV heads
    median: float
    low_tokens: list[int]  # tokens below ``low_ratio`` x the median norm
    errors: dict[str, dict[str, float]]  # method -> {"all", "low", "rest"} relative errors

    @property
    def min_ratio(self) -> float:
        return float(self.norms.min() / self.median)


@torch.no_grad()
def collect_keys(model: torch.nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Post-RoPE keys ``[1, H, T, D]`` (float32) of every decoder layer for one prompt."""
    from oscar_core.model import inspect_model

    info = inspect_model(model)
    cache = DynamicCache(config=info.text_config)
    model(input_ids=input_ids, **{forward_cache_kwarg(model): cache}, use_cache=True)
    return [layer.keys.float() for layer in cache.layers]


def _rel_err(x: torch.Tensor, x_hat: torch.Tensor, tokens: list[int]) -> float:
    if not tokens:
        return float("nan")
    idx = torch.tensor(tokens)
    a, b = x[:, :, idx], x_hat[:, :, idx]
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def analyze_keys(
    keys: list[torch.Tensor],
    methods: list[str | MethodSpec] = ("kivi", "oscar"),
    low_ratio: float = 0.25,
) -> list[LayerTNI]:
    """Per layer: token norms, low-norm tokens, and each method's key reconstruction error on them.

    The error is measured on the largest prefix of whole key groups (as a flushed block would be).
    """
    specs = [get_method(m) for m in methods]
    out = []
    for i, k in enumerate(keys):
        norms = token_norms(k)[0]  # OScaR's own norm (fixed-order fp32 sum; an all-zero key counts as 1)
        median = float(norms.median())
        low = [t for t in range(len(norms)) if norms[t] < low_ratio * median]
        errors = {}
        for spec in specs:
            group = spec.group_for(spec.key_axis, k.shape[-1]) if spec.key_axis == "token" else 1
            usable = k.shape[2] // group * group
            if usable == 0 or not spec.quantizes:
                continue
            block = k[:, :, :usable]
            k_hat = roundtrip_keys(spec, block)
            in_block = [t for t in low if t < usable]
            rest = [t for t in range(usable) if t not in set(in_block)]
            errors[spec.name] = {
                "all": _rel_err(block, k_hat, list(range(usable))),
                "low": _rel_err(block, k_hat, in_block),
                "rest": _rel_err(block, k_hat, rest),
            }
        out.append(LayerTNI(i, norms, median, low, errors))
    return out


def norm_ratio_heatmap(layers: list[LayerTNI], path: str, max_tokens: int = 256) -> None:
    """Save a layers x tokens heatmap of norm / median (log scale) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = torch.stack([(lt.norms[:max_tokens] / lt.median) for lt in layers]).clamp_min(1e-3).log10()
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(layers) + 1.5))
    im = ax.imshow(data.numpy(), aspect="auto", cmap="magma", vmin=-1.5, vmax=0.5)
    ax.set_xlabel("token")
    ax.set_ylabel("layer")
    ax.set_title("key norm / median norm (log10)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
