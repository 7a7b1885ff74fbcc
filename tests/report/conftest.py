"""Fixtures of the report tests; the helpers themselves live in report_helpers.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from report_helpers import CHROMIUM_CANDIDATES, Chromium, StoreWriter, full_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    full_store(root)
    return root


@pytest.fixture
def writer(tmp_path: Path) -> StoreWriter:
    return StoreWriter(tmp_path / "results")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory):
    binary = next((b for b in CHROMIUM_CANDIDATES if Path(b).exists()), shutil.which("chromium"))
    if not binary:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium); browser test skipped")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()
