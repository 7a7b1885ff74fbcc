"""Shared fixtures for the harness tests: a private cache for the smoke model, fixture paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE_DATA = REPO / "oscar_eval" / "data" / "longbench_e_smoke"


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory) -> Path:
    """Build the smoke model once per session in a private cache (never the user's ~/.cache)."""
    root = tmp_path_factory.mktemp("oscar_eval_cache")
    old = os.environ.get("OSCAR_EVAL_CACHE")
    os.environ["OSCAR_EVAL_CACHE"] = str(root)
    from oscar_eval.smoke import smoke_model_path

    smoke_model_path()
    yield root
    if old is None:
        os.environ.pop("OSCAR_EVAL_CACHE", None)
    else:
        os.environ["OSCAR_EVAL_CACHE"] = old


@pytest.fixture(scope="session")
def smoke_model(smoke_cache) -> Path:
    from oscar_eval.smoke import smoke_model_path

    return smoke_model_path()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `oscar-eval ARGV` in-process: (exit code, stdout, stderr)."""
    from oscar_eval.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one `oscar-eval: error:` line of stderr (there must be exactly one)."""
    lines = [x for x in err.splitlines() if x.startswith("oscar-eval: error:")]
    assert len(lines) == 1, err
    return lines[0]
