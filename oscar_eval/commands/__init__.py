"""Sub-commands of `oscar-eval`, one module each (see oscar_eval.cli)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

CALIBRATION_ENV = "OSCAR_EVAL_CALIBRATION_DIR"


@contextlib.contextmanager
def calibration_dir_of(results: str | Path) -> Iterator[None]:
    """Calibrations (RotateKV's) live in ``<results>/calibration`` unless ``$OSCAR_EVAL_CALIBRATION_DIR``
    says otherwise: set for the duration of one command, then restored."""
    if CALIBRATION_ENV in os.environ:
        yield
        return
    os.environ[CALIBRATION_ENV] = str(Path(results) / "calibration")
    try:
        yield
    finally:
        os.environ.pop(CALIBRATION_ENV, None)
