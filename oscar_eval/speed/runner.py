"""``run_speed``: plan a sweep, measure it, print it, write ``results/speed/<name>.json``."""

from __future__ import annotations

import gc
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oscar_eval.paths import results_root
from oscar_eval.speed import plan as pl
from oscar_eval.speed import results as rs
from oscar_eval.speed import roofline as rf

NO_CUDA_MESSAGE = "oscar-eval speed needs a CUDA GPU; none found (torch.cuda.is_available() is False)"

# The paper's numbers (Qwen3-8B, one H20, BF16 FlashDecoding-v2 with a torch.cat dynamic cache).
PAPER = {
    "latency_128k_b1_ms": {"bf16": 92.9, "oscar": 30.9, "speedup": 3.0},
    "kv_memory_ratio": 5.3,
    "throughput_4k_b48_tok_s": {"bf16": 331.0, "oscar": 1354.0, "speedup": 4.1},
}


class NoCudaError(RuntimeError):
    def __init__(self) -> None:
        super().__init__(NO_CUDA_MESSAGE)


@dataclass
class SpeedOptions:
    levels: tuple[str, ...] = ("kernel", "e2e")
    archs: tuple[str, ...] = ("qwen3-8b",)
    contexts: tuple[int, ...] = pl.CONTEXT_SWEEP
    batches: tuple[int, ...] = pl.BATCH_SWEEP
    batch_context: int = pl.BATCH_SWEEP_CONTEXT
    paper_points: bool = True
    kernel_impls: tuple[str, ...] = pl.KERNEL_IMPLS
    e2e_impls: tuple[str, ...] = pl.E2E_IMPLS
    e2e_contexts: tuple[int, ...] | None = None  # None: same as contexts
    e2e_batches: tuple[int, ...] | None = None
    layers: int | None = None
    memory_budget_gb: float | None = None
    budget_context: int = 4096
    results_dir: str | None = None  # None: oscar_eval.paths.results_root() ($OSCAR_EVAL_HOME/results)
    name: str | None = None
    target_ms: float = 100.0
    min_reps: int = 20
    ref_max_tokens: int = pl.REF_MAX_TOKENS
    copy_bytes: int = 2 << 30
    progress: bool = True
    check: bool = True
    time_limit_s: float | None = None  # stop measuring (keep what was measured) past this
    kernel_time_share: float = 0.4
    cache_kernels: str | None = None  # make_cache(kernels=...) for the oscar-cache arm; None: its default  # of time_limit_s, for the kernel level when both levels run
    notes: list[str] = field(default_factory=list)


def default_name(opts: SpeedOptions) -> str:
    import os
    import re

    arch = "_".join(os.path.basename(os.path.normpath(a)) for a in opts.archs)
    lv = "_".join(opts.levels)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{arch}-{lv}-{stamp}")


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise NoCudaError()


def _fmt_row(r: dict[str, Any]) -> str:
    if r.get("skip"):
        return (f"  {r['level']:<6} {r['impl']:<20} b={r['batch']:<4} T={r['context']:<7} "
                f"skipped: {r['skip']}")
    g = "graph" if r.get("graph") else "eager"
    tps = f"  {r['tokens_per_s']:9.1f} tok/s" if r.get("tokens_per_s") else ""
    return (
        f"  {r['level']:<6} {r['impl']:<20} b={r['batch']:<4} T={r['context']:<7} "
        f"{r['median_us']:10.1f} us [{r['min_us']:.1f}-{r['max_us']:.1f}]  "
        f"{r['gbps']:7.1f} GB/s  {100 * r['roofline_fraction']:5.1f}% roofline  {g}{tps}"
    )


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
    except Exception:
        return None


def _base_row(level: str, arch: str, impl: str, batch: int, context: int, s: pl.Shape) -> dict[str, Any]:
    return {
        "level": level, "arch": arch, "impl": impl, "batch": batch, "context": context,
        "num_q_heads": s.num_q_heads, "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim,
        "median_us": None, "min_us": None, "max_us": None, "bytes": None, "gbps": None,
        "roofline_fraction": None, "kv_bytes": None, "peak_mem_bytes": None,
    }


def _finish_row(row: dict[str, Any], nbytes: float, bw: float) -> None:
    row["bytes"] = int(nbytes)
    row["roofline_us"] = round(rf.roofline_us(nbytes, bw), 3)
    row["gbps"] = round(rf.achieved_gbps(nbytes, row["median_us"]), 1)
    row["roofline_fraction"] = round(rf.roofline_fraction(nbytes, row["median_us"], bw), 4)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {msg[0] if msg else ''}"[:300]


def _free() -> None:
    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _available_bytes() -> int:
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free * 0.92)


def _kernel_shapes(archs: tuple[str, ...]) -> dict[tuple[int, int, int], list[str]]:
    """Distinct attention shapes: archs with the same (H_q, H_kv, D) share one measurement."""
    from oscar_eval import archs as A

    out: dict[tuple[int, int, int], list[str]] = {}
    for a in archs:
        sh = A.shapes(a)
        out.setdefault((sh["num_q_heads"], sh["num_kv_heads"], sh["head_dim"]), []).append(A.canonical(a))
    return out


def run_kernel_level(opts: SpeedOptions, bw: float, rows: list[dict[str, Any]], log: Callable[[str], None],
                     deadline: float | None) -> None:
    """All BF16 baselines at every point first (the kernel extension builds meanwhile), then the packed
    impls in order of importance; the paper's settings first within each."""
    points = pl.sweep_shapes(opts.contexts, opts.batches, opts.batch_context, opts.paper_points)
    for (hq, hkv, d), arch_names in _kernel_shapes(opts.archs).items():
        s = pl.Shape(hq, hkv, d)
        label = arch_names[0]
        planned = pl.plan("kernel", label, s, opts.kernel_impls, points, _available_bytes(), None,
                          opts.ref_max_tokens)
        bf16 = [i for i in opts.kernel_impls if i.startswith("bf16")]
        packed = [i for i in opts.kernel_impls if not i.startswith("bf16")]
        ordered = pl.order_points([p for p in planned if p.impl in bf16], bf16)
        for impl in packed:
            ordered += pl.order_points([p for p in planned if p.impl == impl], [impl])
        log(f"kernel level: {', '.join(arch_names)} (H_q={hq}, H_kv={hkv}, D={d}): {len(planned)} points")
        bar = _progress(len(ordered), opts.progress, f"kernel {label}")
        for p in ordered:
            row = _kernel_row(p, s, arch_names, opts, bw, deadline)
            rows.append(row)
            if bar is not None:
                bar.update(1)
            log(_fmt_row(row))
        if bar is not None:
            bar.close()


def _kernel_row(p: pl.Point, s: pl.Shape, arch_names: list[str], opts: SpeedOptions, bw: float,
                deadline: float | None) -> dict[str, Any]:
    import torch

    from oscar_eval.speed import kernel as K
    from oscar_eval.speed.timing import time_fn

    t0 = time.monotonic()
    row = _base_row("kernel", p.arch, p.impl, p.batch, p.context, s)
    row["tags"] = p.tags
    row["same_shapes_as"] = arch_names[1:]
    row["est_mem_bytes"] = p.est_bytes
    if p.skip is None and deadline is not None and time.monotonic() > deadline:
        p.skip = "time limit reached before this point"
    if p.skip:
        row["skip"] = p.skip
        return row
    try:
        torch.cuda.reset_peak_memory_stats()
        case = K.BUILDERS[p.impl](p.batch, p.context, s, "cuda")
        if opts.check and case.check is not None:
            row["rel_err_vs_fp32"] = round(case.check(), 6)
        t = time_fn(case.fn, calls=case.calls, min_reps=opts.min_reps, target_ms=opts.target_ms,
                    use_graph=case.use_graph)
        if not case.use_graph and t.graph_error is None:
            t.graph_error = "not attempted (" + (case.note or "eager by design") + ")"
        row.update(t.as_row())
        row["kv_bytes"] = int(case.kv_bytes)
        row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
        row["note"] = case.note
        row.update(case.info)
        _finish_row(row, K.step_bytes(p.impl, p.batch, p.context, s), bw)
        del case
    except K.Unavailable as exc:
        row["skip"] = f"unavailable: {exc}"
    except torch.cuda.OutOfMemoryError as exc:
        row["skip"] = f"out of memory: {_one_line(exc)}"
    except Exception as exc:  # one broken impl must not stop the sweep
        row["error"] = _one_line(exc)
        row["skip"] = f"failed: {row['error']}"
    _free()
    row["elapsed_s"] = round(time.monotonic() - t0, 2)
    return row


def _e2e_points(opts: SpeedOptions) -> list[tuple[int, int, list[str]]]:
    return pl.sweep_shapes(opts.e2e_contexts or opts.contexts, opts.e2e_batches or opts.batches,
                           opts.batch_context, opts.paper_points)


def run_e2e_level(opts: SpeedOptions, bw: float, rows: list[dict[str, Any]], log: Callable[[str], None],
                  deadline: float | None, budget_rows: list[dict[str, Any]]) -> None:
    """Per model: the paper's settings, then the memory-budget points, then the rest of the sweeps.

    With a time limit each architecture gets an equal share of what is left."""
    from oscar_eval.speed import e2e as E

    for n_left, arch in zip(range(len(opts.archs), 0, -1), opts.archs, strict=True):
        arch_deadline = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                log(f"end to end: {arch} skipped (time limit)")
                rows.append({**_base_row("e2e", arch, "*", 0, 0, pl.Shape(0, 0, 0)),
                             "skip": "time limit reached before this architecture"})
                continue
            arch_deadline = time.monotonic() + left / n_left
        t0 = time.monotonic()
        h = E.build_model(arch, opts.layers)
        log(f"end to end: {h.arch} ({h.source}), {h.shape.num_layers} layers, "
            f"{h.weight_bytes / 2**30:.2f} GiB weights, built in {time.monotonic() - t0:.1f} s")
        avail = _available_bytes() + h.weight_bytes  # the estimates count the (resident) weights
        planned = pl.order_points(
            pl.plan("e2e", h.arch, h.shape, opts.e2e_impls, _e2e_points(opts), avail), opts.e2e_impls)
        first = [p for p in planned if "paper" in p.tags]
        rest = [p for p in planned if "paper" not in p.tags]
        bar = _progress(len(planned), opts.progress, f"e2e {h.arch}")
        for p in first:
            rows.append(_e2e_row(h, p, opts, bw, arch_deadline, log))
            if bar is not None:
                bar.update(1)
        if opts.memory_budget_gb:
            budget_rows.extend(_budget(h, opts, bw, rows, arch_deadline, log))
        for p in rest:
            rows.append(_e2e_row(h, p, opts, bw, arch_deadline, log))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        del h
        _free()


def _e2e_row(h, p: pl.Point, opts: SpeedOptions, bw: float, deadline: float | None,
             log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from oscar_eval.speed import e2e as E
    from oscar_eval.speed.case import Unavailable

    t0 = time.monotonic()
    row = _base_row("e2e", h.arch, p.impl, p.batch, p.context, h.shape)
    row.update({"tags": p.tags, "num_layers": h.shape.num_layers, "weight_bytes": h.weight_bytes,
                "weight_read_bytes": h.weight_read_bytes, "est_mem_bytes": p.est_bytes, "model_source": h.source})
    if p.skip is None and deadline is not None and time.monotonic() > deadline:
        p.skip = "time limit reached before this point"
    if p.skip:
        row["skip"] = p.skip
    else:
        try:
            t, extra = E.run_point(h, p.impl, p.batch, p.context, min_reps=opts.min_reps,
                                   target_ms=opts.target_ms, cache_kernels=opts.cache_kernels)
            row.update(t.as_row())
            row.update(extra)
            _finish_row(row, E.step_bytes(h, p.impl, p.batch, p.context), bw)
        except Unavailable as exc:
            row["skip"] = f"unavailable: {exc}"
        except torch.cuda.OutOfMemoryError as exc:
            row["skip"] = f"out of memory: {_one_line(exc)}"
        except Exception as exc:
            row["error"] = _one_line(exc)
            row["skip"] = f"failed: {row['error']}"
        _free()
        row["elapsed_s"] = round(time.monotonic() - t0, 2)
    log(_fmt_row(row))
    return row


BUDGET_IMPLS = ("bf16-static-graph", "oscar-kernel-static", "kivi-kernel-static", "oscar-cache")


def _budget(h, opts: SpeedOptions, bw: float, rows: list[dict[str, Any]], deadline: float | None,
            log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Largest batch under the memory budget for each arm at ``budget_context``, and its throughput.

    Bytes per sequence: the larger of the byte model (cache + one step's activations) and the
    measured cache bytes per sequence (plus the same activations) at the largest batch already run at
    that context. (The measured peak is not used: it holds the profiler's fill transients.)
    """
    budget = int(opts.memory_budget_gb * 2**30)
    ctx = opts.budget_context
    out = []
    for impl in (i for i in BUDGET_IMPLS if i in opts.e2e_impls):
        method = rf.method_of(impl)
        per_seq = pl.e2e_per_sequence_bytes(method, ctx, h.shape)
        measured = [r for r in rows if r["level"] == "e2e" and r["arch"] == h.arch and r["impl"] == impl
                    and r["context"] == ctx and r.get("median_us") is not None]
        fixed = h.weight_bytes + (256 << 20)
        source = "byte model"
        if measured:
            m = max(measured, key=lambda r: r["batch"])
            act = pl.e2e_per_sequence_bytes(method, ctx, h.shape) - h.shape.num_layers * rf.kv_bytes(
                method, 1, ctx + 128, h.shape.num_kv_heads, h.shape.head_dim)
            per_seq_measured = m["kv_bytes"] / m["batch"] + act
            if per_seq_measured > per_seq:
                per_seq, source = per_seq_measured, f"measured at batch {m['batch']}"
        max_b = pl.max_batch_under_budget(budget, fixed, per_seq)
        info: dict[str, Any] = {"arch": h.arch, "impl": impl, "context": ctx, "budget_bytes": budget,
                                "per_sequence_bytes": int(per_seq), "per_sequence_source": source,
                                "fixed_bytes": int(fixed), "max_batch": max_b, "num_layers": h.shape.num_layers}
        if max_b > 0:
            p = pl.plan("e2e", h.arch, h.shape, [impl], [(max_b, ctx, ["memory-budget"])],
                        _available_bytes() + h.weight_bytes, budget)[0]
            row = _e2e_row(h, p, opts, bw, deadline, log)
            rows.append(row)
            info.update({"measured": row.get("median_us") is not None, "tokens_per_s": row.get("tokens_per_s"),
                         "median_us": row.get("median_us"), "peak_mem_bytes": row.get("peak_mem_bytes"),
                         "skip": row.get("skip")})
        out.append(info)
        log(f"  memory budget {budget / 2**30:.1f} GiB at T={ctx}: {impl} fits batch {max_b}"
            + (f", {info.get('tokens_per_s') or 0:.1f} tok/s" if info.get("measured") else ""))
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed-ups of the packed arms against every BF16 arm at each point, and the paper comparison."""
    timed = [r for r in rows if r.get("median_us")]
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in timed:
        groups.setdefault((r["level"], r["arch"], r["batch"], r["context"]), {})[r["impl"]] = r
    points = []
    for (level, arch, batch, context), by_impl in sorted(groups.items()):
        bf16 = {k: v for k, v in by_impl.items() if k.startswith("bf16")}
        packed = {k: v for k, v in by_impl.items() if not k.startswith("bf16")}
        if not bf16:
            continue
        fastest = min(bf16.values(), key=lambda r: r["median_us"])
        entry: dict[str, Any] = {
            "level": level, "arch": arch, "batch": batch, "context": context,
            "fastest_bf16": fastest["impl"], "fastest_bf16_us": fastest["median_us"],
            "packed": {},
        }
        for name, r in packed.items():
            entry["packed"][name] = {
                "median_us": r["median_us"],
                "speedup_vs_fastest_bf16": round(fastest["median_us"] / r["median_us"], 3),
                "speedup_vs": {k: round(v["median_us"] / r["median_us"], 3) for k, v in bf16.items()},
                "roofline_fraction": r["roofline_fraction"],
                "graph": r.get("graph"),
                "rel_err_vs_fp32": r.get("rel_err_vs_fp32"),
                "kv_bytes_ratio_bf16_over_packed": (
                    round(fastest["kv_bytes"] / r["kv_bytes"], 3) if r.get("kv_bytes") and fastest.get("kv_bytes")
                    else None),
            }
        points.append(entry)
    return {"points": points, "paper": PAPER, "paper_settings": _paper_view(points)}


def _paper_view(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Our numbers at the paper's two settings, next to the paper's."""
    view: dict[str, Any] = {}
    for key, (b, c) in (("latency_128k_b1", (1, 131072)), ("throughput_4k_b48", (48, 4096))):
        for e in points:
            if (e["batch"], e["context"]) != (b, c):
                continue
            for name, p in e["packed"].items():
                view.setdefault(key, []).append({
                    "level": e["level"], "arch": e["arch"], "packed": name, "packed_us": p["median_us"],
                    "fastest_bf16": e["fastest_bf16"], "fastest_bf16_us": e["fastest_bf16_us"],
                    "speedup_vs_fastest_bf16": p["speedup_vs_fastest_bf16"], "speedup_vs": p["speedup_vs"],
                    "kv_bytes_ratio": p["kv_bytes_ratio_bf16_over_packed"],
                })
    return view


def run_speed(opts: SpeedOptions | None = None, log: Callable[[str], None] | None = None, **kwargs: Any
              ) -> dict[str, Any]:
    """Measure, print and write one speed run; returns the document written."""
    opts = opts or SpeedOptions(**kwargs)
    log = log or (lambda m: print(m, flush=True))
    require_cuda()
    import torch

    from oscar_eval.provenance import environment
    from oscar_eval.speed.packed_kernel import kernels_status
    from oscar_eval.speed.timing import copy_bandwidth_gbps

    name = rs.check_name(opts.name or default_name(opts))
    started = time.monotonic()
    deadline = started + opts.time_limit_s if opts.time_limit_s else None
    env = environment()  # clocks read at start, before any load
    torch.backends.cuda.matmul.allow_tf32 = False
    bw_info = copy_bandwidth_gbps(opts.copy_bytes)
    bw = bw_info["gbps"]
    log(f"oscar-eval speed: {env.get('gpu')} (driver {env.get('driver')}, clocks {env.get('clocks')}); "
        f"device-to-device copy {bw:.0f} GB/s (read + write) = the roofline bandwidth")
    rows: list[dict[str, Any]] = []
    budget_rows: list[dict[str, Any]] = []
    failures: list[str] = []

    def document(partial: bool) -> dict[str, Any]:
        return rs.make_document(
            name, env, round(bw, 1), [_finite(r) for r in rows],
            partial=partial,
            bandwidth={"method": "device-to-device copy, bytes read + written", **bw_info},
            settings=_settings(opts),
            kernels=kstatus,
            memory_budget=budget_rows,
            summary=_finite(summarize(rows)),
            notes=list(opts.notes),
            failures=failures,
            elapsed_s=round(time.monotonic() - started, 1),
        )

    def stage(what: str, fn: Callable[[], None]) -> None:
        """Run one stage; a crash is recorded, and what was measured is written at once."""
        try:
            fn()
        except Exception:
            import traceback

            failures.append(f"{what}: {traceback.format_exc(limit=6)}")
            log(f"oscar-eval speed: {what} stopped: {traceback.format_exc(limit=6)}")
        rs.write_speed(results_root(opts.results_dir), document(partial=True))

    kstatus: dict[str, Any] = {"note": "not read yet"}
    # Build the packed-cache extension (JIT, on the CPUs) while the BF16 baselines are measured.
    builder = threading.Thread(target=kernels_status, name="oscar-kernels-build", daemon=True)
    builder.start()
    if "kernel" in opts.levels:
        kdeadline = deadline
        if deadline is not None and "e2e" in opts.levels:
            kdeadline = started + opts.time_limit_s * opts.kernel_time_share
        stage("kernel level", lambda: run_kernel_level(opts, bw, rows, log, kdeadline))
    if "e2e" in opts.levels:
        stage("end to end", lambda: run_e2e_level(opts, bw, rows, log, deadline, budget_rows))
    builder.join(timeout=1.0)
    kstatus = kernels_status()
    opts.notes.extend(_auto_notes(opts, rows))
    doc = document(partial=False)
    path = rs.write_speed(results_root(opts.results_dir), doc)
    log(render_summary(doc["summary"]))
    log(f"wrote {path}")
    return doc


def _auto_notes(opts: SpeedOptions, rows: list[dict[str, Any]]) -> list[str]:
    from oscar_eval import archs as A

    notes = []
    if "e2e" in opts.levels and opts.layers:
        full = {a: A.shapes(a)["num_layers"] for a in opts.archs if a in A.ARCHS}
        notes.append(f"end to end: models cut to {opts.layers} decoder layers (full depth: {full}) to fit the "
                     "device-time budget; weights (embeddings, LM head) are full size")
    shared = {tuple(r.get("same_shapes_as") or ()) for r in rows if r.get("level") == "kernel"}
    for names in shared:
        if names:
            notes.append(f"kernel level: {', '.join(names)} share the attention shapes of the measured arch; "
                         "one measurement serves both")
    notes.append("kernel level bf16-dynamic-*: the paper's baseline style (torch.cat append every step, eager); "
                 "bf16-dynamic-flash forces PyTorch's flash backend (FlashDecoding-class, as the paper's "
                 "flash_attn_with_kvcache); the cuDNN backend re-plans at every new length (~40 ms per call)")
    notes.append("roofline = bytes that must move (packed or BF16 KV + query + output; end to end also every "
                 "weight once) / measured device-to-device copy bandwidth; the reference ('-ref', "
                 "'oscar-cache') rows are held to the packed bytes, so their fraction shows the gap")
    return notes


def _finite(value: Any) -> Any:
    """NaN/inf (a broken kernel's output, say) become null: the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _settings(opts: SpeedOptions) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(opts)
    d.pop("notes", None)
    return d


PAPER_STYLE = {"kernel": "bf16-dynamic-flash", "e2e": "bf16-dynamic-eager"}


def render_summary(summary: dict[str, Any]) -> str:
    lines = ["", "packed arms vs BF16 (x = BF16 time / packed time; roof = fraction of the copy-bandwidth roofline):"]
    for e in summary["points"]:
        for name, p in e["packed"].items():
            style = PAPER_STYLE.get(e["level"])
            vs_style = p["speedup_vs"].get(style)
            lines.append(
                f"  {e['level']:<6} {e['arch']:<12} b={e['batch']:<4} T={e['context']:<7} {name:<19} "
                f"{p['median_us']:10.1f} us  roof {100 * (p['roofline_fraction'] or 0):5.1f}%  "
                f"x{p['speedup_vs_fastest_bf16']:.2f} vs {e['fastest_bf16']} ({e['fastest_bf16_us']:.1f} us)"
                + (f"  x{vs_style:.2f} vs paper-style {style}" if vs_style else "")
                + f"  KV bytes /{p['kv_bytes_ratio_bf16_over_packed'] or 0:.2f}"
            )
    lines.append(f"paper (Qwen3-8B, H20, vs FlashDecoding-v2 + torch.cat cache): {PAPER}")
    return "\n".join(lines)
