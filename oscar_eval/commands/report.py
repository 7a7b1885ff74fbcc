"""`oscar-eval report`: render the results store as HTML and Markdown next to the paper's tables."""

from __future__ import annotations

import argparse
import sys

from oscar_eval.errors import UserError
from oscar_eval.paths import REPORT_DEFAULT, RESULTS_DEFAULT, report_dir, results_root


def register(subparsers: argparse._SubParsersAction) -> None:
    # No import of oscar_eval.report here: it loads matplotlib, and every command builds this parser.
    p = subparsers.add_parser(
        "report",
        help="render HTML + Markdown reports (paper tables side by side, plots, provenance)",
        description="Render index.html (self-contained) and report.md (+ fig-*.png) from a results store.",
    )
    p.add_argument("--results", default=str(results_root()), metavar="DIR",
                   help=f"results store (default: {RESULTS_DEFAULT}; the committed one: --results results)")
    p.add_argument("--out", default=str(report_dir()), metavar="DIR",
                   help=f"output folder (default: {REPORT_DEFAULT}; the committed report: --out reports/latest)")
    p.add_argument("--title", default=None, help="report title (default: a generic one)")
    p.add_argument("--include-smoke", action="store_true",
                   help="also show runs of the built-in smoke configuration (tiny random model)")
    p.add_argument("--alias", action="append", default=[], metavar="LABEL=COLUMN",
                   help="match a model label to a paper column by hand, e.g. my-llama=Llama-3.1-8B (repeatable)")
    p.set_defaults(func=run)


def _aliases(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        label, sep, column = item.partition("=")
        if not sep or not label.strip() or not column.strip():
            raise UserError(f"--alias expects LABEL=COLUMN, got {item!r}")
        out[label.strip()] = column.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from oscar_eval.report import DEFAULT_TITLE, ReportError, render_report

    try:
        done = render_report(args.results, args.out, title=args.title or DEFAULT_TITLE, aliases=_aliases(args.alias),
                             include_smoke=args.include_smoke)
    except ReportError as exc:
        raise UserError(str(exc)) from exc
    for problem in done.problems:
        print(f"oscar-eval report: warning: {problem}", file=sys.stderr)
    print(f"wrote {done.html} and {done.markdown} ({len(done.figures)} figures)")
    return 0
