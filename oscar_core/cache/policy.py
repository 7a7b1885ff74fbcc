"""Window and flush policy, and per-sequence alignment (METHODS.md, shared by all methods).

Window and flush:

* The prompt attends over its own unquantized K/V. Afterwards ``floor(T/R)*R`` prompt tokens are
  quantized and ``T mod R`` stay in the full-precision window (for KIVI's sliding value window, the
  last ``min(T, R)`` values stay).
* While decoding each new token enters the window; when the window would exceed ``R`` tokens its
  oldest ``R`` tokens are quantized as one block ("block flush"), so the step that fills the window
  attends all ``R`` in full precision, as official KIVI's keys. The sliding value window ("token
  flush") attends the last ``R + 1`` values at each decode step and quantizes its oldest one when the
  next token arrives (official KIVI quantizes it right after the step's attention: the same numbers).
  Every token is quantized exactly once.

Per-sequence alignment. With left padding, each sequence's tokens are stored left-aligned from its
first real token, so its quantization groups are exactly those of the sequence run alone and padded
positions never enter a group. The padded timeline transformers expects is rebuilt when K/V are
handed to attention (pads as zeros, masked anyway). The padding is read from the attention mask the
first time the layer attends (:func:`left_padding_from_mask`).
"""

from __future__ import annotations

import torch

from oscar_core.methods.base import MethodSpec

#: layer kinds, as transformers' ``config.layer_types`` names them (see :mod:`oscar_core.model`)
FULL, SLIDING = "full_attention", "sliding_attention"


def stream_units(spec: MethodSpec) -> tuple[int, int]:
    """Tokens per encoded unit of the key stream and of the value stream."""
    r = spec.residual_length
    return spec.block_tokens, (1 if (spec.value_flush == "token" or r == 0) else r)


def held_tokens(layer_type: str, seq_len: int, sliding_window: int | None, quantize_sliding: bool) -> int:
    """Tokens a layer's cache holds after a step at ``seq_len`` tokens: a full-precision sliding window
    keeps the last ``W - 1`` (transformers' ``DynamicSlidingWindowLayer``); every other layer keeps all."""
    if layer_type == SLIDING and not quantize_sliding and sliding_window:
        return min(seq_len, sliding_window - 1)
    return seq_len


def prompt_quantized(length: int, unit: int, window: int) -> int:
    """How many of a ``length``-token prompt a stream quantizes at commit (the rest stays in its window)."""
    if window == 0:
        return length
    if unit == window:  # block flush
        return (length // window) * window
    return max(length - window, 0)  # sliding window


def window_limit(unit: int, window: int) -> int:
    """The most tokens a stream's window holds before its oldest unit is flushed.

    A sliding (token-flush) window attends R + 1 values, as official KIVI does: it quantizes the oldest
    value *after* the step's attention; here that happens at the next append, before anything could
    attend it, which is numerically the same.
    """
    return window + 1 if (unit == 1 and window > 0) else window


def check_crop(window_lengths: list[int], remove: int) -> None:
    """Raise unless ``remove`` tokens can come off every sequence's window (quantized ones cannot)."""
    if any(n < remove for n in window_lengths):
        raise ValueError(
            f"cannot crop {remove} tokens: only {min(window_lengths)} are in the full-precision window and "
            "quantized tokens cannot be un-quantized; crop at most the window"
        )


def timeline_index(pad: list[int], quantized: list[int], lengths: list[int], q_width: int,
                   total_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each padded-timeline position reads from in ``cat(quantized slots, window)``.

    ``(index [B, total_len] int64, valid [B, total_len] bool)``: sequence ``b``'s real tokens start at
    ``pad[b]``; its first ``quantized[b]`` come from the quantized slots (``q_width`` of them per row),
    the rest from the window. Pads are not valid (index 0).
    """
    batch = len(pad)
    index = torch.zeros(batch, total_len, dtype=torch.long)
    valid = torch.zeros(batch, total_len, dtype=torch.bool)
    for b in range(batch):
        if lengths[b] != total_len - pad[b]:
            raise RuntimeError(f"internal cache inconsistency: sequence {b} holds {lengths[b]} tokens")
        i = torch.arange(lengths[b])
        index[b, pad[b] :] = torch.where(i < quantized[b], i, q_width + i - quantized[b])
        valid[b, pad[b] :] = True
    return index, valid


def override_index(pad: list[int], rows: list[int], positions: list[int],
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, padded-timeline columns) of full-precision overrides kept at per-sequence positions."""
    cols = [pad[b] + p for b, p in zip(rows, positions, strict=True)]
    return torch.tensor(rows, device=device), torch.tensor(cols, device=device)


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
