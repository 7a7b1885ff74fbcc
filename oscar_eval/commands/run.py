"""`oscar-eval run <benchmark>`: accuracy runs into the results store (a thin layer over the API)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from oscar_eval.benchmarks.options import Option
from oscar_eval.errors import UserError
from oscar_eval.paths import RESULTS_DEFAULT, results_root

# Each benchmark's own options become flags (oscar_eval.benchmarks.options); parsed under this prefix so
# that a benchmark's option name never shadows a flag of `run` itself.
_DEST = "benchmark_option:"


def declared_flags() -> dict[str, list[tuple[str, Option]]]:
    """Every benchmark's own options by flag, each with the benchmarks that declare it (registry order)."""
    from oscar_eval.benchmarks import BENCHMARKS, options_of

    flags: dict[str, list[tuple[str, Option]]] = {}
    for key, (_, _, _, status) in BENCHMARKS.items():
        if status == "available":
            for opt in options_of(key):
                flags.setdefault(opt.flag, []).append((key, opt))
    return flags


def _flag_help(declared: list[tuple[str, Option]]) -> str:
    """``niah, ruler: <help> (default: ...)``; benchmarks that say it differently each get their own part."""
    by_text: dict[str, list[str]] = {}
    for key, opt in declared:
        by_text.setdefault(opt.text(), []).append(key)
    return "; ".join(f"{', '.join(keys)}: {text}" for text, keys in by_text.items()).replace("%", "%%")


def add_benchmark_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("benchmark options", "each only for the benchmarks it names (`oscar-eval list "
                                                      "benchmarks`); given to another benchmark, an error")
    for flag, declared in declared_flags().items():
        (first_key, first), *others = declared
        if clash := [k for k, o in others if o.parsing() != first.parsing()]:
            raise ValueError(f"benchmark option {flag}: {first_key} and {', '.join(clash)} declare it with a "
                             "different type, metavar or nargs; one flag parses one way")
        # SUPPRESS: a flag not given is absent, so that the benchmark's own default (or its smoke
        # configuration's) applies, and a flag given to the wrong benchmark can be told apart.
        group.add_argument(flag, dest=_DEST + first.name, type=first.type, metavar=first.metavar,
                           nargs=first.nargs, default=argparse.SUPPRESS, help=_flag_help(declared))


def given_benchmark_options(args: argparse.Namespace, benchmark: str) -> dict:
    """The benchmark flags given, by option name; one that ``benchmark`` does not declare is a UserError
    naming the flag, the benchmark and the benchmarks that take it."""
    from oscar_eval.benchmarks import benchmark_key, options_of

    key = benchmark_key(benchmark)
    given, stray = {}, []
    for flag, declared in declared_flags().items():
        dest = _DEST + declared[0][1].name
        if hasattr(args, dest):  # given (a flag not given is absent: SUPPRESS)
            given[declared[0][1].name] = getattr(args, dest)
            if key not in (takers := [k for k, _ in declared]):
                stray.append(f"{flag}: only for " + " or ".join(f"the {k} benchmark" for k in takers))
    if stray:
        own = [o.flag for o in options_of(key)]
        takes = f"{key} takes {', '.join(own)}" if own else f"{key} has no options of its own"
        raise UserError(f"{'; '.join(stray)}, not {key} ({takes})")
    return given


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="evaluate a benchmark for one model and one or more KV-cache methods",
        description="Evaluate a benchmark (paper protocol) for a model and KV-cache methods. Without "
                    "--model and --data-dir, runs the built-in smoke configuration.")
    p.add_argument("benchmark", help="benchmark name (longbench, i.e. LongBench-E)")
    p.add_argument("--model", help="model folder, .gguf file, offline checkpoint name (`oscar-eval list models`) "
                                   "or a repo id already in the local Hugging Face cache")
    p.add_argument("--method", action="append", dest="methods", metavar="NAME",
                   help="KV-cache method (repeatable; default: oscar). See `oscar-eval list methods`")
    p.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE", default=[],
                   help="method parameter override, for all methods (bits=3) or one (oscar.bits=3)")
    p.add_argument("--subsets", nargs="+", metavar="SUBSET", help="subsets to run (default: all)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N items per subset")
    p.add_argument("--data-dir", help="folder with the benchmark files (LongBench: <subset>.jsonl or parquet)")
    p.add_argument("--max-input-len", type=int, metavar="N",
                   help="prompt tokens kept (middle truncation); default 32768")
    p.add_argument("--results", default=str(results_root()),
                   help=f"results store folder (default: {RESULTS_DEFAULT}; the checkout's own: --results results)")
    p.add_argument("--resume", action="store_true",
                   help="continue the same run: skip items recorded ok, run the rest (failed ones again)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again only the items whose latest record failed (implies --resume)")
    p.add_argument("--overwrite", action="store_true", help="discard existing records of the same run")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N (default: auto; under torchrun/srun each rank takes "
                        "cuda:<local rank>)")
    p.add_argument("--device-map", metavar="MAP",
                   help="spread a model too large for one GPU over the visible GPUs: auto, balanced, "
                        "balanced_low_0 or sequential (transformers' device_map)")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32 (default: auto)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="generate N items at once (text, vision and audio benchmarks; left padding, items "
                        "grouped by prompt length; greedy tokens as at batch 1; default: 1)")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap prompts in the tokenizer's chat template (Qwen3: thinking off)")
    p.add_argument("--model-label", help="short model name used in run ids and reports")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--output", choices=["text", "json"], default="text",
                   help="text: tables (several methods: one side-by-side table, with the difference to fp16 "
                        "when it is among them); json: that comparison and every method's summary as one "
                        "JSON object on stdout, nothing else there (default: text). Each run folder also "
                        "has its summary.json")
    add_benchmark_flags(p)
    p.set_defaults(func=main)


def _sigterm_to_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    from oscar_eval.api import parse_overrides, run_benchmark

    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)  # records are fsync'ed; stop cleanly
    bench_options = given_benchmark_options(args, args.benchmark)  # an unknown benchmark is named first
    from oscar_eval.commands import calibration_dir_of

    as_json = args.output == "json"
    # --output json: stdout carries the JSON alone, so anything else printed during the run goes to stderr.
    with calibration_dir_of(args.results), contextlib.redirect_stdout(sys.stderr if as_json else sys.stdout):
        summaries = run_benchmark(
            args.benchmark, model=args.model, methods=args.methods or ["oscar"], subsets=args.subsets,
            limit=args.limit, data_dir=args.data_dir, max_input_len=args.max_input_len, results=args.results,
            resume=args.resume, overwrite=args.overwrite, retry_failed=args.retry_failed,
            device=args.device, dtype=args.dtype, device_map=args.device_map, batch_size=args.batch_size,
            chat_template=args.chat_template, model_label=args.model_label,
            overrides=parse_overrides(args.overrides), seed=args.seed, progress=not args.no_progress,
            benchmark_options=bench_options, on_result=print_result_line)
    if as_json:
        print_json(summaries)
    elif len(summaries) > 1:
        print_comparison(summaries)
    else:
        print_summaries(summaries)
    failed = sum(int(s.get("n_failed") or 0) for s in summaries)
    if failed:  # the numbers are real but incomplete: a script must notice
        print(f"oscar-eval: {failed} item(s) failed (see records.jsonl; --retry-failed runs them again)",
              file=sys.stderr)
        return 1
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_result_line(summary: dict) -> None:
    """As each method finishes (stderr, so that stdout keeps the final table or the JSON)."""
    from oscar_eval.comparison import headline, summary_file

    bpe = summary.get("bits_per_element")
    print(f"{summary.get('method')}: {headline(summary)}" + (f" ({bpe:.2f} bits/elem)" if bpe else "")
          + f"; {summary.get('n_items')} items, {summary.get('n_failed', 0)} failed -> "
          + (summary_file(summary) or str(summary.get("run_dir"))), file=sys.stderr, flush=True)


def print_json(summaries: list[dict]) -> None:
    """``--output json``: the side-by-side comparison and every method's full summary (docs/results.md)."""
    import json

    from oscar_eval.comparison import compare

    json.dump({**compare(summaries), "summaries": summaries}, sys.stdout, indent=1)
    sys.stdout.write("\n")


def print_comparison(summaries: list[dict]) -> None:
    """Several methods: ONE table, the benchmark's summary rows x the methods, then each method's
    difference to fp16 (where fp16 ran) in the columns on the right."""
    from rich.console import Console
    from rich.table import Table

    from oscar_eval.comparison import compare

    c = compare(summaries)
    methods, ref = c["methods"], c["reference"]
    others = [m for m in methods if m != ref] if ref else []
    spec = ".4g" if c["benchmark"] == "ppl" else ".2f"

    def f(v) -> str:
        return "-" if v is None else format(v, spec)

    def signed(v) -> str:
        return "-" if v is None else format(v, "+" + spec)

    console = Console(file=sys.stdout, soft_wrap=True)
    table = Table(title=f"{c['benchmark']} | {c['model_label']} | {', '.join(methods)}"
                        + (" | SMOKE" if c.get("configuration") == "smoke" else ""))
    table.add_column(c["row_header"])
    for m in methods:
        table.add_column(m, justify="right")
    for m in others:
        table.add_column(f"{m} - {ref}", justify="right", style="italic")
    bpe = c["bits_per_element"]
    table.add_row("bits/elem", *(_fmt(bpe[m]) for m in methods), *("" for _ in others))
    for row in c["rows"]:
        delta = row.get("delta_vs_fp16") or {}
        table.add_row(row["row"], *(f(row["values"][m]) for m in methods), *(signed(delta.get(m)) for m in others),
                      style="bold" if row["row"] == "Average" else None)
    runs = {r["method"]: r for r in c["runs"]}
    table.add_row("items (failed)", *(f"{runs[m]['n_items'] or 0} ({runs[m]['n_failed'] or 0})" for m in methods),
                  *("" for _ in others))
    console.print(table)
    if c["benchmark"] == "ppl":
        console.print("PPL = exp(token-weighted mean NLL, nats); KL(fp16 || method) and top-1 agreement against "
                      "a plain full-precision forward; 'KL cached' leaves out the first token")
    for m in methods:
        console.print(f"{m}: {runs[m]['summary'] or runs[m]['run_dir']}")


def print_summaries(summaries: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, soft_wrap=True)
    ppl = [s for s in summaries if s.get("benchmark") == "ppl"]
    if ppl:  # one table, a row per method
        _print_ppl(console, ppl)
    for s in summaries:
        if s.get("benchmark") == "ppl":
            continue
        bpe = s.get("bits_per_element")
        title = (f"{s['benchmark']} | {s['model_label']} | {s['method']}"
                 + (f" ({bpe:.2f} bits/elem)" if bpe else "")
                 + (" | SMOKE" if s.get("configuration") == "smoke" else ""))
        if isinstance(s.get("grid"), dict):  # niah: depth x context grid of retrieval accuracy
            _print_grid(console, title, s)
            continue
        if isinstance(s.get("columns"), dict) and not s.get("subsets"):  # e.g. MMAU-Pro's Table 8 columns
            _print_columns(console, title, s)
            continue
        table = Table(title=title)
        for col in ("subset", "0-4k", "4-8k", "8k+", "mean", "n"):
            table.add_column(col, justify="left" if col == "subset" else "right")
        for name, e in s.get("subsets", {}).items():
            table.add_row(name, _fmt(e.get("0-4k")), _fmt(e.get("4-8k")), _fmt(e.get("8k+")),
                          _fmt(e.get("mean")), str(e.get("n", "")))
        table.add_row("Average", "", "", "", _fmt(s.get("average")), str(s.get("n_items")), style="bold")
        console.print(table)
        failed = s.get("n_failed", 0)
        console.print(f"{s['n_items']} items, {failed} failed -> {s['run_dir']}")


def _print_grid(console, title: str, s: dict) -> None:
    from rich.table import Table

    grid = s["grid"]
    contexts = list(grid)
    if not contexts:
        console.print(f"{title}: no scored items; {s['n_items']} items, {s.get('n_failed', 0)} failed")
        return
    # Rows: niah's depths (numeric), or the summary's own row order and label (ruler: tasks).
    depths = s.get("grid_rows") or sorted({d for row in grid.values() for d in row}, key=float)
    label = s.get("grid_row_label", "depth %")
    by_context, by_depth = s.get("contexts") or {}, s.get("depths") or s.get("tasks") or {}
    # Margins: the last row averages each context's column, the last column each depth's row; their
    # corner is the overall average (of all cells), also spelled out below the table.
    table = Table(title=title)
    table.add_column(label)
    for c in contexts:
        table.add_column(str(c), justify="right")
    table.add_column("all contexts", justify="right", style="bold")
    for d in depths:
        table.add_row(str(d), *(_fmt(grid[c].get(d)) for c in contexts), _fmt(by_depth.get(d)))
    table.add_row("Average", *(_fmt(by_context.get(c)) for c in contexts), _fmt(s.get("average")), style="bold")
    console.print(table)
    console.print(f"overall average {_fmt(s.get('average'))} (all context x {label.split()[0]} cells); "
                  f"{s['n_items']} items, {s.get('n_failed', 0)} failed -> {s['run_dir']}")


def _print_columns(console, title: str, s: dict) -> None:
    from rich.table import Table

    table = Table(title=title)
    for name in s["columns"]:
        table.add_column(name, justify="right")
    table.add_row(*(_fmt(v) for v in s["columns"].values()))
    console.print(table)
    judge = s.get("judge") or {}
    if judge.get("error"):
        console.print(f"judge: {judge['error']}")
    console.print(f"{s['n_items']} items, {s.get('n_failed', 0)} failed -> {s['run_dir']}")


def _print_ppl(console, summaries: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=console.file, soft_wrap=True, width=max(console.width, 124))  # 11 columns

    def f(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    first = summaries[0]
    m = first.get("measurement") or {}
    table = Table(title=f"ppl | {first['model_label']} | prompt {m.get('prompt_tokens')} + scored "
                        f"{m.get('scored_tokens')} tokens" + (" | SMOKE" if first.get("configuration") == "smoke" else ""))
    for col in ("method", "bits/elem", "docs", "tokens", "NLL", "PPL", "fp16 PPL", "KL", "top-1 %",
                "KL cached", "failed"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for s in summaries:
        top1 = s.get("top1")
        table.add_row(s["method"], f(s.get("bits_per_element"), ".2f"), str(s.get("n_documents", 0)),
                      str(s.get("n_tokens", 0)), f(s.get("nll"), ".4f"), f(s.get("ppl"), ".3f"),
                      f(s.get("ref_ppl"), ".3f"), f(s.get("kl"), ".5f"), f(None if top1 is None else 100 * top1, ".2f"),
                      f((s.get("cached") or {}).get("kl"), ".5f"), str(s.get("n_failed", 0)))
    console.print(table)
    console.print("NLL in nats per token; PPL = exp(token-weighted mean NLL); KL(fp16 || method) and top-1 "
                  "agreement against a plain full-precision forward; 'KL cached' leaves out the first "
                  "token (predicted by the full-precision prompt)")
    for s in summaries:
        console.print(f"{s['method']}: {s['n_items']} items, {s.get('n_failed', 0)} failed -> {s['run_dir']}")
