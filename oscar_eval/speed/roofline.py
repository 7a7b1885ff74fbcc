"""Bytes a decode step must read (and write), and the roofline time they imply.

Decode is memory-bound: the floor of one step is (bytes that must move) / (bandwidth), where the
bandwidth is measured once per run as a device-to-device copy (bytes read + bytes written over time).
This module is pure arithmetic, no torch, so it is unit-tested by hand (tests/speed).

Per token per KV head at head dim D with ``b``-bit codes and groups of G (PERFORMANCE.md):

* BF16: K + V = 2 * D * 2 B (512 B at D = 128).
* OScaR: K codes D*b/8 + K scale/zero 2 * 2 B per channel per G tokens (D*4/G) + V codes D*b/8 +
  V scale/zero 2 * 2 B per G channels of one token (D*4/G) + one fp32 token norm shared by all KV
  heads of the layer (4/H_kv): 32 + 16 + 32 + 16 + 0.5 = 96.5 B at D = 128, G = 32, H_kv = 8.
* KIVI: the same without the norm (96 B); its value window is a sliding one, so the last R values
  of each sequence are always BF16.

Tokens not yet flushed (the residual window) are read in BF16. A step also reads the query and
writes the output (``batch * H_q * D * 2`` B each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BF16 = 2
FP16 = 2
FP32 = 4

#: Methods the byte model knows; "bf16" is every full-precision baseline.
PACKED_METHODS = ("oscar", "kivi")


@dataclass(frozen=True)
class QuantLayout:
    """The storage parameters that decide the packed bytes."""

    bits: int = 2
    group_size: int = 32
    residual_length: int = 128
    token_norm: bool = True  # OScaR's fp32 per-token norm
    value_window: str = "block"  # "block" (OScaR) or "token" (KIVI sliding window)


def layout_for(method: str, bits: int = 2, group_size: int = 32, residual_length: int = 128) -> QuantLayout:
    if method == "oscar":
        return QuantLayout(bits, group_size, residual_length, token_norm=True, value_window="block")
    if method == "kivi":
        return QuantLayout(bits, group_size, residual_length, token_norm=False, value_window="token")
    raise ValueError(f"no packed byte model for method {method!r} (known: {', '.join(PACKED_METHODS)})")


def method_of(impl: str) -> str:
    """``"oscar-int2"`` -> ``"oscar"``, ``"bf16-sdpa-cudnn"`` -> ``"bf16"``."""
    head = impl.split("-", 1)[0]
    return head if head in PACKED_METHODS else "bf16"


def bf16_bytes_per_token_head(head_dim: int) -> float:
    return 2 * head_dim * BF16


def packed_key_bytes_per_token_head(head_dim: int, lay: QuantLayout) -> float:
    return head_dim * lay.bits / 8 + head_dim * 2 * FP16 / lay.group_size


def packed_value_bytes_per_token_head(head_dim: int, lay: QuantLayout) -> float:
    return head_dim * lay.bits / 8 + (head_dim / lay.group_size) * 2 * FP16


def packed_bytes_per_token_head(head_dim: int, num_kv_heads: int, lay: QuantLayout) -> float:
    """Fully quantized K + V of one token and one KV head, its share of the token norm included."""
    norm = FP32 / num_kv_heads if lay.token_norm else 0.0
    return packed_key_bytes_per_token_head(head_dim, lay) + packed_value_bytes_per_token_head(head_dim, lay) + norm


def split_tokens(context: int, lay: QuantLayout, decode: bool = True) -> tuple[int, int, int, int]:
    """(quantized keys, bf16 keys, quantized values, bf16 values) for ``context`` cached tokens.

    Keys are flushed as whole R-token blocks. ``decode=True`` (the speed benchmark's state): the
    cache as a decode step sees it right after appending its token, when the window holds 1..R
    tokens, so ``floor((T-1)/R)*R`` keys are quantized (at T = 128K: 130944 quantized, 128 in the
    window). ``decode=False``: the state after a prompt of T tokens, ``floor(T/R)*R`` (as
    ``MethodSpec.bits_per_element``). Values follow the keys (block flush) or keep a sliding window of
    the last R (token flush).
    """
    r = lay.residual_length
    if r <= 0:
        kq = context
    elif decode:
        kq = (max(context - 1, 0) // r) * r
    else:
        kq = (context // r) * r
    vq = max(context - r, 0) if lay.value_window == "token" else kq
    return kq, context - kq, vq, context - vq


def kv_bytes(
    method: str,
    batch: int,
    context: int,
    num_kv_heads: int,
    head_dim: int,
    lay: QuantLayout | None = None,
    decode: bool = True,
) -> float:
    """Bytes of one layer's KV cache holding ``context`` tokens for ``batch`` sequences."""
    if method == "bf16":
        return batch * context * num_kv_heads * bf16_bytes_per_token_head(head_dim)
    lay = lay or layout_for(method)
    kq, kf, vq, vf = split_tokens(context, lay, decode)
    per_head = (
        kq * packed_key_bytes_per_token_head(head_dim, lay)
        + vq * packed_value_bytes_per_token_head(head_dim, lay)
        + (kf + vf) * head_dim * BF16
    )
    norms = kq * FP32 if lay.token_norm else 0
    return batch * (num_kv_heads * per_head + norms)


def attention_step_bytes(
    method: str,
    batch: int,
    context: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    lay: QuantLayout | None = None,
) -> float:
    """Fewest bytes one decode-attention call of one layer must move: KV read + query read + output write."""
    q_and_o = 2 * batch * num_q_heads * head_dim * BF16
    return kv_bytes(method, batch, context, num_kv_heads, head_dim, lay) + q_and_o


def model_step_bytes(
    weight_bytes: float,
    method: str,
    batch: int,
    context: int,
    num_layers: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    lay: QuantLayout | None = None,
) -> float:
    """Floor of one full-model decode step: every weight once + every layer's attention bytes."""
    per_layer = attention_step_bytes(method, batch, context, num_q_heads, num_kv_heads, head_dim, lay)
    return weight_bytes + num_layers * per_layer


def roofline_us(nbytes: float, bandwidth_gbps: float) -> float:
    """Time in microseconds to move ``nbytes`` at ``bandwidth_gbps`` (GB/s, 1e9 B/s)."""
    if bandwidth_gbps <= 0:
        raise ValueError("bandwidth must be positive")
    return nbytes / (bandwidth_gbps * 1e3)


def achieved_gbps(nbytes: float, us: float) -> float:
    return nbytes / (us * 1e3) if us > 0 else 0.0


def roofline_fraction(nbytes: float, us: float, bandwidth_gbps: float) -> float:
    """Roofline time over measured time: 1.0 means running at the copy bandwidth."""
    if us <= 0 or not math.isfinite(us):
        return 0.0
    return roofline_us(nbytes, bandwidth_gbps) / us
