#!/usr/bin/env python
"""Fuzz the reference round trips: no NaN/inf from finite inputs, non-finite inputs propagate.

Every case draws (deterministically from ``--seed`` and its index) a method configuration (every
registered method at its defaults or with other bits, plus the OScaR ablations), a dtype (fp16, bf16,
fp32), a shape ``[batch 1-2, kv heads 1-8, tokens (a multiple of 32), head_dim 64/128/256]`` and a
value regime (:data:`REGIMES`: ordinary, up to the dtype's max, denormals, all-zero, constant groups,
huge dynamic range within a group, ...), and runs ``oscar_core.reference.roundtrip_keys`` and
``roundtrip_values`` on it. A finite input must come back finite; in the ``nonfinite`` regime (inf,
-inf and NaN planted in an ordinary tensor) every non-finite input element must come back non-finite
(the documented policy: non-finite inputs propagate, they never come back as numbers).

    python scripts/fuzz_roundtrip.py [--cases 4608] [--seed 0] [--out results/fuzz/roundtrip.json]

The JSON holds the provenance (commit, torch version, seed, case count), the counts per method,
dtype and regime, and every failing case (enough to rebuild it: ``case(seed, index)``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import oscar_core as oc  # noqa: E402
from oscar_core.reference import roundtrip_keys, roundtrip_values  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEAD_DIMS = (64, 128, 256)
TOKENS = (32, 64, 96, 128, 256)
_ABLATIONS = {"oscar-scaling-only": {"rotation": False}, "oscar-rotation-only": {"token_scaling": False},
              "oscar-plain": {"rotation": False, "token_scaling": False}}


def method_variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (method name, overrides): every registered method plus the OScaR ablations."""
    out = {m: (m, {}) for m in oc.list_methods()}
    out.update({label: ("oscar", ov) for label, ov in _ABLATIONS.items()})
    return out


def _bits_choices(name: str) -> tuple[int, ...]:
    if name == "fp16":
        return (16,)
    if name == "turboquant":
        return (2, 3, 4)
    if name == "turboquant+":
        return (1, 2, 3, 4)
    return (1, 2, 3, 4, 8)


def _shape_overrides(name: str, heads: int, head_dim: int) -> dict[str, Any]:
    """What a method needs to accept this shape in a standalone round trip (no model to adapt to)."""
    if name != "rotatekv":
        return {}
    group = next(g for g in (4, 2, 1) if heads % g == 0)
    return {"calibration": "identity", "head_group": group,
            "group_size": 128 if (heads * head_dim) % 128 == 0 else head_dim}


def hashed_tensor(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Deterministic key-like data from integer hashing only (no RNG: the same bits on every torch
    version and platform): roughly Gaussian (a sum of 4 uniforms), one outlier channel per head
    (+12) and one negative (-8) where the head dim allows, as real keys have."""
    n = math.prod(shape)
    i = torch.arange(4 * n, dtype=torch.int64) + seed * 4 * n
    h = (i * 2654435761) % 2**32
    h = ((h ^ (h >> 16)) * 0x45D9F3B) % 2**32
    h = ((h ^ (h >> 16)) * 0x45D9F3B) % 2**32
    h = h ^ (h >> 16)
    u = (h.double() - 2**31) * 2.0**-31  # in [-1, 1)
    x = u.reshape(4, *shape).sum(dim=0) * 0.8660254037844386  # ~unit variance
    if shape[-1] > 70:
        x[..., 5] += 12.0
        x[..., 70] -= 8.0
    return x.to(dtype)


# -- value regimes: each returns a finite float64 tensor that fits the dtype ---------------------------


def _logmag(g: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    """Random signs, magnitudes log-uniform in [lo, hi]."""
    e = torch.rand(shape, generator=g, dtype=torch.float64) * (math.log(hi) - math.log(lo)) + math.log(lo)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
    return sign * e.exp()


def _gaussian(g, shape, fi):
    return torch.randn(shape, generator=g, dtype=torch.float64) * 10.0 ** float(torch.empty(1).uniform_(-2, 2, generator=g))


def _dtype_max(g, shape, fi):
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * fi.max


def _max_tokens(g, shape, fi):
    x = _gaussian(g, shape, fi)
    hot = torch.rand(shape[0], 1, shape[2], 1, generator=g) < 0.1
    big = _dtype_max(g, shape, fi).abs().clamp(min=0.5 * fi.max) * torch.sign(x)
    return torch.where(hot, big, x)


def _max_channels(g, shape, fi):
    x = _gaussian(g, shape, fi)
    hot = torch.rand(1, shape[1], 1, shape[3], generator=g) < 0.05
    return torch.where(hot, torch.sign(x) * fi.max, x)


def _denormal(g, shape, fi):
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * fi.tiny


def _zeros(g, shape, fi):
    return torch.zeros(shape, dtype=torch.float64)


def _constant_channels(g, shape, fi):  # every per-channel key group is constant
    return _logmag(g, (shape[0], shape[1], 1, shape[3]), fi.tiny, fi.max).expand(shape).clone()


def _constant_tokens(g, shape, fi):  # every per-token value group is constant
    return _logmag(g, (shape[0], shape[1], shape[2], 1), fi.tiny, fi.max).expand(shape).clone()


def _wide_range(g, shape, fi):  # magnitudes from the smallest normal to the max within every group
    return _logmag(g, shape, fi.tiny, fi.max)


def _sparse_extremes(g, shape, fi):
    u = torch.rand(shape, generator=g)
    x = torch.zeros(shape, dtype=torch.float64)
    x = torch.where(u < 0.02, fi.max * torch.sign(u - 0.01).double(), x)
    return torch.where((u > 0.5) & (u < 0.52), fi.tiny * fi.eps, x)  # the smallest subnormal


def _one_hot_max(g, shape, fi):
    x = torch.zeros(shape, dtype=torch.float64).reshape(-1)
    x[int(torch.randint(x.numel(), (1,), generator=g))] = -fi.max if torch.rand(1, generator=g) < 0.5 else fi.max
    return x.reshape(shape)


def _nonfinite(g, shape, fi):
    x = _gaussian(g, shape, fi)
    u = torch.rand(shape, generator=g)
    x = torch.where(u < 0.003, math.inf, x)
    x = torch.where((u > 0.5) & (u < 0.503), -math.inf, x)
    return torch.where(u > 0.997, math.nan, x)


REGIMES = {
    "gaussian": _gaussian, "dtype_max": _dtype_max, "max_tokens": _max_tokens, "max_channels": _max_channels,
    "denormal": _denormal, "zeros": _zeros, "constant_channels": _constant_channels,
    "constant_tokens": _constant_tokens, "wide_range": _wide_range, "sparse_extremes": _sparse_extremes,
    "one_hot_max": _one_hot_max, "nonfinite": _nonfinite,
}


def case(seed: int, index: int) -> dict[str, Any]:
    """The ``index``-th case of campaign ``seed``: its parameters (JSON-able) and a generator seed."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]  # noqa: E731
    variants = method_variants()
    label = pick(sorted(variants))
    name, overrides = variants[label]
    heads, head_dim = int(torch.randint(1, 9, (1,), generator=g)), pick(HEAD_DIMS)
    overrides = {**overrides, **_shape_overrides(name, heads, head_dim)}
    if torch.rand(1, generator=g) < 0.5:
        overrides["bits"] = pick(_bits_choices(name))
    return {"index": index, "method": label, "name": name, "overrides": overrides, "dtype": pick(sorted(DTYPES)),
            "shape": [int(torch.randint(1, 3, (1,), generator=g)), heads, pick(TOKENS), head_dim],
            "regime": pick(sorted(REGIMES)), "data_seed": int(torch.randint(2**31, (1,), generator=g))}


def case_input(c: dict[str, Any], stream: str) -> torch.Tensor:
    dtype = DTYPES[c["dtype"]]
    fi = torch.finfo(dtype)
    g = torch.Generator().manual_seed(c["data_seed"] + (0 if stream == "keys" else 1))
    x = REGIMES[c["regime"]](g, tuple(c["shape"]), fi)
    finite = torch.isfinite(x)  # rounding may carry a value just past the max to inf: keep it finite
    return torch.where(finite, x.clamp(-fi.max, fi.max), x).to(dtype)


def run_case(c: dict[str, Any]) -> dict[str, Any] | None:
    """None when the case holds, else a description of what failed."""
    spec = oc.get_method(c["name"], **c["overrides"])
    problems = []
    for stream, fn in (("keys", roundtrip_keys), ("values", roundtrip_values)):
        x = case_input(c, stream)
        y = fn(spec, x)
        if y.shape != x.shape or y.dtype != x.dtype:
            problems.append(f"{stream}: got {tuple(y.shape)} {y.dtype} for {tuple(x.shape)} {x.dtype}")
        bad_in = ~torch.isfinite(x)
        if not bool(bad_in.any()):
            n_bad = int((~torch.isfinite(y)).sum())
            if n_bad:
                problems.append(f"{stream}: {n_bad} NaN/inf outputs from finite inputs")
        else:
            lost = int((bad_in & torch.isfinite(y)).sum())
            if lost:
                problems.append(f"{stream}: {lost} of {int(bad_in.sum())} non-finite inputs came back finite")
    return {**c, "problems": problems} if problems else None


def campaign(n_cases: int, seed: int) -> dict[str, Any]:
    per = {"method": Counter(), "dtype": Counter(), "regime": Counter()}
    failures, finite_cases = [], 0
    for i in range(n_cases):
        c = case(seed, i)
        for k in per:
            per[k][c[k]] += 1
        finite_cases += c["regime"] != "nonfinite"
        bad = run_case(c)
        if bad is not None:
            failures.append(bad)
    nan_from_finite = sum(1 for f in failures if f["regime"] != "nonfinite")
    return {"cases": n_cases, "seed": seed, "finite_input_cases": finite_cases,
            "cases_nan_or_inf_from_finite_input": nan_from_finite,
            "nonfinite_input_cases": n_cases - finite_cases,
            "nonfinite_cases_not_propagated": len(failures) - nan_from_finite,
            "counts": {k: dict(sorted(v.items())) for k, v in per.items()}, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4608)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the fuzz is many small tensors)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print a summary only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from oscar_eval.provenance import environment

    t0 = time.monotonic()
    result = campaign(args.cases, args.seed)
    # environment(): git commit, sha256 of the sources (a commit marked +dirty does not say which tree ran),
    # versions, host: the one collector every result file uses
    result = {"provenance": {**environment(),
                             "command": " ".join(["scripts/fuzz_roundtrip.py", *(argv or sys.argv[1:])]),
                             "seconds": round(time.monotonic() - t0, 1)}, **result}
    print(f"{result['cases']} cases ({result['finite_input_cases']} finite, {result['nonfinite_input_cases']} "
          f"with inf/NaN) in {result['provenance']['seconds']} s: {result['cases_nan_or_inf_from_finite_input']} "
          f"NaN/inf from finite inputs, {result['nonfinite_cases_not_propagated']} non-finite inputs not propagated")
    for f in result["failures"][:20]:
        print(f"  case {f['index']}: {f['method']} {f['overrides']} {f['dtype']} {f['shape']} {f['regime']}: "
              f"{'; '.join(f['problems'])}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
