"""``runner_for``: the model runner of a benchmark's input kind (text, vision, audio, ppl)."""

from __future__ import annotations

from typing import Any

from oscar_eval.errors import UserError
from oscar_eval.models.base import LoadedModel, ModelRunner
from oscar_eval.models.text import TextRunner


def runner_for(kind: str, loaded: LoadedModel, **settings: Any) -> ModelRunner:
    if kind == "text":
        return TextRunner(loaded, **settings)
    if kind in ("vision", "image"):
        from oscar_eval.models.vision import VisionRunner

        return VisionRunner(loaded, **settings)
    if kind == "audio":
        from oscar_eval.models.audio import AudioRunner

        return AudioRunner(loaded, **settings)
    if kind == "ppl":  # teacher forcing through the cache, no generation (oscar_eval.models.ppl)
        from oscar_eval.models.ppl import PerplexityRunner

        return PerplexityRunner(loaded, **settings)
    raise UserError(f"no model runner for {kind!r} inputs (known: text, vision, audio, ppl)")
