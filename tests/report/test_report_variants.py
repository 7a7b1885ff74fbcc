"""A run with parameters set away from a method's defaults (``--set oscar.key_basis=auto``) is a row of its
own: it never fills, or replaces, the paper configuration's cell, and it is never compared with the paper."""

from __future__ import annotations

from pathlib import Path

from report_helpers import GGUF_SOURCE, StoreWriter, html_row, html_tables, md_row

import oscar_core
from oscar_eval.report import render_report
from oscar_eval.report.store import method_key

REAL = "smollm2-135m-instruct-0.1.2"
META = {"model": {"source": GGUF_SOURCE}}


def test_method_key_names_only_the_parameters_set_away_from_the_defaults():
    defaults = oscar_core.get_method("oscar").to_dict()["params"]
    assert method_key("oscar", defaults) == "oscar"
    assert method_key("oscar", defaults | {"key_basis": "auto"}) == "oscar[key_basis=auto]"
    assert method_key("oscar", defaults | {"residual_length": 64}) == "oscar[residual_length=64]"
    # RotateKV's head_group defaults to None (resolved per model): a resolved value is no variant.
    rkv = oscar_core.get_method("rotatekv").to_dict()["params"]
    assert method_key("rotatekv", rkv | {"head_group": 2, "group_size": 64}) == "rotatekv"
    # An older run that does not record a newer parameter ran with its default.
    assert method_key("kivi", {k: v for k, v in oscar_core.get_method("kivi").to_dict()["params"].items()
                                if k != "arithmetic"}) == "kivi"
    assert method_key("mymethod", {"bits": 2}) == "mymethod"


def test_a_variant_gets_its_own_row_and_no_paper_value(tmp_path: Path):
    w = StoreWriter(tmp_path / "results")
    auto = oscar_core.get_method("oscar", key_basis="auto").to_dict()["params"]
    w.run("ruler", REAL, "oscar", bits=3.08, manifest_extra=META, created="2026-12-01T08:00:00+00:00",
          extra={"contexts": {"4096": 20.0}, "average": 20.0})
    # Newer than the default run: it must still not take the "OScaR" cell.
    w.run("ruler", REAL, "oscar", bits=3.08, params=auto, manifest_extra=META, created="2026-12-02T08:00:00+00:00",
          extra={"contexts": {"4096": 60.0}, "average": 60.0})
    w.run("longbench_e", "Qwen3-8B", "oscar", average=30.0, params=auto)
    done = render_report(tmp_path / "results", tmp_path / "report", title="t", generated="2026-12-04 08:00 UTC")
    html, md = done.html.read_text(encoding="utf-8"), done.markdown.read_text(encoding="utf-8")
    table = "real-smollm2-135m-instruct-0-1-2"
    assert html_row(html, table, "OScaR")[2].startswith("20.0")
    assert html_row(html, table, "OScaR (key_basis=auto)")[2].startswith("60.0")
    assert md_row(md, f"{REAL}: methods x benchmarks", r"OScaR (key\_basis=auto)")[2].startswith("60.0")
    # Table 1: the variant is not the paper's OScaR, so it has no paper value and no difference beside it.
    rows = {r[0]: r for r in html_tables(html)["table1-main"][2:]}
    assert rows["OScaR"][6:9] == ["—", "48.74", "—"]  # Qwen3-8B: no run of the paper configuration
    variant = rows["OScaR (key_basis=auto)"]
    assert variant[1] == "—" and variant[6].startswith("30.00") and variant[7:9] == ["—", "—"]
