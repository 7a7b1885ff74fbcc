"""Every report table as CSV (``table-<id>.csv`` next to index.html): our numbers unrounded, the
paper's and the difference beside them, text cells guarded against spreadsheet formulas."""

from __future__ import annotations

import csv
import io

from oscar_eval.report.model import Section, Table, TextTable

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: object) -> str:
    """A cell from the store: a leading ``=``/``+``/``-``/``@`` would run as a formula in a spreadsheet."""
    s = str(value)
    if s.startswith(_FORMULA_START):
        try:
            float(s)  # a plain number such as "-0.55" stays a number
        except ValueError:
            return "'" + s
    return s


def _num(v: float | None) -> str:
    return "" if v is None else repr(round(v, 6))


def table_rows(t: Table | TextTable) -> list[list[str]]:
    if isinstance(t, TextTable):
        return [list(t.headers)] + [[_text(c) for c in row] for row in t.rows]
    names = [f"{g} {c}" for g, n, _ in t.groups for c in t.columns[:n]] if t.groups else list(t.columns)
    head = [t.row_header or "row"] + (["paper bits", "bits/elt (ours)"] if t.show_bits else [])
    for name in names:
        head += [f"{name} ours", f"{name} paper", f"{name} diff", f"{name} source"] if t.compare else [
            name, f"{name} source"]
    out = [head]
    for r in t.rows:
        row = [_text(r.label)] + ([_text(r.bits_paper or ""), _text(r.bits_ours or "")] if t.show_bits else [])
        for c in r.cells:
            row += [_num(c.ours), _num(c.paper), _num(c.diff)] if t.compare else [_num(c.ours)]
            row.append(_text(c.ref or ""))
        out.append(row)
    return out


def tables(sections: list[Section]) -> list[Table | TextTable]:
    out = []
    for s in sections:
        out += [b for b in s.blocks if isinstance(b, Table | TextTable)]
        out += tables(s.subsections)
    return out


def render(t: Table | TextTable) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table_rows(t))
    return buf.getvalue()
