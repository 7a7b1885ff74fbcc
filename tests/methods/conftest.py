"""tests/methods: the issue-4 baselines (rotatekv, ott, turboquant+/turboquant) on tiny models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest (and immune to an oversubscribed CI machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
