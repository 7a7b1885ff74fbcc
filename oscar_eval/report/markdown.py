"""The Markdown report: GitHub-flavoured tables, every piece of text from the store escaped."""

from __future__ import annotations

import html
import re

from oscar_eval.report import fmt
from oscar_eval.report.model import Figure, Report, Section, Table, TextTable

# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that can start
# emphasis, links, code, HTML or (in a table) end a cell.
_SPECIAL = re.compile(r"([\\`*_\[\]|#!~])")


def escape(s: object) -> str:
    """Text that renders literally inside a Markdown table cell or paragraph."""
    s = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", re.sub(r"\s+", " ", s)).strip()


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ours(cell, decimals: int, with_ref: bool = True) -> str:
    out = fmt.value(cell.ours, decimals)
    if with_ref and cell.ours is not None and cell.ref:
        out += f" ({escape(cell.ref)})"
    out += " †" if cell.flag else ""
    return out + "".join(f" \\[{escape(label)}\\]" for label in cell.labels)


def table(t: Table) -> list[str]:
    head = [escape(t.row_header)]
    if t.show_bits:
        head += ["paper bits", "bits/elt (ours)"] if t.compare else ["bits/elt"]
    if t.groups:  # "OScaR (R6) 0-4k", "OScaR 4-8k", ...: the run's reference once per group
        names = [f"{g} ({ref}) " if i == 0 and ref else f"{g} " for g, n, ref in t.groups for i in range(n)]
        head += [escape(f"{name}{c}".strip()) for name, c in zip(names, t.columns, strict=True)]
    else:
        for c in t.columns:
            head += [f"{escape(c)} ours", "paper", "Δ"] if t.compare else [escape(c)]
    lines = [f"**{escape(t.title)}**", "", _row(head), _row(["---"] + ["--:"] * (len(head) - 1))]
    for r in t.rows:
        cells = [escape(r.label)]
        if t.show_bits:
            cells += ([escape(r.bits_paper or fmt.MISSING)] if t.compare else []) + [escape(r.bits_ours or fmt.MISSING)]
        for i, c in enumerate(r.cells):
            dec = t.decimals_at(i)
            cells.append(_ours(c, dec, with_ref=not t.groups))
            if t.compare:
                cells += [fmt.value(c.paper, dec), fmt.diff(c.diff, dec)]
        lines.append(_row(cells))
    notes = list(t.notes)
    notes += [f"† {n}" for n in t.flag_notes]
    return lines + ["", f"[CSV]({t.csv_name})", ""] + [f"*{escape(n)}*" for n in notes] + ([""] if notes else [])


def text_table(t: TextTable) -> list[str]:
    lines = [f"**{escape(t.title)}**", "", _row([escape(h) for h in t.headers]), _row(["---"] * len(t.headers))]
    lines += [_row([escape(c) for c in row]) for row in t.rows]
    lines += ["", f"[CSV]({t.csv_name})", ""] + [f"*{escape(n)}*" for n in t.notes] + ([""] if t.notes else [])
    if t.folded:  # GitHub renders a Markdown table inside <details> when blank lines surround it
        return [f"<details><summary>{html.escape(t.title)}</summary>", ""] + lines + ["</details>", ""]
    return lines


def figure(f: Figure) -> list[str]:
    if f.png is None:
        return [f"*{escape(f.title)}: {escape(f.note)}*", ""]
    return [f"![{escape(f.title)}]({f.filename}) ([SVG]({f.svg_name}))", ""]


def section(s: Section, level: int = 2) -> list[str]:
    lines = [f"{'#' * level} {escape(s.title)}", ""]
    for p in s.intro:
        lines += [escape(p), ""]
    for b in s.blocks:
        lines += table(b) if isinstance(b, Table) else text_table(b) if isinstance(b, TextTable) else figure(b)
    for sub in s.subsections:
        lines += section(sub, level + 1)
    return lines


def render(report: Report) -> str:
    lines = [f"# {escape(report.title)}", "",
             f"Generated {escape(report.generated)} from the results store {escape(report.source)} "
             "by `oscar-eval report`. Paper: OScaR (Su et al., arXiv 2605.19660).", ""]
    for s in report.sections:
        lines += section(s)
    if report.problems:
        lines += ["## Problems found while reading the store", ""]
        lines += [f"- {escape(p)}" for p in report.problems] + [""]
    return "\n".join(lines)
