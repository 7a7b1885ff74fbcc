"""The HTML report in a real browser (headless Chromium over the DevTools protocol): no console
errors, no requests beyond the file itself and its data: images, readable at phone width.

Screenshots go to $OSCAR_EVAL_SCREENSHOTS when set (e.g. reports/_scratch), else to pytest's tmp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from report_helpers import full_store, hostile_store

from oscar_eval.report import render_report


@pytest.fixture(scope="module")
def report_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("browser")
    writer = full_store(tmp / "results")
    hostile_store(writer)
    return render_report(tmp / "results", tmp / "report").html.resolve().as_uri()


def _shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("OSCAR_EVAL_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _assert_clean(result, url: str) -> None:
    assert result.console == []
    assert [u for u in result.requests if u != url and not u.startswith("data:image/png;base64,")] == []
    assert result.checks["images"] == 6 and result.checks["brokenImages"] == 0
    assert result.checks["scripts"] == 0  # hostile <script> text stayed text
    assert result.checks["tables"] > 10
    assert result.screenshot.startswith(b"\x89PNG")


@pytest.mark.parametrize(("name", "width", "height", "mobile"),
                         [("desktop", 1280, 900, False), ("phone", 390, 844, True)])
def test_report_loads_without_console_errors(chromium, report_url, tmp_path, name, width, height, mobile):
    result = chromium.load(report_url, width, height, mobile=mobile, full_page=True)
    _assert_clean(result, report_url)
    # Wide tables scroll inside their own box; the page itself never scrolls sideways.
    assert result.checks["pageWidth"] <= result.checks["viewportWidth"]
    (_shots_dir(tmp_path) / f"report-{name}.png").write_bytes(result.screenshot)


def test_the_harness_does_see_errors(chromium, tmp_path):
    """A positive control: the same checks catch a console error, an exception and an external load."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><p>x</p><img src="missing.png"><script>console.error("boom"); nope();</script>',
                    encoding="utf-8")
    result = chromium.load(page.as_uri(), 800, 600)
    joined = "\n".join(result.console)
    assert "console.error: boom" in joined and "nope is not defined" in joined
    assert result.checks["brokenImages"] == 1 and result.checks["scripts"] == 1
    assert any(u.endswith("missing.png") for u in result.requests)


def test_report_prints(chromium, report_url, tmp_path):
    pdf, problems = chromium.print_pdf(report_url)
    assert problems == [] and pdf.startswith(b"%PDF")
    (_shots_dir(tmp_path) / "report-print.pdf").write_bytes(pdf)


# --- issue 17: the efficiency headline and the labels, in a real browser -------------------------

CLAIMS = ["Decode speed-up, batch 1, 128K", "KV memory reduction, batch 1, 128K", "Throughput gain, batch 48, 4K"]
STYLES = ["the paper's style (dynamic cache, eager)", "strongest BF16 baseline"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory):
    from report_helpers import labelled_store

    tmp = tmp_path_factory.mktemp("labelled")
    labelled_store(tmp / "results")
    done = render_report(tmp / "results", tmp / "report", generated="2026-12-03 12:00 UTC")
    return done, done.html.read_text(encoding="utf-8")


def test_headline_has_one_row_per_paper_claim_and_baseline_style(labelled):
    from report_helpers import html_tables

    rows = html_tables(labelled[1])["eff-headline"][1:]
    assert [(r[0], r[1]) for r in rows] == [(c, s) for c in CLAIMS for s in STYLES]
    by = {(r[0], r[1]): r for r in rows}
    # From the newest complete run (e2e-new), never the older one (99 ms / 33 ms would be 3.00x).
    assert by[(CLAIMS[0], STYLES[1])][3] == "1.40x" and by[(CLAIMS[0], STYLES[0])][3] == "3.09x"
    assert by[(CLAIMS[0], STYLES[0])][2].startswith("3.0x (92.9 → 30.9 ms")
    assert by[(CLAIMS[2], STYLES[0])][3] == "2.94x" and by[(CLAIMS[1], STYLES[1])][3] == "5.28x"
    assert all(r[5].startswith("end to end") for r in rows)


def test_kernel_figures_come_from_the_newest_kernel_file(labelled):
    from report_helpers import html_tables

    tables = html_tables(labelled[1])
    row = next(r for r in tables["kernel-decode"] if r[2] == "131072")
    assert row[4] == "44.5" and row[7] == "2.83x"  # k-new, not k-old's 90.0 us
    kernels = {r[1]: r[0] for r in tables["prov-kernels"][1:]}
    assert row[-1] == kernels["kernels/k-new.json"]


def test_labels_are_shown(labelled):
    from report_helpers import html_tables

    done, html = labelled
    tables = html_tables(html)
    assert tables["smoke-runs"][1][1] == "random weights"
    assert "partial: 37/220 items" in tables["partial-runs"][1][-1]
    real = tables["real-smollm2-135m-instruct-0-1-2"]
    assert real[0] == ["Method", "bits/elt", "RULER 4K", "RULER 8K", "RULER avg", "NIAH", "PPL", "KL to fp16",
                       "top-1 %"]
    oscar = next(r for r in real if r[0] == "OScaR")
    assert oscar[1] == "3.08" and oscar[2].startswith("90.0") and oscar[6].startswith("8.05")
    assert "GGUF-derived weights (Q4_1)" in html and "Decode path: fp16 (" in html and "kernel (" in html
    prov = {r[1]: r[-1] for r in tables["prov-runs"][1:]}
    assert any("random weights" in v for v in prov.values())
    assert any("partial: 37/220 items" in v for v in prov.values())
    assert any("GGUF-derived weights (Q4_1); decode path: kernel" == v for v in prov.values())
    # Every table has its CSV next to the HTML, linked from it.
    for table_id in ("eff-headline", "kernel-decode", "real-smollm2-135m-instruct-0-1-2", "prov-runs"):
        assert (done.html.parent / f"table-{table_id}.csv").is_file() and f'href="table-{table_id}.csv"' in html


@pytest.mark.parametrize("width", [420, 1280])
def test_labelled_report_in_the_browser(chromium, labelled, tmp_path, width):
    done, _ = labelled
    url = done.html.resolve().as_uri()
    result = chromium.load(url, width, 2000, mobile=width < 600, full_page=True)
    assert result.console == []
    assert [u for u in result.requests if u != url and not u.startswith("data:image/png;base64,")] == []
    assert result.checks["brokenImages"] == 0 and result.checks["scripts"] == 0
    assert result.checks["pageWidth"] <= result.checks["viewportWidth"]  # no horizontal overflow
    (_shots_dir(tmp_path) / f"labelled-{width}.png").write_bytes(result.screenshot)
