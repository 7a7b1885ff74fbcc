"""Models: loading (local files only) and the runners that turn a benchmark item into a generation.

- :mod:`~oscar_eval.models.base`: :class:`LoadedModel`, :class:`Generation`, the runner protocol;
- :mod:`~oscar_eval.models.resolve`: where a model comes from (folders, GGUF, offline checkpoints), device,
  dtype; importing the package switches the Hugging Face libraries offline;
- :mod:`~oscar_eval.models.detect` and :mod:`~oscar_eval.models.loading`: which loader, and ``load_model``;
- runners per modality: :mod:`~oscar_eval.models.text` (:class:`TextRunner`), :mod:`~oscar_eval.models.vision`,
  :mod:`~oscar_eval.models.audio`, :mod:`~oscar_eval.models.ppl` (teacher-forced perplexity), chosen by
  :func:`runner_for` (:mod:`~oscar_eval.models.runners`).

Submodules import each other directly, never this package, so the names below are for other code.
"""

from oscar_eval.models.base import Generation, LoadedModel, ModelRunner, cache_kwarg, seed_everything
from oscar_eval.models.loading import load_model
from oscar_eval.models.resolve import DTYPES, resolve_device, resolve_dtype, resolve_model_path
from oscar_eval.models.runners import runner_for
from oscar_eval.models.text import TextRunner

__all__ = ["DTYPES", "Generation", "LoadedModel", "ModelRunner", "TextRunner", "cache_kwarg", "load_model",
           "resolve_device", "resolve_dtype", "resolve_model_path", "runner_for", "seed_everything"]
