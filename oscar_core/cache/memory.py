"""Memory accounting of the caches: bytes really held, per component and per layer kind, and what
transformers' default BF16 cache would hold for the same tokens (``memory_report``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from oscar_core.cache.policy import SLIDING, held_tokens

if TYPE_CHECKING:
    from oscar_core.cache.storage import Stream

#: ``layer_policy`` entries: what one layer's cache stores.
QUANTIZED, WINDOW, FULL_PRECISION = "quantized", "full_precision_window", "full_precision"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def packed_layer_bytes(k: Stream, v: Stream, pending: tuple[torch.Tensor, ...] | None) -> dict[str, int]:
    """Bytes a packed layer holds (its streams, a held prompt), per component (allocated capacity,
    not only the used part)."""
    out: dict[str, int] = {}
    for tag, s in (("k", k), ("v", v)):
        for name, t in s.units.items():
            out[f"{tag}_{name}"] = _nbytes(t)
        out[f"{tag}_window"] = 0 if s.buf is None else _nbytes(s.buf)
        if s.ov_vals is not None:
            out[f"{tag}_overrides"] = _nbytes(s.ov_vals)
    if pending is not None:
        out["pending_prompt"] = sum(_nbytes(t) for t in pending)
    return out


def dense_layer_bytes(layer) -> tuple[int, int, int]:
    """(bytes held, BF16-equivalent bytes, tokens held) of a transformers layer with dense K/V."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not getattr(layer, "is_initialized", False) or keys is None or keys.numel() == 0:
        return 0, 0, 0
    return _nbytes(keys) + _nbytes(values), 2 * (keys.numel() + values.numel()), keys.shape[-2]


def _per_kind(kinds: list[str], policies: list[str], sizes: list[tuple[int, int, int]]) -> dict[str, dict]:
    """memory_report's ``layers``: per layer kind, its storage policy, bytes, BF16 bytes, tokens held."""
    out: dict[str, dict] = {}
    for kind, policy, (held, bf16, tokens) in zip(kinds, policies, sizes, strict=True):
        entry = out.setdefault(kind, {"layers": 0, "storage": policy, "bytes": 0, "bf16_equivalent_bytes": 0,
                                      "tokens": 0})
        entry["layers"] += 1
        entry["bytes"] += held
        entry["bf16_equivalent_bytes"] += bf16
        entry["tokens"] = max(entry["tokens"], tokens)
    return out


def _report(method: str, components: dict[str, int], sizes: list[tuple[int, int, int]], seq_len: int,
            kinds: list[str], policies: list[str]) -> dict[str, object]:
    held = sum(components.values())
    bf16 = sum(s[1] for s in sizes)
    return {"method": method, "bytes": held, "components": components, "bf16_equivalent_bytes": bf16,
            "compression": (bf16 / held) if held else None, "seq_len": seq_len,
            "layers": _per_kind(kinds, policies, sizes)}


def quantized_cache_report(cache) -> dict[str, object]:
    """:meth:`QuantizedKVCache.memory_report <oscar_core.cache.cache.QuantizedKVCache.memory_report>`."""
    components: dict[str, int] = {}
    sizes = []
    for kind, policy, layer in zip(cache.layer_types, cache.layer_policy, cache.layers, strict=True):
        if policy != QUANTIZED:  # a transformers layer with dense K/V
            size = dense_layer_bytes(layer)
            components["sliding_window_kv"] = components.get("sliding_window_kv", 0) + size[0]
            sizes.append(size)
            continue
        held = 0
        for name, n in layer.memory_bytes().items():
            components[name] = components.get(name, 0) + n
            held += n
        bf16 = tokens = 0
        if layer.pad and cache.head_shape is not None:
            heads, dim = cache.head_shape
            lengths = [layer.total_len - p for p in layer.pad]
            window = cache.sliding_window if kind == SLIDING else None
            bf16 = sum(held_tokens(kind, n, window, False) for n in lengths) * heads * dim * 2 * 2
            tokens = max(lengths)
        sizes.append((held, bf16, tokens))
    seq_len = max((layer.get_seq_length() for layer in cache.layers), default=0)
    return _report(cache.spec.name, components, sizes, seq_len, cache.layer_types, cache.layer_policy)


def full_precision_report(cache) -> dict[str, object]:
    """:meth:`FullPrecisionCache.memory_report <oscar_core.cache.cache.FullPrecisionCache.memory_report>`."""
    sizes = [dense_layer_bytes(layer) for layer in cache.layers]
    return _report("fp16", {"kv": sum(s[0] for s in sizes)}, sizes, cache.get_seq_length(),
                   cache.layer_types, cache.layer_policy)
