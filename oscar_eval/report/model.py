"""The renderer-neutral report model: tables of cells, figures, sections.

Both the HTML template and the Markdown writer render exactly this, so the two always agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Cell:
    ours: float | None = None
    paper: float | None = None
    ref: str | None = None  # provenance reference ("R3", "S1") of the run the number comes from
    flag: str | None = None  # e.g. "2 failed items": the number is real but comes with a caveat
    labels: list[str] = field(default_factory=list)  # e.g. "random weights": shown beside the number

    @property
    def diff(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper


@dataclass
class Row:
    key: str
    label: str
    cells: list[Cell]
    bits_paper: str | None = None
    bits_ours: str | None = None


@dataclass
class Table:
    id: str
    title: str
    columns: list[str]
    rows: list[Row]
    decimals: int = 2
    compare: bool = True  # show the paper's value and the difference under each column
    show_bits: bool = True
    row_header: str = "Method"
    notes: list[str] = field(default_factory=list)
    # Optional header row above ``columns``: (label, number of columns it spans, provenance ref).
    groups: list[tuple[str, int, str | None]] = field(default_factory=list)
    col_decimals: list[int] = field(default_factory=list)  # per column, where columns mix units

    def decimals_at(self, i: int) -> int:
        return self.col_decimals[i] if i < len(self.col_decimals) else self.decimals

    @property
    def csv_name(self) -> str:
        return f"table-{self.id}.csv"

    @property
    def flag_notes(self) -> list[str]:
        """One line per flagged run: "R3: 2 failed items" (a tooltip alone would be lost in Markdown)."""
        seen = {f"{c.ref or '?'}: {c.flag}": None for r in self.rows for c in r.cells if c.flag}
        return list(seen)


@dataclass
class TextTable:
    """A plain table of strings (provenance, speed rows): cells are text, escaped by the renderers."""

    id: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    anchors: list[str | None] = field(default_factory=list)  # per-row HTML id, e.g. "prov-R3"
    notes: list[str] = field(default_factory=list)
    ref_column: int | None = None  # a column of provenance references ("S3"): linked in HTML
    folded: bool = False  # long tables (every measurement): collapsed under their title in HTML
    wrap: bool = False  # few rows of long text (the headline): fit the page width, cells wrap

    @property
    def csv_name(self) -> str:
        return f"table-{self.id}.csv"


@dataclass
class Figure:
    id: str
    title: str
    filename: str
    png: bytes | None  # None: no data, ``note`` says why and the figure is omitted
    note: str = ""
    svg: bytes | None = None  # the same figure as SVG, written next to the PNG

    @property
    def svg_name(self) -> str:
        return self.filename.removesuffix(".png") + ".svg"


@dataclass
class Section:
    id: str
    title: str
    intro: list[str] = field(default_factory=list)
    blocks: list[Table | TextTable | Figure] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)


@dataclass
class Report:
    title: str
    generated: str
    source: str
    sections: list[Section]
    problems: list[str]


def slug(*parts: str) -> str:
    """An HTML id / file-name-safe token built from arbitrary (possibly hostile) text."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-") or "x"
