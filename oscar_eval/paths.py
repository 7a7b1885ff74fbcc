"""Where oscar-eval writes when no folder is given: under ``$OSCAR_EVAL_HOME``, never into the current
folder (a source checkout keeps its committed ``results/`` and ``reports/latest`` untouched unless a
command is pointed at them with ``--results results`` / ``--out reports/latest``).

``$OSCAR_EVAL_HOME`` defaults to ``oscar-eval`` in the user's cache folder (``$XDG_CACHE_HOME``, else
``~/.cache``); converted checkpoints and NIAH haystacks live there too (:func:`oscar_eval.checkpoints.home`).
"""

from __future__ import annotations

from pathlib import Path

from oscar_eval.checkpoints import home

#: how help texts name the defaults
RESULTS_DEFAULT = "$OSCAR_EVAL_HOME/results"
REPORT_DEFAULT = "$OSCAR_EVAL_HOME/report"


def results_root(results: str | Path | None = None) -> Path:
    """The results store: ``results`` when given, else ``$OSCAR_EVAL_HOME/results``. Calibrations
    (``<results>/calibration``) and the MMAU-Pro judge cache (``<results>/judge_cache``) follow it."""
    return Path(results).expanduser() if results is not None else home() / "results"


def report_dir(out: str | Path | None = None) -> Path:
    """The report folder: ``out`` when given, else ``$OSCAR_EVAL_HOME/report``."""
    return Path(out).expanduser() if out is not None else home() / "report"
