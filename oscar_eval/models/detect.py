"""Which loader a checkpoint needs, from its config alone (no weights, no model classes imported):
vision-language (:mod:`~oscar_eval.models.vision`), omni audio (:mod:`~oscar_eval.models.audio`), else text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")

VISION_LANGUAGE_TYPES = (*QWEN_VL_TYPES, "llava_next", "llava", "llava_onevision")


def is_vision_language(path: Path) -> bool:
    """Whether the checkpoint in ``path`` is an image-text-to-text model that :mod:`~oscar_eval.models.vision` loads."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return str(cfg.get("model_type", "")) in VISION_LANGUAGE_TYPES



def is_omni(config: Any) -> bool:
    return "omni" in str(getattr(config, "model_type", "")).lower()

