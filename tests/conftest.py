"""Shared pytest set-up: make helper modules in tests/ importable, skip GPU tests without CUDA; fixtures
several test folders use (``one_thread``, ``tiny_arch``)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (restored after): fastest for tiny tensors, and immune to an
    oversubscribed machine. tests/cache and tests/methods use it for every test."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_architectures() -> list[str]:
    from tiny_models import ARCHITECTURES

    return list(ARCHITECTURES)


@pytest.fixture(scope="module", params=_tiny_architectures())
def tiny_arch(request):
    """``(name, model, inputs)`` for each tiny random model of tests/tiny_models.py, built once per module."""
    from tiny_models import ARCHITECTURES

    return request.param, *ARCHITECTURES[request.param]()
