"""The README's quick start runs as written (on SmolLM2), with deprecation warnings as errors, and
writes nothing into the current folder."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start_code(readme: str) -> str:
    """The ```python blocks of the README's "## Quick start" section, in order."""
    parts = re.split(r"^## ", readme, flags=re.M)
    section = next((p for p in parts if p.startswith("Quick start\n")), None)
    assert section is not None, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)
    assert blocks, "the README's quick start has no ```python block"
    return "\n".join(blocks)


def test_quick_start_block_is_found():
    code = quick_start_code(README.read_text(encoding="utf-8"))
    assert "oc.quantized(" in code and "load_model(" in code and "model.generate(" in code


def test_readme_quick_start_runs_without_deprecation_warnings(smollm2, tmp_path, monkeypatch, capsys):
    code = quick_start_code(README.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        # pyproject's filterwarnings hides transformers' past_key_values rename in other tests; not here.
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        exec(compile(code, "README.md (quick start)", "exec"), namespace)  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert "oscar" in printed and "Paris" in printed  # the list of methods; OScaR-cached SmolLM2 knows it
    assert namespace["model"].config._attn_implementation == "oscar_kv"  # the lasting make_cache(kivi)
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder
