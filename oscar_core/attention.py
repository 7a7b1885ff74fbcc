"""The attention function registered with transformers for packed-KV caches.

``prepare_model`` sets the text decoder's attention implementation to :data:`ATTN_NAME`. For a
layer whose cache is a :class:`~oscar_core.cache.PackedKVLayer`, the function rotates the query
into the method's attention basis, reads the left padding from the mask once (so the prompt can be
quantized per sequence), and attends with PyTorch SDPA semantics: a decode step (one query token)
straight from the packed storage (:mod:`oscar_core.blockwise`), anything else over the K/V the layer
rebuilds on the padded timeline. Modules without such a cache (e.g. a default cache) get plain SDPA.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from oscar_core.blockwise import decode_attention

ATTN_NAME = "oscar_kv"


def left_padding_from_mask(mask: torch.Tensor | None, batch: int, kv_len: int) -> list[int]:
    """Left-padding length per sequence from a 4D prompt mask (bool: True = attend, or additive)."""
    if mask is None:
        return [0] * batch
    allowed = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0  # [B or 1, Q, K]
    last = allowed[:, -1, :]
    if allowed.shape[-2] == allowed.shape[-1] > 1:
        # The last row alone would read a sliding-window mask's out-of-window prefix as padding. In a
        # square prompt mask a real token also attends itself and not its successor (pad rows that old
        # torch versions unmask entirely attend their successor, so they still count as padding).
        nxt = torch.zeros_like(last)
        nxt[..., :-1] = allowed.diagonal(offset=1, dim1=-2, dim2=-1)
        last = last | (allowed.diagonal(dim1=-2, dim2=-1) & ~nxt)
    allowed = last
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
