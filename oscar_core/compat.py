"""Names that differ between the transformers versions we support (5.17 ... current).

transformers 5.2x renamed the cache argument of ``generate()`` and of the models' ``forward()`` from
``past_key_values`` to ``cache`` (the old name still works there, with a FutureWarning on every call).
"""

from __future__ import annotations

from typing import Any


def cache_kwarg() -> str:
    """The name of ``generate()``'s / ``forward()``'s cache argument in the installed transformers."""
    try:
        from transformers.generation import utils as gen_utils
    except ImportError:
        return "past_key_values"
    return "cache" if "cache" in getattr(gen_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model.generate(**inputs, **oc.cache_kwargs(cache))`` on any supported
    transformers, without the deprecation warning of the old name."""
    return {cache_kwarg(): cache}


def forward_cache_kwarg(model: Any) -> str:
    """The name of ``model.forward()``'s cache argument, read from its signature (a model's forward may
    lag behind ``generate()``)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"
