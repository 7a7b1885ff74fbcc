"""Check and time the OScaR INT2 CUDA kernels at head dims 64, 128 and 256 in one GPU run.

    PYTHONUNBUFFERED=1 python scripts/kernel_headdim_check.py --out results/kernels/headdim_check.json

Builds the extension (``OSCAR_KERNELS_VERBOSE=1`` shows ptxas), then for each head dim and each shape
(batch 1 x 32K tokens, batch 8 x 4K; 8 kv heads, 32 query heads; bf16):

* pack: the fused key kernel (Hadamard + token norm + quantize) and the value kernel against the
  reference quantizer, bit for bit (mismatching bytes counted; norms' max abs error);
* decode: split-KV + combine over the packed cache plus a 100-token window against the float32
  reference on the same packed data (max abs error, max abs error / max |ref|, relative L2 error);
* timing (oscar_eval.speed.timing): CUDA events around each call (each synchronised), median of
  ``--iters`` calls, the inputs cycled over enough copies that the working set exceeds the L2
  (decode; pack inputs are larger than the L2 already).

Prints one table and writes the JSON to ``--out``. Exit status 1 if the kernels do not build or any
check fails (a pack byte differs, or a decode error above ``--max-rel-l2``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oscar_core import kernels as K  # noqa: E402
from oscar_core.hadamard import hadamard_transform  # noqa: E402
from oscar_core.methods.oscar import OScaRSpec  # noqa: E402
from oscar_eval.provenance import environment  # noqa: E402
from oscar_eval.speed.timing import time_fn  # noqa: E402

HEAD_DIMS = (64, 128, 256)
SHAPES = ((1, 32768), (8, 4096))  # (batch, context tokens)
HQ, HKV, WINDOW, WINDOW_LEN = 32, 8, 128, 100
L2_CYCLE_BYTES = 256 << 20  # decode inputs are cycled until this many bytes are touched per round


def time_ms(calls: list, iters: int) -> float:
    """Median ms over ``iters`` CUDA-event-timed calls, each synchronised, cycling through ``calls``
    (oscar_eval.speed.timing.time_fn, eager; warm-up: the first three calls)."""
    nxt = itertools.cycle(calls)
    t = time_fn(lambda: next(nxt)(), warmup=min(3, len(calls)), min_reps=iters, max_reps=iters,
                use_graph=False, sync_each=True)
    return t.median_us / 1e3


def check_pack(d: int, batch: int, tokens: int, gen: torch.Generator) -> tuple[dict, torch.Tensor, torch.Tensor]:
    k = (torch.randn(batch, HKV, tokens, d, device="cuda", generator=gen) * 2 + 0.3).to(torch.bfloat16)
    k[..., 5] *= 12.0  # an outlier channel, as post-RoPE keys have
    v = torch.randn(batch, HKV, tokens, d, device="cuda", generator=gen).to(torch.bfloat16)
    spec = OScaRSpec()
    ref_k, ref_v = K.from_reference_blocks(spec.encode_keys(hadamard_transform(k)), spec.encode_values(v))
    got_k, got_v = K.pack_oscar_keys(k), K.pack_values(v)
    row = {
        "pack_key_bytes_mismatched": int((got_k.data != ref_k.data).sum()),
        "pack_norm_max_abs_err": float((got_k.norm - ref_k.norm).abs().max()),
        "pack_value_bytes_mismatched": int((got_v.data != ref_v.data).sum()),
        "pack_bytes": int(got_k.data.numel() + got_v.data.numel()),
    }
    del ref_k, ref_v
    return row, k, v


def run_one(d: int, batch: int, tokens: int, iters: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(1000 * d + batch)
    row: dict = {"head_dim": d, "batch": batch, "tokens": tokens, "hq": HQ, "hkv": HKV}
    pack_row, k, v = check_pack(d, batch, tokens, gen)
    row.update(pack_row)
    row["pack_keys_ms"] = time_ms([lambda k=k: K.pack_oscar_keys(k)], iters)
    row["pack_values_ms"] = time_ms([lambda v=v: K.pack_values(v)], iters)
    keys, values = K.pack_oscar_keys(k), K.pack_values(v)
    del k, v

    q = (torch.randn(batch, HQ, d, device="cuda", generator=gen) * 2).to(torch.bfloat16)
    rk = hadamard_transform(torch.randn(batch, HKV, WINDOW, d, device="cuda", generator=gen).to(torch.bfloat16))
    rv = torch.randn(batch, HKV, WINDOW, d, device="cuda", generator=gen).to(torch.bfloat16)
    ql = torch.full((batch,), tokens, dtype=torch.int32, device="cuda")
    rl = torch.full((batch,), WINDOW_LEN, dtype=torch.int32, device="cuda")
    ws = K.make_decode_workspace(HQ, keys, WINDOW)
    out = torch.full_like(q, float("nan"))
    K.decode_attention(q, keys, values, ql, rk, rv, rl, out=out, workspace=ws)
    ref = K.decode_attention_reference(q, keys, values, ql, rk, rv, rl)
    err = (out.float() - ref).abs()
    row["decode_finite"] = bool(torch.isfinite(out).all())
    row["decode_max_abs_err"] = float(err.max())
    row["decode_max_rel_err"] = float(err.max() / ref.abs().max())
    row["decode_rel_l2_err"] = float((out.float() - ref).norm() / ref.norm())
    del ref, err

    cache_bytes = keys.data.numel() + values.data.numel() + keys.norm.numel() * 4
    copies = [(keys, values)]
    while len(copies) * cache_bytes < L2_CYCLE_BYTES and len(copies) < 16:
        copies.append((K.KernelKeys(keys.data.clone(), keys.norm.clone()), K.KernelValues(values.data.clone())))
    calls = [
        (lambda kk=kk, vv=vv: K.decode_attention(q, kk, vv, ql, rk, rv, rl, out=out, workspace=ws))
        for kk, vv in copies
    ]
    row["decode_ms"] = time_ms(calls, iters)
    row["decode_input_copies"] = len(copies)
    row["decode_splits"] = ws.num_splits
    row["decode_cache_bytes"] = int(cache_bytes)
    row["decode_gbps"] = cache_bytes / (row["decode_ms"] * 1e-3) / 1e9
    return row


def ok(row: dict, max_rel_l2: float) -> bool:
    return (row["pack_key_bytes_mismatched"] == 0 and row["pack_value_bytes_mismatched"] == 0
            and row["pack_norm_max_abs_err"] == 0.0 and row["decode_finite"]
            and row["decode_rel_l2_err"] < max_rel_l2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="JSON output path")
    ap.add_argument("--iters", type=int, default=50, help="timed calls per measurement (median reported)")
    ap.add_argument("--max-rel-l2", type=float, default=1e-2, help="decode error bound against the fp32 reference")
    args = ap.parse_args()
    if args.iters < 1:
        ap.error(f"--iters must be at least 1, got {args.iters}")
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 1
    t0 = time.time()
    if not K.available():
        print(f"kernels unavailable: {K.unavailable_reason()}", file=sys.stderr)
        return 1
    build_s = time.time() - t0
    print(f"extension ready in {build_s:.1f}s (including the build when not cached)")

    rows = []
    for d in HEAD_DIMS:
        for batch, tokens in SHAPES:
            rows.append(run_one(d, batch, tokens, args.iters))
            torch.cuda.empty_cache()

    hdr = (f"{'D':>4} {'B':>2} {'tokens':>6} | {'pack k ms':>9} {'pack v ms':>9} {'bad bytes':>9} | "
           f"{'decode us':>9} {'GB/s':>6} {'max abs':>9} {'max rel':>9} {'rel L2':>9} | ok")
    print(hdr)
    print("-" * len(hdr))
    all_ok = True
    for r in rows:
        good = ok(r, args.max_rel_l2)
        all_ok &= good
        bad = r["pack_key_bytes_mismatched"] + r["pack_value_bytes_mismatched"]
        print(f"{r['head_dim']:>4} {r['batch']:>2} {r['tokens']:>6} | {r['pack_keys_ms']:9.3f} "
              f"{r['pack_values_ms']:9.3f} {bad:>9} | {r['decode_ms'] * 1e3:9.1f} {r['decode_gbps']:6.0f} "
              f"{r['decode_max_abs_err']:9.2e} {r['decode_max_rel_err']:9.2e} {r['decode_rel_l2_err']:9.2e} | "
              f"{'yes' if good else 'NO'}")
    result = {
        "env": environment(),
        "iters": args.iters,
        "build_or_load_s": build_s,
        "max_rel_l2": args.max_rel_l2,
        "all_ok": all_ok,
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
