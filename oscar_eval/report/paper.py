"""The paper's numbers (shipped as package data) and how our runs are matched to them.

Model matching rule (kept simple on purpose): a model label matches a paper column when both are
equal after *normalisation*: take the text after the last ``/``, lowercase, split on ``-``, ``_``,
``.`` and spaces, drop the filler words in ``FILLER_WORDS`` (``meta``, ``instruct``, ``chat``,
``hf``, ``vicuna``) and join what is left. So ``meta-llama/Meta-Llama-3.1-8B-Instruct`` matches
``Llama-3.1-8B`` and ``llava-v1.6-vicuna-7b`` matches ``LLaVA-v1.6-7B``, while ``Qwen3-VL-8B`` does
not match ``Qwen3-8B``. Anything else can be mapped explicitly with ``aliases``
(``{"my-llama": "Llama-3.1-8B"}``, or ``--alias my-llama=Llama-3.1-8B`` on the command line).
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

# The paper's row order; methods it does not have come after, alphabetically.
METHOD_ORDER = ["fp16", "quarot", "rotatekv", "kivi", "ott", "turboquant+", "oscar"]
FILLER_WORDS = frozenset({"meta", "instruct", "chat", "hf", "vicuna"})
# paper_results.json has MMAU-Pro's metrics as columns; its single model is named only in the title.
PAPER_MODEL = {"mmau_pro": "Qwen3-Omni-30B-A3B"}


@cache
def load_paper() -> dict[str, Any]:
    ref = resources.files("oscar_eval").joinpath("data/paper_results.json")
    return json.loads(ref.read_text(encoding="utf-8"))


def _split_variant(method: str) -> tuple[str, str]:
    """``oscar[key_basis=auto]`` -> (``oscar``, ``key_basis=auto``) (store.method_key's format)."""
    base, _, rest = method.partition("[")
    return base, rest.removesuffix("]")


def method_sort_key(method: str) -> tuple[int, str, str]:
    base, variant = _split_variant(method)
    return (METHOD_ORDER.index(base), "", variant) if base in METHOD_ORDER else (len(METHOD_ORDER), base, variant)


def method_label(method: str) -> str:
    base, variant = _split_variant(method)
    meta = load_paper()["methods"].get(base)
    label = meta["label"] if meta else base
    return f"{label} ({variant})" if variant else label


def paper_bits_label(method: str) -> str | None:
    meta = load_paper()["methods"].get(method)  # a variant is not the paper's configuration: no bits label
    return meta["bits_label"] if meta else None


def normalise_model(label: str) -> str:
    words = re.split(r"[-_.\s]+", label.rsplit("/", 1)[-1].lower())
    return "".join(w for w in words if w and w not in FILLER_WORDS)


def match_model(label: str, columns: list[str], aliases: dict[str, str] | None = None) -> str | None:
    """The paper column ``label`` stands for, or None."""
    if aliases and label in aliases:
        target = aliases[label]
        return next((c for c in columns if c.lower() == target.lower()), None)
    key = normalise_model(label)
    return next((c for c in columns if normalise_model(c) == key), None)


def paper_value(table: str, method: str, column: str | None) -> float | None:
    """The paper's number for (table, method, column), or None where the paper has none."""
    spec = load_paper()["tables"].get(table)
    if spec is None or column is None or column not in spec["columns"]:
        return None
    row = spec["rows"].get(method)
    return None if row is None else float(row[spec["columns"].index(column)])
