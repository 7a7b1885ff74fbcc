#!/usr/bin/env python
"""Print the key-reconstruction table on the synthetic Token-Norm-Imbalance fixture.

Rows: every registered method (``oscar_core.list_methods()``) at its defaults, plus the OScaR
ablations (rotation only, scaling only, both off). Columns: relative Frobenius reconstruction error
of the keys on the low-norm sink tokens and over all tokens (``oscar_core.reference.roundtrip_keys``
on ``tests/core/tni_fixture.py``, keys [1, 8, 256, 128]), and the method's effective storage in
bits per K/V element at 32768 tokens (8 KV heads, head_dim 128).

    python scripts/tni_fixture_table.py [--seed 0] [--bits 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

from tni_fixture import make_tni_keys, relative_errors  # noqa: E402

import oscar_core as oc  # noqa: E402
from oscar_core.reference import roundtrip_keys  # noqa: E402


def rows(seed: int = 0, bits: int = 2) -> list[tuple[str, str, str, str]]:
    fx = make_tni_keys(seed=seed)
    _, h, _, d = fx.keys.shape
    specs: list[tuple[str, dict]] = [(name, {}) for name in oc.list_methods()]
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
        except Exception as exc:  # e.g. a method that needs calibration data
            out.append((label, "n/a", "n/a", f"({type(exc).__name__}: {exc})"[:60]))
            continue
        sink, overall = relative_errors(fx.keys, k_hat, fx.sink_positions)
        out.append((label, f"{sink:.4f}", f"{overall:.4f}", f"{spec.bits_per_element(32768, h, d):.4f}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", type=int, default=2)
    args = ap.parse_args()
    header = ("method", "sink rel. err", "overall rel. err", "bits/elem @32K")
    table = [header, *rows(args.seed, args.bits)]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    print(f"TNI fixture, seed {args.seed}, {args.bits}-bit keys (sinks at 0.10-0.20x median key norm)")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
