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
