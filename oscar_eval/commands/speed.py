"""`oscar-eval speed`: decode latency, throughput and KV memory against BF16 baselines (PERFORMANCE.md)."""

from __future__ import annotations

import argparse

from oscar_eval.errors import UserError
from oscar_eval.paths import RESULTS_DEFAULT, results_root
from oscar_eval.speed import plan as pl

LEVELS = ("kernel", "e2e")


def _ints(text: str) -> tuple[int, ...]:
    from oscar_eval.token_counts import parse_token_count  # the one meaning of k (1024) in every command

    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lstrip("+-").isdigit() and int(part) <= 0:
            raise UserError(f"values must be positive, got {int(part)} in {text!r}")
        try:
            out.append(parse_token_count(part))
        except UserError:
            raise UserError(f"not a list of integers: {text!r} (e.g. 1k,4k,32k or 1,8,48; 1k = 1024)") from None
    if not out:
        raise UserError(f"empty list: {text!r}")
    return tuple(out)


def _names(text: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(f"unknown {what} {', '.join(bad)}; known: {', '.join(known)}")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "speed",
        help="decode latency / throughput / KV memory vs BF16 baselines (needs a CUDA GPU)",
        description=(
            "Measure decode attention (kernel level) and full-model decode steps (end to end) for packed "
            "2-bit caches against BF16 baselines; every number is printed with its achieved bandwidth and "
            "fraction of the measured copy-bandwidth roofline, and written to <results>/speed/<name>.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", default="qwen3-8b",
                   help="comma-separated named architectures (oscar_eval.archs) or local model paths")
    p.add_argument("--level", default="kernel,e2e", help="kernel, e2e or both")
    p.add_argument("--layers", type=int, default=None, help="cut the model to N decoder layers (end to end)")
    p.add_argument("--contexts", default=",".join(str(c) for c in pl.CONTEXT_SWEEP),
                   help="context sweep at batch 1 (e.g. 1k,4k,128k)")
    p.add_argument("--batches", default=",".join(str(b) for b in pl.BATCH_SWEEP),
                   help="batch sweep at --batch-context")
    p.add_argument("--batch-context", default="4096", help="context of the batch sweep")
    p.add_argument("--e2e-contexts", default=None, help="end-to-end context sweep (default: --contexts)")
    p.add_argument("--e2e-batches", default=None, help="end-to-end batch sweep (default: --batches)")
    p.add_argument("--no-paper-points", action="store_true", help="do not add the paper's (1, 128K) and (48, 4K)")
    p.add_argument("--kernel-impls", default=",".join(pl.KERNEL_IMPLS))
    p.add_argument("--e2e-impls", default=",".join(pl.E2E_IMPLS))
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="also find the largest batch under this memory budget and measure its throughput")
    p.add_argument("--budget-context", default="4096", help="context for --memory-budget-gb")
    p.add_argument("--cache-kernels", default=None, choices=["auto", "on", "off", "fallback"],
                   help="make_cache(kernels=...) for the oscar-cache arm (default: make_cache's own default)")
    p.add_argument("--results", default=str(results_root()), help=f"results store folder (default: {RESULTS_DEFAULT})")
    p.add_argument("--name", default=None, help="results name: <results>/speed/<name>.json")
    p.add_argument("--target-ms", type=float, default=100.0, help="timed milliseconds per point (>= 20 reps)")
    p.add_argument("--min-reps", type=int, default=20)
    p.add_argument("--time-limit", type=float, default=None, help="seconds; later points are recorded as skipped")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-check", action="store_true", help="skip the accuracy check of each baseline")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    import os

    from oscar_eval import archs as A
    from oscar_eval.speed import SpeedOptions

    levels = _names(args.level, LEVELS, "level")
    arch_list = []
    for a in (x.strip() for x in args.arch.split(",") if x.strip()):
        if os.path.isdir(a):
            if "kernel" in levels:
                raise UserError(f"--arch {a}: a model path works only with --level e2e (kernel level needs a named arch)")
            arch_list.append(a)
            continue
        try:
            arch_list.append(A.canonical(a))
        except KeyError as exc:
            raise UserError(str(exc)) from None
    if args.layers is not None and args.layers <= 0:
        raise UserError(f"--layers must be positive, got {args.layers}")
    if args.min_reps < 20:
        raise UserError(f"--min-reps must be at least 20 (PERFORMANCE.md), got {args.min_reps}")
    if args.memory_budget_gb is not None and args.memory_budget_gb <= 0:
        raise UserError(f"--memory-budget-gb must be positive, got {args.memory_budget_gb}")
    if args.name is not None:
        from oscar_eval.speed.results import SpeedResultError, check_name

        try:
            check_name(args.name)
        except SpeedResultError as exc:
            raise UserError(str(exc)) from None
    return SpeedOptions(
        levels=levels,
        archs=tuple(arch_list),
        contexts=_ints(args.contexts),
        batches=_ints(args.batches),
        batch_context=_ints(args.batch_context)[0],
        paper_points=not args.no_paper_points,
        kernel_impls=_names(args.kernel_impls, pl.KERNEL_IMPLS, "kernel impl"),
        e2e_impls=_names(args.e2e_impls, pl.E2E_IMPLS, "e2e impl"),
        e2e_contexts=_ints(args.e2e_contexts) if args.e2e_contexts else None,
        e2e_batches=_ints(args.e2e_batches) if args.e2e_batches else None,
        layers=args.layers,
        memory_budget_gb=args.memory_budget_gb,
        budget_context=_ints(args.budget_context)[0],
        results_dir=args.results,
        name=args.name,
        target_ms=args.target_ms,
        min_reps=args.min_reps,
        time_limit_s=args.time_limit,
        progress=not args.no_progress,
        check=not args.no_check,
        cache_kernels=args.cache_kernels,
    )


def run(args: argparse.Namespace) -> int:
    from oscar_eval.speed import NoCudaError, run_speed

    opts = options_from_args(args)
    try:
        run_speed(opts)
    except NoCudaError as exc:
        raise UserError(str(exc)) from None
    return 0
