"""Hostile text is escaped everywhere; partial, empty and damaged stores still give a report."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_helpers import HOSTILE, hostile_store, html_row, html_tables, md_table, record, speed_row

from oscar_eval.report import ReportError, load_store, render_report
from oscar_eval.report.markdown import escape


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def test_hostile_text_is_escaped_in_html(writer, tmp_path):
    hostile_store(writer)
    html = render_report(writer.root, tmp_path / "r").html.read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(2)&gt;|x" in html
    for tag, attrs in tags(html):
        assert tag not in ("script", "iframe", "object", "embed", "link")
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
        if tag == "a":  # in-page anchors, or the report's own CSV / figure files (names built by slug)
            assert re.fullmatch(r"#[a-z0-9-]+|table-[a-z0-9-]+\.csv|fig-[a-z0-9_-]+\.(png|svg)", attrs["href"])
    # The hostile label is a column of Table 1 (no paper match), shown as text.
    assert html_tables(html)["table1-main"][0][-1] == f"{HOSTILE} $\\frac{{1$"
    # a speed file's free-text note is shown in the provenance, as text
    assert html_tables(html)["prov-speed"][1][-1] == HOSTILE


def test_hostile_text_is_escaped_in_markdown(writer, tmp_path):
    hostile_store(writer)
    md = render_report(writer.root, tmp_path / "r").markdown.read_text(encoding="utf-8")
    assert "<script" not in md and "<img" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "\\|x" in md
    # Every table keeps its shape: an unescaped "|" in a cell would add columns.
    titles = [line[2:-2] for line in md.splitlines() if line.startswith("**") and line.endswith("**")]
    assert titles
    for title in titles:
        rows = md_table(md, title)
        assert len({len(r) for r in rows}) == 1, title


def test_markdown_escape():
    assert escape("a|b") == "a\\|b"
    assert escape("<b>*x*</b>") == "&lt;b&gt;\\*x\\*&lt;/b&gt;"
    assert escape("line\nbreak") == "line break"
    assert escape("[link](x)") == "\\[link\\](x)"


def test_partial_store_shows_dashes(writer, tmp_path):
    writer.run("longbench_e", "Qwen3-8B", "kivi", average=47.0, bits=3.25)
    done = render_report(writer.root, tmp_path / "r")
    html, md = done.html.read_text(encoding="utf-8"), done.markdown.read_text(encoding="utf-8")
    assert html_row(html, "table1-main", "KIVI")[3:9] == ["—", "39.84", "—", "47.00", "47.95", "-0.95"]
    assert html_row(html, "table1-main", "OScaR")[3:9] == ["—", "41.75", "—", "—", "48.74", "—"]
    assert html_row(html, "table6-main", "OScaR")[3:] == ["—", "519", "—", "—", "856", "—", "—", "838", "—"]
    assert "No speed results" in html
    for note in ("no latency-vs-context plot", "no throughput-vs-batch plot", "no memory plot", "no heatmap"):
        assert note in html and note in md
    assert [p.name for p in done.html.parent.glob("fig-*.png")] == ["fig-pareto-longbench_e.png"]


def test_empty_store_and_missing_store(tmp_path):
    (tmp_path / "results" / "runs").mkdir(parents=True)
    html = render_report(tmp_path / "results", tmp_path / "r").html.read_text(encoding="utf-8")
    assert html.count("No completed run in the results store yet.") == 4
    with pytest.raises(ReportError, match="does not exist"):
        render_report(tmp_path / "nope", tmp_path / "r")
    (tmp_path / "other").mkdir()
    with pytest.raises(ReportError, match="not a results store"):
        render_report(tmp_path / "other", tmp_path / "r")


def test_damaged_files_are_skipped_and_listed(writer, tmp_path):
    good = writer.run("longbench_e", "Qwen3-8B", "oscar", average=48.0,
                      records=[record("trec_e", 0), record("trec_e", 1)])
    folder = next(p for p in (writer.root / "runs").iterdir())
    with (folder / "records.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"item_id": "trec_e/9", "stat')  # a killed run's half-written last line: silently ignored
    bad = writer.root / "runs" / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json", encoding="utf-8")
    (writer.root / "runs" / "no-manifest").mkdir()
    writer.run("longbench_e", "Qwen3-8B", "kivi", average=47.0, extra={"average": "47.0"})  # not a number
    writer.speed("s", [{"impl": "x"}, speed_row("bf16-cudnn", 1, 4096, 10.0)])
    store = load_store(writer.root)
    assert next(r for r in store.runs if r.run_id == good).n_records == 2
    done = render_report(writer.root, tmp_path / "r")
    problems = "\n".join(done.problems)
    assert "bad/manifest.json: unreadable JSON" in problems
    assert "no-manifest: no manifest.json" in problems
    assert "speed/s.json row 0" in problems
    assert "records.jsonl" not in problems
    html = done.html.read_text(encoding="utf-8")
    assert html_row(html, "table1-main", "KIVI")[6] == "—"
    assert html_row(html, "table1-main", "OScaR")[6] == "48.00"
    assert 'id="problems"' in html


def test_summary_without_run_is_reported_as_incomplete(writer, tmp_path):
    writer.run("longbench_e", "Qwen3-8B", "oscar", average=48.0)
    folder = next((writer.root / "runs").iterdir())
    (folder / "summary.json").unlink()
    done = render_report(writer.root, tmp_path / "r")
    assert any("no summary.json yet" in p for p in done.problems)
    html = done.html.read_text(encoding="utf-8")
    assert html_row(html, "table1-main", "OScaR")[6] == "—"
    assert html_tables(html)["prov-runs"][1][-2] == "no summary"


def test_report_is_deterministic_given_the_date(store, tmp_path):
    a = render_report(store, tmp_path / "a", generated="x").html.read_text(encoding="utf-8")
    b = render_report(store, tmp_path / "b", generated="x").html.read_text(encoding="utf-8")
    assert a == b
    assert json.dumps(re.findall(r'id="([^"]+)"', a)) == json.dumps(re.findall(r'id="([^"]+)"', b))


def test_stale_figures_are_removed(writer, tmp_path: Path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "fig-latency.png").write_bytes(b"old")
    writer.run("longbench_e", "Qwen3-8B", "oscar", average=48.0, bits=None)
    done = render_report(writer.root, out)
    assert done.figures == [] and not list(out.glob("fig-*.png"))


def test_markdown_renders_as_intended_with_a_gfm_parser(writer, tmp_path):
    """Parsed by a CommonMark + GFM-tables parser: hostile text stays text, every table keeps its columns."""
    markdown_it = pytest.importorskip("markdown_it")
    hostile_store(writer)
    writer.run("longbench_e", "Qwen3-8B", "oscar", average=48.5)
    md = render_report(writer.root, tmp_path / "r").markdown.read_text(encoding="utf-8")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in html and "<img src=x" not in html
    assert [t for t, _ in tags(html) if t not in ("h1", "h2", "h3", "p", "strong", "em", "table", "thead", "tbody",
                                                  "tr", "th", "td", "code", "ul", "li", "img", "a", "details",
                                                  "summary")] == []
    tables = html_tables(html)
    assert len(tables) == md.count("\n| ---")
    for rows in tables.values():
        assert len({len(r) for r in rows}) == 1
    oscar = next(r for r in next(iter(tables.values())) if r[0] == "OScaR")
    assert re.fullmatch(r"48.50 \(R\d+\)", oscar[6]) and oscar[7:9] == ["48.74", "-0.24"]
    assert HOSTILE in html_tables(html)[next(iter(tables))][0][-3]  # "<label> ours", "paper", "Δ"
