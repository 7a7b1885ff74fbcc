"""Benchmark registry: declarative configs live in ``tasks/``, loaders and scorers here."""

from __future__ import annotations

import os
from pathlib import Path

from oscar_eval.benchmarks.base import Benchmark, Item, ItemError
from oscar_eval.benchmarks.options import Option
from oscar_eval.errors import UserError

__all__ = ["BENCHMARKS", "Benchmark", "Item", "ItemError", "Option", "benchmark_class", "benchmark_key",
           "get_benchmark", "list_benchmarks", "load_task_config", "options_of", "tasks_dir"]

# name -> (module, class, one-line description, status)
BENCHMARKS: dict[str, tuple[str, str, str, str]] = {
    "longbench_e": ("oscar_eval.benchmarks.longbench_e", "LongBenchE",
                    "LongBench-E, 13 English long-context subsets (text)", "available"),
    "ocrbench": ("oscar_eval.benchmarks.ocrbench", "OCRBench", "OCRBench, 1000 OCR questions (vision)", "available"),
    "mmau_pro": ("oscar_eval.benchmarks.mmau_pro", "MMAUPro", "MMAU-Pro, audio understanding (audio/omni)",
                 "available"),
    "niah": ("oscar_eval.benchmarks.niah", "NeedleInAHaystack", "needle-in-a-haystack grid (text)", "available"),
    "ruler": ("oscar_eval.benchmarks.ruler", "Ruler",
              "RULER synthetic long-context tasks, NVIDIA/RULER's generators and scoring (text)", "available"),
    "ppl": ("oscar_eval.benchmarks.ppl", "Perplexity",
            "perplexity, KL to fp16, top-1 agreement through the cache (text)", "available"),
}
ALIASES = {"longbench": "longbench_e", "longbench-e": "longbench_e", "mmau-pro": "mmau_pro", "mmau": "mmau_pro"}


def tasks_dir() -> Path:
    """The ``tasks/`` folder: $OSCAR_EVAL_TASKS, else the one next to the package (source checkout)."""
    env = os.environ.get("OSCAR_EVAL_TASKS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "tasks"


def load_task_config(name: str, path: Path | None = None) -> dict:
    """A benchmark's declarative config: ``path``, else ``tasks/<name>`` (:func:`tasks_dir`)."""
    import yaml

    path = path or tasks_dir() / name
    if not path.is_file():
        raise UserError(f"task config {path} not found (set OSCAR_EVAL_TASKS to the tasks/ folder)")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def list_benchmarks() -> dict[str, tuple[str, str]]:
    return {name: (desc, status) for name, (_, _, desc, status) in BENCHMARKS.items()}


def benchmark_key(name: str) -> str:
    """The registry name of ``name`` (an alias such as ``longbench``); an unknown name is a UserError."""
    key = ALIASES.get(name, name)
    if key not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return key


def benchmark_class(name: str) -> type:
    """The class of benchmark ``name`` (or an alias); unknown or not implemented yet: a UserError."""
    key = benchmark_key(name)
    module_name, cls_name, _, status = BENCHMARKS[key]
    if status != "available":
        raise UserError(f"benchmark {key!r} is not implemented yet")
    import importlib

    return getattr(importlib.import_module(module_name), cls_name)


def options_of(name: str) -> tuple[Option, ...]:
    """The options benchmark ``name`` declares (its class's ``options``: constructor keywords)."""
    return tuple(getattr(benchmark_class(name), "options", ()))


def get_benchmark(name: str, **kwargs) -> Benchmark:
    return benchmark_class(name)(**kwargs)
