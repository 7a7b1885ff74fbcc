#!/usr/bin/env python
"""Print the key-reconstruction table on the synthetic Token-Norm-Imbalance fixture.

Rows: every registered method (``oscar_core.list_methods()``) at its defaults, plus the OScaR
ablations (rotation only, scaling only, both off). Columns: relative Frobenius reconstruction error
of the keys on the low-norm sink tokens and over all tokens (``oscar_core.reference.roundtrip_keys``
on ``tests/core/tni_fixture.py``, keys [1, 8, 256, 128]), the same for values
(``oscar_core.reference.roundtrip_values`` on :func:`make_values`), and the method's effective storage
in bits per K/V element at 32768 tokens (8 KV heads, head_dim 128).

Standalone round trips have no model: RotateKV runs with ``calibration="identity"`` (no channel
reordering; its sink tokens come from a model's hidden states, so none are kept here), OTT's pool and
TurboQuant's outlier channels are traced/chosen on the fixture itself (one sequence, the 256 tokens
quantized as two 128-token blocks, as the cache commits a prompt); for these context-using methods
keys and values are encoded together (``MethodSpec.roundtrip_standalone``), so OTT's pool holds the
values of its traced tokens too.

    python scripts/tni_fixture_table.py [--seed 0] [--bits 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

from tni_fixture import make_tni_keys, relative_errors  # noqa: E402

import oscar_core as oc  # noqa: E402
from oscar_core.reference import roundtrip_keys, roundtrip_values  # noqa: E402

# Method parameters a standalone round trip needs (no model to calibrate on).
STANDALONE = {"rotatekv": {"calibration": "identity"}}


def make_values(seed: int = 0, num_heads: int = 8, tokens: int = 256, head_dim: int = 128,
                sink_positions: tuple[int, ...] = ()) -> torch.Tensor:
    """Synthetic values ``[1, H, T, D]``: a per-head channel bias N(0, 0.3^2) plus per-token noise N(0, 1),
    no outlier channels (values are quantized per token), and near-zero values (0.1x) at the sink
    positions (attention-sink tokens carry small values: Sun et al. 2024, "Massive activations")."""
    g = torch.Generator().manual_seed(10_000 + seed)
    v = 0.3 * torch.randn(num_heads, 1, head_dim, generator=g) + torch.randn(num_heads, tokens, head_dim, generator=g)
    for pos in sink_positions:
        v[:, pos] *= 0.1
    return v.unsqueeze(0)


def rows(seed: int = 0, bits: int = 2) -> list[tuple[str, ...]]:
    fx = make_tni_keys(seed=seed)
    _, h, _, d = fx.keys.shape
    values = make_values(seed, h, fx.keys.shape[2], d, fx.sink_positions)
    specs: list[tuple[str, dict]] = [(name, dict(STANDALONE.get(name, {}))) for name in oc.list_methods()]
    specs += [
        ("oscar", {"token_scaling": False}),
        ("oscar", {"rotation": False}),
        ("oscar", {"rotation": False, "token_scaling": False}),
    ]
    labels = {
        "token_scaling=False": "oscar rotation-only",
        "rotation=False": "oscar scaling-only",
        "rotation=False,token_scaling=False": "oscar both off (int zero, no rot/scale)",
    }
    out = []
    for name, overrides in specs:
        label = labels.get(",".join(f"{k}={v}" for k, v in overrides.items()), name)
        try:
            spec = oc.get_method(name, **overrides)
            if spec.quantizes and spec.bits != bits:
                spec = spec.replace(bits=bits)
            k_hat = roundtrip_keys(spec, fx.keys)
            v_hat = roundtrip_values(spec, values)
            if spec.uses_context:  # keys and values of one prompt together (OTT: the pool holds both)
                k_att, v_c = spec.roundtrip_standalone(spec.keys_to_attention(fx.keys), spec.values_to_cache(values))
                k_hat, v_hat = spec.keys_from_attention(k_att), spec.values_from_cache(v_c)
        except Exception as exc:  # e.g. a method that needs calibration data
            out.append((label, "n/a", "n/a", "n/a", "n/a", f"({type(exc).__name__}: {exc})"[:60]))
            continue
        sink, overall = relative_errors(fx.keys, k_hat, fx.sink_positions)
        v_sink, v_overall = relative_errors(values, v_hat, fx.sink_positions)
        out.append((label, f"{sink:.4f}", f"{overall:.4f}", f"{v_sink:.4f}", f"{v_overall:.4f}",
                    f"{spec.bits_per_element(32768, h, d):.4f}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", type=int, default=2)
    args = ap.parse_args()
    header = ("method", "K sink rel. err", "K overall rel. err", "V sink rel. err", "V overall rel. err",
              "bits/elem @32K")
    table = [header, *rows(args.seed, args.bits)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(f"TNI fixture, seed {args.seed}, {args.bits}-bit K/V (sinks at 0.10-0.20x median key norm, 0.1x values)")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
