"""A real-checkpoint RULER run of N samples per task (``--limit N``) that scored all of them is shown in the
real-checkpoint table, labelled "N samples/task"; one that stopped short stays a partial run, in no table."""

from __future__ import annotations

from pathlib import Path

from report_helpers import GGUF_SOURCE, StoreWriter, html_row, html_tables

from oscar_eval.report import render_report

REAL = "smollm2-135m-instruct-0.1.2"
TASKS = {"niah_single_1": 50.0, "vt": 30.0}
CONTEXTS = {"2048": 45.0, "4096": 35.0}


def _ruler(w: StoreWriter, method: str, done: int, created: str) -> None:
    settings = {"max_input_len": 131072, "chat_template": False, "seed": 42, "greedy": True, "protocol": "paper",
                "limit": 20}
    cov = {"done": done, "total": 2000, "missing_subsets": [], "complete": False}
    w.run("ruler", REAL, method, bits=3.08, created=created,
          manifest_extra={"model": {"source": GGUF_SOURCE}, "settings": settings, "coverage": cov},
          extra={"tasks": TASKS, "contexts": CONTEXTS, "average": 40.0, "coverage": cov})


def test_sampled_ruler_run_is_shown_and_a_short_one_is_not(tmp_path: Path):
    w = StoreWriter(tmp_path / "results")
    _ruler(w, "oscar", 20 * 2 * 2, "2026-12-01T08:00:00+00:00")  # 20 per task and context: complete sample
    _ruler(w, "kivi", 20 * 2 * 2 - 1, "2026-12-01T09:00:00+00:00")  # one item short: partial
    html = render_report(tmp_path / "results", tmp_path / "report").html.read_text(encoding="utf-8")
    table = f"real-{REAL.replace('.', '-')}"
    oscar = html_row(html, table, "OScaR")
    assert oscar[2].startswith("45.0") and "20 samples/task" in oscar[2]
    assert "KIVI" not in [r[0] for r in html_tables(html)[table]]
    partial = html_tables(html)["partial-runs"]
    assert [r[3] for r in partial[1:]] == ["kivi"] and "partial: 79/2000 items" in partial[1][-1]
