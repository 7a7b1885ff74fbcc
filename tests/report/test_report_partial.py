"""Partial runs (a --limit, subsets left out) stay out of every table and are listed apart (issue 14)."""

from __future__ import annotations

from report_helpers import StoreWriter, html_tables, md_table

from oscar_eval.report.build import build
from oscar_eval.report.markdown import render
from oscar_eval.report.render import render_report
from oscar_eval.report.store import load_store


def _report(root):
    return build(load_store(root), "t", "2026-12-01")


def test_partial_run_is_listed_apart_and_not_in_table1(writer: StoreWriter):
    partial = {"done": 13, "total": 650, "fraction": 0.02, "missing_subsets": [], "complete": False}
    writer.run("longbench_e", "Qwen3-8B", "kivi", average=99.0, extra={"coverage": partial},
               created="2026-11-30T08:00:00+00:00")
    writer.run("longbench_e", "Qwen3-8B", "oscar", average=48.0,
               extra={"coverage": {**partial, "done": 650, "fraction": 1.0, "complete": True}})
    md = render(_report(writer.root))
    rows = md_table(md, "Partial runs (not in any table)")
    assert [r[1:] for r in rows[2:]] == [["longbench\\_e", "Qwen3-8B", "kivi", "13 of 650 items",
                                          "partial: 13/650 items"]]
    table1 = next(s for s in _report(writer.root).sections if s.id == "table1").blocks[0]
    ours = {r.key: [c.ours for c in r.cells] for r in table1.rows}
    assert ours["kivi"] == [None, None] and 48.0 in ours["oscar"]  # the partial kivi run fills no cell


def test_old_store_without_coverage_is_partial_when_limited(writer: StoreWriter, tmp_path):
    import json

    rid = writer.run("longbench_e", "Qwen3-8B", "kivi", average=77.0)
    (folder,) = [p for p in (writer.root / "runs").iterdir()
                 if json.loads((p / "manifest.json").read_text())["run_id"] == rid]
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["settings"]["limit"] = 5
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = _report(writer.root)
    partial = next(s for s in report.sections if s.id == "partial")
    assert partial.blocks[0].rows[0][-2] == "limited by --limit (coverage not recorded)"


def test_a_lock_only_folder_is_not_a_problem(writer: StoreWriter):
    (writer.root / "runs" / "stopped-early").mkdir()
    (writer.root / "runs" / "stopped-early" / ".lock").write_text("123")
    assert not [p for p in load_store(writer.root).problems if "stopped-early" in p]


def test_html_lists_partial_runs(writer: StoreWriter, tmp_path):
    writer.run("ocrbench", "Qwen3-VL-8B-Instruct", "oscar", columns={"Total": 10.0},
               extra={"coverage": {"done": 10, "total": 1000, "missing_subsets": ["Doc-oriented VQA"],
                                   "complete": False}})
    render_report(writer.root, tmp_path / "out")
    tables = html_tables((tmp_path / "out" / "index.html").read_text(encoding="utf-8"))
    assert tables["partial-runs"][1][-2] == "10 of 1000 items; subsets not run: Doc-oriented VQA"
    oscar = next(r for r in tables["table6-main"] if r[0] == "OScaR")
    assert "10" not in oscar[3]  # its Total is not in Table 6


def test_a_retried_item_counts_once_and_is_not_listed_failed(writer: StoreWriter):
    from report_helpers import record

    writer.run("longbench_e", "Qwen3-8B", "oscar", average=48.0,
               records=[record("qasper_e", 0, failed=True), record("qasper_e", 1), record("qasper_e", 0)])
    (run,) = load_store(writer.root).runs
    assert run.n_records == 2 and run.failed == []


def test_an_interrupted_run_counts_the_records_it_wrote(writer: StoreWriter):
    """A run killed before its summary: the manifest's coverage says what was done when it started, its
    records how far it got."""
    import json

    from report_helpers import record

    started = {"done": 2, "total": 650, "fraction": 0.0, "missing_subsets": [], "complete": False}
    rid = writer.run("longbench_e", "Qwen3-8B", "kivi", average=1.0, manifest_extra={"coverage": started},
                     records=[record("qasper_e", i) for i in range(5)])
    (folder,) = [p for p in (writer.root / "runs").iterdir()
                 if json.loads((p / "manifest.json").read_text())["run_id"] == rid]
    (folder / "summary.json").unlink()
    partial = next(s for s in _report(writer.root).sections if s.id == "partial")
    assert partial.blocks[0].rows[0][-2] == "5 of 650 items"
