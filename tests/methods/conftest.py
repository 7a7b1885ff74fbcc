"""tests/methods: the issue-4 baselines (rotatekv, ott, turboquant+/turboquant) on tiny models; one intra-op
thread for every test (tests/conftest.py's ``one_thread``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
