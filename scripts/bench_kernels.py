"""Check and time the OScaR INT2 CUDA kernels in one GPU run; print a short table last.

    PYTHONUNBUFFERED=1 python scripts/bench_kernels.py [--out-dir results/kernels] [--quick]

1. provenance (GPU, driver, clocks, CUDA, torch, nvcc, git commit) and the measured device-to-device
   copy bandwidth (bytes read + written), the roofline used for every fraction below;
2. correctness: pack kernels against the reference quantizer (codes, scale/zero, norms; mismatches
   counted), decode attention against the float32 reference on the same packed data (batch 1 and 8,
   contexts 1K+37, 32K, 128K, the Qwen3-8B and Llama-3.1-8B head layouts), CUDA-graph replay with
   changed device-side lengths;
3. timing (oscar_eval.speed.timing: CUDA graphs of 20 calls, 25 synchronised replays, median per
   call; inputs rotated so that the working set exceeds the L2): decode attention vs cuDNN / flash
   SDPA in BF16 at batch 1 over contexts and at 4K over batches; pack (prefill of 32K tokens) and one
   128-token flush.

Full JSON goes to ``$OUT/bench_kernels.json`` (when ``$OUT`` is set) and to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oscar_core import kernels as K  # noqa: E402
from oscar_core.hadamard import hadamard_transform  # noqa: E402
from oscar_core.kernels.layout import block_bytes_to_codes, meta_fp16  # noqa: E402
from oscar_core.methods.oscar import OScaRSpec  # noqa: E402
from oscar_eval.provenance import environment, git_dirty  # noqa: E402
from oscar_eval.speed.timing import copy_bandwidth_gbps, time_fn  # noqa: E402

ARCHS = {"qwen3-8b": (32, 8), "llama-3.1-8b": (32, 8)}
D = 128
L2_ROTATE_BYTES = 256 << 20
MAX_SETS = 64
COPY_BYTES = 4 << 30  # the roofline copy: 4 GiB read + 4 GiB written


def provenance() -> dict:
    """The one collector's environment (oscar_eval.provenance) and whether the kernel sources
    (csrc, oscar_core/kernels, untracked files included) differ from the commit."""
    dirty = git_dirty(ROOT, ("csrc", "oscar_core/kernels"), untracked=True)
    return {**environment(), "kernel_sources_dirty": bool(dirty)}


# --------------------------------------------------------------------------------------------------
# timing helpers
# --------------------------------------------------------------------------------------------------


def time_graph(fns: list, reps_per_graph: int = 20, replays: int = 25) -> dict:
    """``reps_per_graph`` calls cycling over ``fns`` captured in one CUDA graph, timed by
    oscar_eval.speed.timing.time_fn: ``replays`` replays, each synchronised; per-call us stats."""

    def cycle() -> None:
        for i in range(reps_per_graph):
            fns[i % len(fns)]()

    t = time_fn(cycle, calls=reps_per_graph, warmup=1, min_reps=replays, max_reps=replays, sync_each=True)
    if t.graph_error:
        print(f"  graph capture failed ({t.graph_error[:160]}); timed eagerly")
    return t.as_row()


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def make_keys(arch: str, n: int, h: int, t: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.randn(n, h, t, D, device="cuda", generator=gen)
    if arch == "llama-3.1-8b":  # a few large outlier channels (post-RoPE keys of Llama have them)
        k[..., 7] *= 12.0
        k[..., 70] *= 8.0
        k += 0.5
    else:  # Qwen3: k_norm makes keys well scaled; add per-token magnitude spread
        k *= torch.rand(n, 1, t, 1, device="cuda", generator=gen) * 1.5 + 0.25
    return k.to(torch.bfloat16)


def make_values(n: int, h: int, t: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(n, h, t, D, device="cuda", generator=gen) * 0.7 + 0.2).to(torch.bfloat16)


def split_len(total: int, window: int = 128) -> tuple[int, int]:
    q = (total // window) * window
    return q, total - q


# --------------------------------------------------------------------------------------------------
# correctness
# --------------------------------------------------------------------------------------------------


def check_pack(gen: torch.Generator, n: int, h: int, t: int, arch: str) -> dict:
    k = make_keys(arch, n, h, t, gen)
    v = make_values(n, h, t, gen)
    spec = OScaRSpec()
    k_att = hadamard_transform(k)
    kb = spec.encode_keys(k_att)
    vb = spec.encode_values(v)
    ref_k, ref_v = K.from_reference_blocks(kb, vb)
    got_k = K.pack_oscar_keys(k)
    got_v = K.pack_values(v)
    torch.cuda.synchronize()
    res = {"shape": [n, h, t, D], "arch": arch}
    for what, ref, got, keys in (("keys", ref_k, got_k, True), ("values", ref_v, got_v, False)):
        rc = block_bytes_to_codes(ref.data[..., :1024], keys)
        gc = block_bytes_to_codes(got.data[..., :1024], keys)
        rs, rz = meta_fp16(ref.data, keys)
        gs, gz = meta_fp16(got.data, keys)
        mism = int((rc != gc).sum())
        res[what] = {
            "codes": rc.numel(),
            "code_mismatches": mism,
            "code_mismatch_frac": mism / rc.numel(),
            "scale_mismatches": int((rs != gs).sum()),
            "zero_mismatches": int((rz != gz).sum()),
            "groups": rs.numel(),
        }
        if keys:
            rel = ((got.norm - ref.norm).abs() / ref.norm).max().item()
            res[what]["norm_max_rel_diff"] = rel
            if mism:
                # a mismatch is a tie when the reference's x/s sits on a rounding boundary (+-1e-4)
                x = (k_att.float() / kb["norm"][:, None, :, None]).view(n, h, t // 32, 32, D)
                s = rs.float().unsqueeze(-2)
                frac = torch.frac((x / s).abs())
                near = (frac - 0.5).abs() < 1e-4
                res[what]["mismatches_at_ties"] = int((near & (rc != gc)).sum())
    return res


def check_decode(gen: torch.Generator, arch: str, batch: int, ctx: int, fmt: str = "oscar") -> dict:
    """Decode attention vs the float32 reference on the same packed data; ``fmt`` oscar or kivi."""
    hq, hkv = ARCHS[arch]
    kivi = fmt == "kivi"
    lens = [max(1, ctx - 97 * i * (ctx > 4096) - 13 * i) for i in range(batch)]
    cap_q = max(split_len(x)[0] for x in lens)
    cap_q = max(cap_q, 32)
    r = 128
    keys = K.alloc_keys(batch, hkv, cap_q, "cuda", fmt)
    values = K.alloc_values(batch, hkv, cap_q, "cuda", fmt)
    rk = torch.empty(batch, hkv, r, D, dtype=torch.bfloat16, device="cuda")
    rv = torch.empty_like(rk)
    qlens, rlens = [], []
    for i, total in enumerate(lens):
        ql, rl = split_len(total)
        qlens.append(ql)
        rlens.append(rl)
        if ql:
            k = make_keys(arch, 1, hkv, ql, gen)
            v = make_values(1, hkv, ql, gen)
            kk, vv = (K.pack_kivi_keys(k), K.pack_kivi_values(v)) if kivi else (K.pack_oscar_keys(k), K.pack_values(v))
            keys.data[i : i + 1, :, : ql // 32].copy_(kk.data)
            if kk.norm is not None:
                keys.norm[i : i + 1, :ql].copy_(kk.norm)
            values.data[i : i + 1, :, : ql // 32].copy_(vv.data)
            del k, v, kk, vv
        wk = make_keys(arch, 1, hkv, r, gen)
        rk[i] = (wk if kivi else hadamard_transform(wk))[0]
        rv[i] = make_values(1, hkv, r, gen)[0]
    q = (torch.randn(batch, hq, D, device="cuda", generator=gen) * 2.0).to(torch.bfloat16)
    ql_t = torch.tensor(qlens, dtype=torch.int32, device="cuda")
    rl_t = torch.tensor(rlens, dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))
    K.decode_attention(q, keys, values, ql_t, rk, rv, rl_t, out=out)
    ref = K.decode_attention_reference(q, keys, values, ql_t, rk, rv, rl_t)
    torch.cuda.synchronize()
    err = ((out.float() - ref).norm() / ref.norm()).item()
    per_seq = [((out[i].float() - ref[i]).norm() / ref[i].norm()).item() for i in range(batch)]
    res = {
        "format": fmt,
        "arch": arch,
        "batch": batch,
        "context": ctx,
        "lengths": lens,
        "qlens": qlens,
        "rlens": rlens,
        "rel_err": err,
        "max_seq_rel_err": max(per_seq),
        "nan_free": bool(torch.isfinite(out).all()),
        "pass": bool(torch.isfinite(out).all()) and max(per_seq) < 1e-2,
    }
    del keys, values, ref
    torch.cuda.empty_cache()
    return res


def check_graph_replay(gen: torch.Generator) -> dict:
    b, hq, hkv, cap, r = 4, 32, 8, 4096, 128
    keys = K.pack_oscar_keys(make_keys("qwen3-8b", b, hkv, cap, gen))
    values = K.pack_values(make_values(b, hkv, cap, gen))
    rk = hadamard_transform(make_keys("qwen3-8b", b, hkv, r, gen))
    rv = make_values(b, hkv, r, gen)
    q = (torch.randn(b, hq, D, device="cuda", generator=gen) * 2).to(torch.bfloat16)
    ql = torch.tensor([4096, 1024, 32, 0], dtype=torch.int32, device="cuda")
    rl = torch.tensor([5, 128, 0, 17], dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        K.decode_attention(q, keys, values, ql, rk, rv, rl, out=out)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        K.decode_attention(q, keys, values, ql, rk, rv, rl, out=out)
    errs = []
    for new_q, new_r in (([4096, 1024, 32, 0], [5, 128, 0, 17]), ([2048, 4064, 0, 96], [1, 0, 64, 128])):
        ql.copy_(torch.tensor(new_q, dtype=torch.int32))
        rl.copy_(torch.tensor(new_r, dtype=torch.int32))
        out.fill_(float("nan"))
        g.replay()
        ref = K.decode_attention_reference(q, keys, values, ql, rk, rv, rl)
        errs.append(((out.float() - ref).norm() / ref.norm()).item())
    return {"rel_errs": errs, "pass": all(e < 1e-2 for e in errs)}


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def bench_decode(
    gen: torch.Generator,
    arch: str,
    batch: int,
    ctx: int,
    bw: float,
    diag: tuple[int, ...] = (),
    sdpa: bool = True,
    fmt: str = "oscar",
) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    hq, hkv = ARCHS[arch]
    kivi = fmt == "kivi"
    rows = []
    resid = 64 if ctx >= 128 else 0
    ql = ctx - resid
    # ---- INT2 (OScaR, or KIVI's format: no token norms) ----
    norm_bytes = 0 if kivi else batch * ql * 4
    int2_bytes = batch * hkv * (ql * 96 + resid * 2 * D * 2) + norm_bytes + batch * hq * D * 2
    nsets = max(1, min(MAX_SETS, math.ceil(L2_ROTATE_BYTES / int2_bytes)))
    sets = []
    for _ in range(nsets):
        zp = "float" if kivi else "integer"
        keys = K.KernelKeys(
            torch.randint(
                0, 256, (batch, hkv, ql // 32, 1536), dtype=torch.uint8, device="cuda", generator=gen
            ),
            None if kivi else torch.rand(batch, ql, device="cuda", generator=gen) + 0.5,
            zero_point=zp,
            rotate_query=not kivi,
        )
        values = K.KernelValues(
            torch.randint(
                0, 256, (batch, hkv, ql // 32, 1536), dtype=torch.uint8, device="cuda", generator=gen
            ),
            zero_point=zp,
        )
        # sane fp16 metadata (random bytes would give inf/NaN scales)
        for dd in (keys.data, values.data):
            meta = dd[..., 1024:].view(torch.float16)
            meta[..., :128].copy_(
                torch.rand(meta[..., :128].shape, device="cuda", generator=gen) * 0.05 + 0.01
            )
            meta[..., 128:].copy_(
                torch.randint(0, 4, meta[..., 128:].shape, device="cuda", generator=gen).half()
            )
        rk = torch.randn(batch, hkv, max(resid, 1), D, device="cuda", generator=gen).to(torch.bfloat16)
        rv = torch.randn_like(rk)
        q = torch.randn(batch, hq, D, device="cuda", generator=gen).to(torch.bfloat16)
        sets.append((q, keys, values, rk, rv, torch.empty_like(q)))
    qlt = torch.full((batch,), ql, dtype=torch.int32, device="cuda")
    rlt = torch.full((batch,), resid, dtype=torch.int32, device="cuda")
    ws = K.make_decode_workspace(hq, sets[0][1], sets[0][3].shape[2])  # shared: calls run in sequence
    fns = [
        (lambda s=s: K.decode_attention(s[0], s[1], s[2], qlt, s[3], s[4], rlt, out=s[5], workspace=ws))
        for s in sets
    ]
    t = time_graph(fns)
    nsplit, gps = ws.num_splits, ws.groups_per_split
    base = {
        "level": "kernel",
        "arch": arch,
        "batch": batch,
        "context": ctx,
        "num_q_heads": hq,
        "num_kv_heads": hkv,
        "head_dim": D,
    }
    rows.append(
        {
            **base,
            "impl": f"{fmt}-int2",
            "quantized_tokens": ql,
            "residual_tokens": resid,
            "splits": int(ws.pm.shape[-1]),
            "quantized_splits": nsplit,
            "groups_per_split": gps,
            "rotating_sets": nsets,
            **t,
            "bytes": int2_bytes,
            "gbps": int2_bytes / t["median_us"] / 1e3,
            "roofline_fraction": int2_bytes / t["median_us"] / 1e3 / bw,
        }
    )
    for ph in diag:  # 1: split kernel only, 2: combine only, 5: loads only, 9: math only
        fns = [
            (
                lambda s=s, ph=ph: K.decode_attention(
                    s[0], s[1], s[2], qlt, s[3], s[4], rlt, out=s[5], workspace=ws, _phases=ph
                )
            )
            for s in sets
        ]
        t = time_graph(fns)
        rows.append(
            {
                **base,
                "impl": f"{fmt}-int2-diag{ph}",
                **t,
                "bytes": int2_bytes,
                "gbps": int2_bytes / t["median_us"] / 1e3,
            }
        )
    del sets, fns
    torch.cuda.empty_cache()
    if not sdpa:
        return rows
    # ---- BF16 SDPA ----
    bf_bytes = batch * hkv * ctx * D * 2 * 2 + batch * hq * D * 2 * 2
    nsets = max(1, min(MAX_SETS, math.ceil(L2_ROTATE_BYTES / bf_bytes)))
    sets = []
    for _ in range(nsets):
        kc = torch.randn(batch, hkv, ctx, D, device="cuda", generator=gen).to(torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(batch, hq, 1, D, device="cuda", generator=gen).to(torch.bfloat16)
        sets.append((q, kc, vc))
    for name, backend in (
        ("cudnn-sdpa-bf16", SDPBackend.CUDNN_ATTENTION),
        ("flash-sdpa-bf16", SDPBackend.FLASH_ATTENTION),
    ):

        def run(s, backend=backend):
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(s[0], s[1], s[2], enable_gqa=True)

        try:
            run(sets[0])
            torch.cuda.synchronize()
            t = time_graph([(lambda s=s: run(s)) for s in sets])
            rows.append(
                {
                    **base,
                    "impl": name,
                    "rotating_sets": nsets,
                    **t,
                    "bytes": bf_bytes,
                    "gbps": bf_bytes / t["median_us"] / 1e3,
                    "roofline_fraction": bf_bytes / t["median_us"] / 1e3 / bw,
                }
            )
        except Exception as exc:
            rows.append({**base, "impl": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    del sets
    torch.cuda.empty_cache()
    return rows


def bench_pack(gen: torch.Generator, batch: int, tokens: int, bw: float, hkv: int = 8) -> dict:
    k = make_keys("qwen3-8b", batch, hkv, tokens, gen)
    v = make_values(batch, hkv, tokens, gen)
    nsets = max(1, min(MAX_SETS, math.ceil(L2_ROTATE_BYTES / (k.numel() * 4))))
    ks = [k] + [k.clone() for _ in range(nsets - 1)]
    vs = [v] + [v.clone() for _ in range(nsets - 1)]
    tk = time_graph([(lambda x=x: K.pack_oscar_keys(x)) for x in ks])
    tv = time_graph([(lambda x=x: K.pack_values(x)) for x in vs])
    nb_k = k.numel() * 2 + batch * hkv * tokens // 32 * 1536 + batch * tokens * 4
    nb_v = v.numel() * 2 + batch * hkv * tokens // 32 * 1536
    return {
        "batch": batch,
        "tokens": tokens,
        "num_kv_heads": hkv,
        "keys": {
            **tk,
            "bytes": nb_k,
            "gbps": nb_k / tk["median_us"] / 1e3,
            "roofline_fraction": nb_k / tk["median_us"] / 1e3 / bw,
        },
        "values": {
            **tv,
            "bytes": nb_v,
            "gbps": nb_v / tv["median_us"] / 1e3,
            "roofline_fraction": nb_v / tv["median_us"] / 1e3 / bw,
        },
    }


# --------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(ROOT / "results" / "kernels"))
    ap.add_argument("--name", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    ap.add_argument("--diag", action="store_true", help="only time the kernel's phases (diagnostics)")
    ap.add_argument("--profile-one", action="store_true", help="one decode call at batch 1, 128K (for ncu)")
    ap.add_argument("--pack-only", action="store_true", help="only check and time the pack kernels")
    args = ap.parse_args()
    if args.pack_only:
        gen = torch.Generator(device="cuda").manual_seed(0)
        for n, h, t in ((1, 8, 4096), (2, 8, 1024)):
            p = check_pack(gen, n, h, t, "qwen3-8b")
            print(f"pack {p['shape']}: keys {p['keys']}, values {p['values']}")
        bw = copy_bandwidth_gbps(COPY_BYTES)["gbps"]
        for name, (b, t) in {"prefill_32k": (1, 32768), "flush_128_b1": (1, 128), "flush_128_b8": (8, 128)}.items():
            p = bench_pack(gen, b, t, bw)
            print(f"pack {name}: keys {p['keys']['median_us']:.1f} us ({p['keys']['roofline_fraction']:.2f}), "
                  f"values {p['values']['median_us']:.1f} us ({p['values']['roofline_fraction']:.2f})")
        return 0
    if args.profile_one:
        gen = torch.Generator(device="cuda").manual_seed(0)
        bench_decode(gen, "qwen3-8b", 1, 131072, 1.0, sdpa=False)
        return 0
    if args.diag:
        gen = torch.Generator(device="cuda").manual_seed(0)
        for b, c in ((1, 131072), (1, 4096), (64, 4096)):
            for r in bench_decode(gen, "qwen3-8b", b, c, 1.0, diag=(1, 2, 5, 9), sdpa=False):
                print(f"diag b{b} ctx {c} {r['impl']:>20}: {r['median_us']:8.1f} us  {r['gbps']:6.0f} GB/s")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 2
    t0 = time.time()
    prov = provenance()
    print(json.dumps(prov, indent=1))
    ok = K.available()
    print(f"kernels available: {ok} {K.unavailable_reason()} ({time.time() - t0:.1f}s incl. build)")
    if not ok:
        return 3
    gen = torch.Generator(device="cuda").manual_seed(1234)
    bw = copy_bandwidth_gbps(COPY_BYTES)
    print(f"copy bandwidth: {bw['gbps']:.0f} GB/s")
    result: dict = {
        "schema": 1,
        "kind": "kernels",
        "env": prov,
        "copy_bandwidth": bw,
        "peak_bandwidth_gbps": bw["gbps"],
        "correctness": {},
        "rows": [],
    }

    # ---- correctness ----
    packs = []
    for arch in ARCHS:
        for n, h, t in ((1, 8, 4096), (2, 8, 1024), (1, 4, 32)):
            packs.append(check_pack(gen, n, h, t, arch))
            p = packs[-1]
            print(
                f"pack {arch} {p['shape']}: key code mismatches {p['keys']['code_mismatches']}"
                f"/{p['keys']['codes']} (ties {p['keys'].get('mismatches_at_ties', 0)}), "
                f"scale {p['keys']['scale_mismatches']}, zero {p['keys']['zero_mismatches']}, "
                f"norm rel {p['keys']['norm_max_rel_diff']:.1e}; value mismatches "
                f"{p['values']['code_mismatches']}, meta {p['values']['scale_mismatches']}"
                f"/{p['values']['zero_mismatches']}"
            )
    result["correctness"]["pack"] = packs
    decs = []
    ctxs = (1024 + 37, 4096) if args.quick else (1024 + 37, 32768, 131072)
    for arch in ARCHS:
        for batch in (1, 8):
            for ctx in ctxs:
                decs.append(check_decode(gen, arch, batch, ctx))
                d = decs[-1]
                print(
                    f"decode {arch} b{batch} ctx {ctx}: rel err {d['rel_err']:.2e} "
                    f"(max seq {d['max_seq_rel_err']:.2e}) {'PASS' if d['pass'] else 'FAIL'}"
                )
    for batch in (1, 8):
        for ctx in ctxs[:2]:
            decs.append(check_decode(gen, "qwen3-8b", batch, ctx, fmt="kivi"))
            d = decs[-1]
            print(
                f"decode kivi-format b{batch} ctx {ctx}: rel err {d['rel_err']:.2e} "
                f"(max seq {d['max_seq_rel_err']:.2e}) {'PASS' if d['pass'] else 'FAIL'}"
            )
    result["correctness"]["decode"] = decs
    gr = check_graph_replay(gen)
    print(f"graph replay with changed lengths: {gr}")
    result["correctness"]["graph_replay"] = gr

    # ---- timing ----
    ctx_sweep = (4096, 32768, 131072) if args.quick else (1024, 4096, 8192, 16384, 32768, 65536, 131072)
    batch_sweep = (1, 8) if args.quick else (1, 8, 16, 32, 48, 64, 128)
    for ctx in ctx_sweep:
        result["rows"] += bench_decode(gen, "qwen3-8b", 1, ctx, bw["gbps"])
        result["rows"] += bench_decode(gen, "qwen3-8b", 1, ctx, bw["gbps"], sdpa=False, fmt="kivi")
        print(f"timed b1 ctx {ctx}")
    for batch in batch_sweep:
        if batch == 1:
            continue
        result["rows"] += bench_decode(gen, "qwen3-8b", batch, 4096, bw["gbps"])
        result["rows"] += bench_decode(gen, "qwen3-8b", batch, 4096, bw["gbps"], sdpa=False, fmt="kivi")
        print(f"timed b{batch} ctx 4096")
    result["pack"] = {
        "prefill_32k": bench_pack(gen, 1, 32768, bw["gbps"]),
        "flush_128_b1": bench_pack(gen, 1, 128, bw["gbps"]),
        "flush_128_b8": bench_pack(gen, 8, 128, bw["gbps"]),
    }
    result["wall_s"] = time.time() - t0

    # ---- write ----
    name = args.name or f"h200_{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M')}"
    outs = [Path(args.out_dir)]
    if os.environ.get("OUT"):
        outs.append(Path(os.environ["OUT"]))
    for d in outs:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.json").write_text(json.dumps(result, indent=1))

    # ---- table ----
    print()
    print("correctness:")
    kmis = sum(p["keys"]["code_mismatches"] for p in packs)
    kcodes = sum(p["keys"]["codes"] for p in packs)
    vmis = sum(p["values"]["code_mismatches"] for p in packs)
    print(f"  pack: key code mismatches {kmis}/{kcodes} ({kmis / kcodes:.2e}), value code mismatches {vmis}")
    print(
        f"  decode: max rel err {max(d['max_seq_rel_err'] for d in decs):.2e}, all pass "
        f"{all(d['pass'] for d in decs)}; graph replay {gr['pass']}"
    )
    print(f"copy bandwidth {bw['gbps']:.0f} GB/s")
    by = {}
    for r in result["rows"]:
        by.setdefault((r["batch"], r["context"]), {})[r["impl"]] = r
    hdr = (f"{'b':>4} {'ctx':>7} | {'int2 med/min/max us':>22} {'GB/s':>6} {'frac':>5} | {'cudnn us':>8} "
           f"{'flash us':>8} | {'x cudnn':>7} {'x flash':>7} | {'kivi us':>7} {'frac':>5} {'x cudnn':>7}")
    print(hdr)
    for (b, c), rr in by.items():
        o = rr.get("oscar-int2", {})
        cu = rr.get("cudnn-sdpa-bf16", {}).get("median_us", float("nan"))
        fl = rr.get("flash-sdpa-bf16", {}).get("median_us", float("nan"))
        m = o.get("median_us", float("nan"))
        kv = rr.get("kivi-int2", {})
        km = kv.get("median_us", float("nan"))
        print(
            f"{b:>4} {c:>7} | {m:7.1f}/{o.get('min_us', 0):6.1f}/{o.get('max_us', 0):6.1f} "
            f"{o.get('gbps', 0):6.0f} {o.get('roofline_fraction', 0):5.2f} | {cu:8.1f} {fl:8.1f} | "
            f"{cu / m:7.2f} {fl / m:7.2f} | {km:7.1f} {kv.get('roofline_fraction', 0):5.2f} {cu / km:7.2f}"
        )
    for k_, p in result["pack"].items():
        print(
            f"pack {k_}: keys {p['keys']['median_us']:.1f} us ({p['keys']['gbps']:.0f} GB/s, "
            f"{p['keys']['roofline_fraction']:.2f}), values {p['values']['median_us']:.1f} us "
            f"({p['values']['gbps']:.0f} GB/s, {p['values']['roofline_fraction']:.2f})"
        )
    print(f"wall {result['wall_s']:.0f}s; json: {[str(d / (name + '.json')) for d in outs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
