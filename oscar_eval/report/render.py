"""``render_report``: results store in, ``index.html`` + ``report.md`` + ``fig-*.png``/``.svg`` +
``table-*.csv`` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from oscar_eval.report import csv_out, html, markdown
from oscar_eval.report.build import build
from oscar_eval.report.model import Figure, Report, Section
from oscar_eval.report.store import load_store

DEFAULT_TITLE = "OScaR KV-cache quantization: evaluation report"


class ReportError(ValueError):
    """The inputs cannot make a report (e.g. the results folder does not exist)."""


@dataclass
class Rendered:
    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _figures(sections: list[Section]) -> list[Figure]:
    out = []
    for s in sections:
        out += [b for b in s.blocks if isinstance(b, Figure) and b.png is not None]
        out += _figures(s.subsections)
    return out


def build_report(results_dir: str | Path, title: str = DEFAULT_TITLE, aliases: dict[str, str] | None = None,
                 generated: str | None = None, include_smoke: bool = False) -> Report:
    root = Path(results_dir)
    if not root.is_dir():
        raise ReportError(f"results folder {root} does not exist")
    if not any((root / sub).is_dir() for sub in ("runs", "speed", "kernels")):
        raise ReportError(f"{root} is not a results store: it has none of runs/, speed/, kernels/ (see docs/results.md)")
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return build(load_store(root, include_smoke), title, generated, aliases)


def render_report(results_dir: str | Path, out_dir: str | Path, title: str = DEFAULT_TITLE,
                  aliases: dict[str, str] | None = None, generated: str | None = None,
                  include_smoke: bool = False) -> Rendered:
    """Render the report of ``results_dir`` into ``out_dir`` (created; old figures replaced)."""
    report = build_report(results_dir, title, aliases, generated, include_smoke)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(report.sections)
    for pattern in ("fig-*.png", "fig-*.svg", "table-*.csv"):  # what has no data any more must not linger
        for stale in out.glob(pattern):
            stale.unlink()
    written, csvs = [], []
    for f in figures:
        path = out / f.filename
        path.write_bytes(f.png)
        written.append(path)
        if f.svg is not None:
            (out / f.svg_name).write_bytes(f.svg)
    for t in csv_out.tables(report.sections):
        path = out / t.csv_name
        path.write_text(csv_out.render(t), encoding="utf-8")
        csvs.append(path)
    md_path, html_path = out / "report.md", out / "index.html"
    md_path.write_text(markdown.render(report), encoding="utf-8")
    html_path.write_text(html.render(report), encoding="utf-8")
    return Rendered(html_path, md_path, written, csvs, report.problems)
