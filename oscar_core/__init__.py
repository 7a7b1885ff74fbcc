"""oscar_core: the KV-cache compressor (OScaR and baselines), with no dependency on benchmark code.

    import oscar_core as oc
    spec = oc.get_method("oscar")                        # frozen spec, paper defaults
    with oc.quantized(model, "oscar") as cache:          # the model is prepared inside the block only
        out = model.generate(**inputs, **oc.cache_kwargs(cache))
    cache = oc.make_cache(model, "oscar")                # prepares the model for good, returns a Cache
    k_hat = oc.reference.roundtrip_keys(spec, k)         # reference numerics, tokens a multiple of 32
"""

from oscar_core import reference
from oscar_core.compat import cache_kwarg, cache_kwargs
from oscar_core.methods import MethodConfigError, MethodSpec, get_method, list_methods, register_method

__version__ = "0.1.0"

__all__ = [
    "MethodConfigError",
    "MethodSpec",
    "bits_per_element_for_model",
    "cache_kwarg",
    "cache_kwargs",
    "get_method",
    "list_methods",
    "make_cache",
    "prepare_model",
    "quantized",
    "reference",
    "register_method",
]


def __getattr__(name: str):
    # The cache pulls in transformers; import it only when asked for.
    if name in ("make_cache", "prepare_model", "QuantizedKVCache"):
        from oscar_core import cache

        return getattr(cache, name)
    if name == "quantized":
        from oscar_core.scoped import quantized

        return quantized
    if name == "bits_per_element_for_model":
        from oscar_core import model

        return model.bits_per_element_for_model
    raise AttributeError(f"module 'oscar_core' has no attribute {name!r}")
