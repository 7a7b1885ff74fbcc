"""transformers ``Cache`` backends that really store packed low-bit KV codes.

``policy`` (window, flush, per-sequence alignment), ``storage`` (what a layer stores; the layouts of its
encoded units), ``layer`` (:class:`PackedKVLayer`, one decoder layer), ``cache`` (the Cache classes,
:func:`make_cache`), ``attention`` (the attention function registered with transformers and the cache's
hand-off to it), ``blockwise`` (a decode step straight from the packed storage), ``memory`` (memory
accounting).
"""

from oscar_core.cache.cache import FullPrecisionCache, QuantizedKVCache, make_cache, prepare_model
from oscar_core.cache.layer import PackedKVLayer
from oscar_core.cache.memory import FULL_PRECISION, QUANTIZED, WINDOW

__all__ = ["FULL_PRECISION", "QUANTIZED", "WINDOW", "FullPrecisionCache", "PackedKVLayer", "QuantizedKVCache",
           "make_cache", "prepare_model"]
