"""The attention function registered with transformers for packed-KV caches, and the hand-off to it.

``prepare_model`` sets the text decoder's attention implementation to :data:`ATTN_NAME`. transformers
calls the cache's ``update`` and then the attention function with no link between the two, so the
cache *hands off* the layer it just updated on the attention module (:func:`hand_off`), and the
function takes it (:func:`take_handoff`). For a layer so handed off
(a :class:`~oscar_core.cache.layer.PackedKVLayer`), the function rotates the query into the method's
attention basis, reads the left padding from the mask once (so the prompt can be quantized per
sequence), and attends with PyTorch SDPA semantics: a decode step (one query token) straight from the
packed storage (:mod:`oscar_core.cache.blockwise`), anything else over the K/V the layer rebuilds on the
padded timeline. Modules without such a cache (e.g. a default cache) get plain SDPA.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from oscar_core.cache.blockwise import decode_attention
from oscar_core.cache.policy import left_padding_from_mask

ATTN_NAME = "oscar_kv"

#: the attention module's attribute that carries the hand-off (instance ``__dict__`` only)
_HANDOFF = "_oscar_kv_layer"


def hand_off(module: torch.nn.Module, layer) -> None:
    """Give ``layer`` to the attention call that follows on ``module``."""
    module.__dict__[_HANDOFF] = layer  # what nn.Module.__setattr__ does for a plain object, without its checks


def take_handoff(module: torch.nn.Module):
    """The layer handed off to this attention call (None: none), removed so it is taken once."""
    return module.__dict__.pop(_HANDOFF, None)


def check_packed_attention(module: torch.nn.Module, layer, layer_idx: int, decode_handoff: bool) -> None:
    """Raise unless this layer's attention runs through the packed-KV attention function.

    The history lives only in the cache; any other attention function attends just the K/V that
    ``update`` returns (the new tokens), silently. Two signs: the attention implementation the module
    will dispatch on is not ``oscar_kv`` (e.g. ``model.config._attn_implementation`` changed after
    ``make_cache``), or the previous hand-off to this module was never taken (an attention function
    that is not ours ran in between) while the prompt is still uncommitted or it was a decode step's.
    """
    impl = getattr(getattr(module, "config", None), "_attn_implementation", ATTN_NAME)
    stale = module.__dict__.get(_HANDOFF) is layer and (layer.has_pending_prompt or decode_handoff)
    if impl == ATTN_NAME and not stale:
        return
    why = (f"its attention implementation is {impl!r}, not {ATTN_NAME!r}" if impl != ATTN_NAME else
           "the previous step's keys/values were never taken by the packed-KV attention function")
    raise RuntimeError(
        f"oscar_core: layer {layer_idx} would attend without its packed KV history: {why}. The attention "
        "implementation was probably changed after make_cache (e.g. model.config._attn_implementation); "
        "another attention function sees only the new tokens. Call oscar_core.make_cache(model, ...) again "
        "after changing it (it sets the implementation back) and start the generation over."
    )


def packed_kv_attention(module, query, key, value, attention_mask, **kwargs):
    layer = take_handoff(module)
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    pad = None
    if layer.has_pending_prompt:
        pad = left_padding_from_mask(attention_mask, key.shape[0], key.shape[-2])
    kernel = getattr(layer, "kernel_attention", None)
    if kernel is not None:  # one decode step straight from the packed cache (oscar_core.kernel_cache)
        out = kernel(query, kwargs.get("scaling"))
        if out is not None:
            return out, None
    query = layer.spec.query_to_attention(query)
    if pad is not None and layer.spec.observes_prompt_queries:
        layer.prompt_queries = query
    plain = not (kwargs.get("dropout") or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None)
    if pad is None and plain and layer.blockwise_decode:  # a decode step: attend from the packed storage
        out = decode_attention(layer, query, attention_mask, kwargs.get("scaling"))
        if out is not None:
            return out, None
    key, value = layer.attention_inputs(key, value, pad)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register the attention and mask functions under :data:`ATTN_NAME` (idempotent)."""
    AttentionInterface.register(ATTN_NAME, packed_kv_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
