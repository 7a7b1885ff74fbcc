"""The attention function registered with transformers for packed-KV caches.

``prepare_model`` sets the text decoder's attention implementation to :data:`ATTN_NAME`. For a
layer whose cache is a :class:`~oscar_core.cache.PackedKVLayer`, the function rotates the query
into the method's attention basis, reads the left padding from the mask once (so the prompt can be
quantized per sequence), asks the layer for this step's K/V and attends with PyTorch SDPA
semantics. Modules without such a cache (e.g. a default cache) get plain SDPA.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

ATTN_NAME = "oscar_kv"


def left_padding_from_mask(mask: torch.Tensor | None, batch: int, kv_len: int) -> list[int]:
    """Left-padding length per sequence from a 4D prompt mask (bool: True = attend, or additive)."""
    if mask is None:
        return [0] * batch
    if mask.dtype == torch.bool:
        allowed = mask[:, 0, -1, :]
    else:
        allowed = mask[:, 0, -1, :] == 0
    allowed = allowed.expand(batch, allowed.shape[-1])[:, -kv_len:].cpu()
    pads = []
    for b in range(batch):
        row = allowed[b]
        n_pad = int((~row).sum())
        if bool(row[:n_pad].any()) or not bool(row[n_pad:].all()):
            raise ValueError(
                "packed KV caches need left padding (tokenizer.padding_side='left'); sequence "
                f"{b} of the batch has masked positions that are not a left-padding prefix"
            )
        pads.append(n_pad)
    return pads


def packed_kv_attention(module, query, key, value, attention_mask, **kwargs):
    layer = module.__dict__.pop("_oscar_kv_layer", None)
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
    key, value = layer.attention_inputs(key, value, pad)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register the attention and mask functions under :data:`ATTN_NAME` (idempotent)."""
    AttentionInterface.register(ATTN_NAME, packed_kv_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
