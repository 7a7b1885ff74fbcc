"""Which (level, arch, impl, batch, context) points a sweep measures, and which it must skip.

Pure arithmetic (no torch): the memory estimate of each point decides whether it fits the device (or
the user's budget) *before* anything is allocated; a skipped point is kept in the results with its
reason, so a sweep never silently shrinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from oscar_eval.speed import roofline as rf

# PERFORMANCE.md sweeps.
CONTEXT_SWEEP = (1024, 4096, 16384, 32768, 65536, 131072)
BATCH_SWEEP = (1, 8, 16, 32, 48, 64, 128)
BATCH_SWEEP_CONTEXT = 4096
# The paper's two settings (Qwen3-8B, H20): 128K context at batch 1 (latency), 4K at batch 48 (throughput).
PAPER_POINTS = ((1, 131072), (48, 4096))

#: Working set (bytes) the kernel-level timing cycles through, > 4x the H200's 60 MB L2.
MIN_WORKING_SET = 256 << 20
MAX_SETS = 256

KERNEL_BF16_IMPLS = (
    "bf16-sdpa-cudnn",
    "bf16-sdpa-flash",
    "bf16-flash-attn",
    "bf16-flashinfer",
    "bf16-dynamic-flash",
    "bf16-dynamic-eager",
)
# In order of importance: a time-limited sweep measures them in this order.
KERNEL_PACKED_IMPLS = ("oscar-int2", "kivi-int2", "oscar-ref", "kivi-ref")
KERNEL_IMPLS = KERNEL_BF16_IMPLS + KERNEL_PACKED_IMPLS
E2E_IMPLS = ("bf16-static-graph", "oscar-kernel-static", "kivi-kernel-static", "oscar-cache", "bf16-dynamic-eager",
             "kivi-cache")

# Context lengths above which the (slow, memory-hungry) reference paths are not run by default.
REF_MAX_TOKENS = 1 << 20  # batch * context


@dataclass(frozen=True)
class Shape:
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int = 1
    weight_bytes: int = 0
    vocab_size: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0


@dataclass
class Point:
    level: str  # "kernel" | "e2e"
    arch: str
    impl: str
    batch: int
    context: int
    est_bytes: int = 0
    skip: str | None = None
    tags: list[str] = field(default_factory=list)

    def key(self) -> tuple:
        return (self.level, self.arch, self.impl, self.batch, self.context)

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "arch": self.arch,
            "impl": self.impl,
            "batch": self.batch,
            "context": self.context,
            "est_bytes": self.est_bytes,
            "skip": self.skip,
            "tags": list(self.tags),
        }


def sweep_shapes(
    contexts: tuple[int, ...] | list[int] = CONTEXT_SWEEP,
    batches: tuple[int, ...] | list[int] = BATCH_SWEEP,
    batch_context: int = BATCH_SWEEP_CONTEXT,
    paper: bool = True,
) -> list[tuple[int, int, list[str]]]:
    """(batch, context, tags) of the two sweeps plus the paper's points, without duplicates, in order."""
    seen: dict[tuple[int, int], list[str]] = {}
    for c in contexts:
        seen.setdefault((1, int(c)), []).append("context-sweep")
    for b in batches:
        seen.setdefault((int(b), int(batch_context)), []).append("batch-sweep")
    if paper:
        for b, c in PAPER_POINTS:
            seen.setdefault((b, c), []).append("paper")
    return [(b, c, tags) for (b, c), tags in seen.items()]


def n_sets(set_bytes: float, min_working_set: int = MIN_WORKING_SET) -> int:
    """Input sets to cycle through so that the working set exceeds the L2 (at most MAX_SETS)."""
    if set_bytes <= 0:
        return 1
    return int(min(MAX_SETS, max(1, math.ceil(min_working_set / set_bytes))))


def kernel_mem_estimate(impl: str, batch: int, context: int, s: Shape) -> int:
    """Device bytes one kernel-level point needs at its peak (a deliberate over-estimate)."""
    bf16 = rf.kv_bytes("bf16", batch, context, s.num_kv_heads, s.head_dim)
    qo = 4 * batch * s.num_q_heads * s.head_dim * 2
    method = rf.method_of(impl)
    if impl.endswith("-ref"):
        packed = rf.kv_bytes(method, batch, context, s.num_kv_heads, s.head_dim)
        # encode: fp32 copy + fp32 scaled copy + uint8 codes + a bf16 source, one of K/V at a time;
        # decode per step: fp32 dequantized K and V plus their bf16 casts.
        return int(packed + bf16 * 6 + qo)
    if method != "bf16":
        packed = rf.kv_bytes(method, batch, context, s.num_kv_heads, s.head_dim)
        sets = n_sets(packed)
        # packing goes through the reference encoder on one bf16 source set
        return int(sets * packed + bf16 * 6 + qo)
    if impl.startswith("bf16-dynamic"):
        scores = batch * s.num_q_heads * (context + 256) * (4 + 2) if impl.endswith("eager") else 0
        rep = bf16 * (s.num_q_heads // s.num_kv_heads) if impl.endswith("eager") else 0
        return int(2 * bf16 + rep + scores + qo)  # torch.cat holds old and new cache at once
    sets = n_sets(bf16)
    return int(sets * bf16 + qo)


def e2e_mem_estimate(impl: str, batch: int, context: int, s: Shape, steady: bool = False) -> int:
    """Device bytes one end-to-end point needs: weights + every layer's cache + transients.

    ``steady=True``: what serving at this point holds (weights, cache, one step's activations), the
    quantity a memory budget limits; otherwise the profiler's peak, which adds the transients of
    filling a layer with random K/V (and, for packed caches, of quantizing it).
    """
    method = "bf16" if impl.startswith("bf16") else rf.method_of(impl)
    margin_ctx = context + 128
    per_layer_bf16 = rf.kv_bytes("bf16", batch, margin_ctx, s.num_kv_heads, s.head_dim)
    per_layer = (
        per_layer_bf16 if method == "bf16" else rf.kv_bytes(method, batch, margin_ctx, s.num_kv_heads, s.head_dim)
    )
    cache = s.num_layers * per_layer
    # One decode step: a dynamic cache concatenates (old + new layer); the reference packed cache
    # dequantizes a layer (fp32 + bf16); the kernel reads the packed cache in place.
    if impl == "bf16-dynamic-eager":
        step = per_layer_bf16
    elif impl.endswith("-cache") or impl.endswith("-ref"):
        step = per_layer_bf16 * 4
    else:
        step = 0
    act = batch * (4 * s.hidden_size + 3 * s.intermediate_size) * 2 + batch * s.vocab_size * 4 * 2
    if steady:
        return int(s.weight_bytes + cache + step + act)
    # Filling a layer: one random bf16 K/V pair; the reference quantizer adds fp32 temporaries; the
    # kernel arm packs in batch chunks of about 1 GiB.
    if impl.endswith("-kernel-static"):
        fill = min(per_layer_bf16, 4 << 30)
    else:
        fill = per_layer_bf16 * (6 if method != "bf16" else 1)
    return int(s.weight_bytes + cache + max(fill, step) + act + (256 << 20))


def plan(
    level: str,
    arch: str,
    shape: Shape,
    impls: list[str] | tuple[str, ...],
    points: list[tuple[int, int, list[str]]],
    available_bytes: int,
    budget_bytes: int | None = None,
    ref_max_tokens: int = REF_MAX_TOKENS,
) -> list[Point]:
    """One :class:`Point` per (impl, batch, context), with ``skip`` set where it would not fit.

    Every point must fit the device (``available_bytes``, the profiler's peak estimate); with
    ``budget_bytes`` it must also fit the budget (the steady serving estimate for end to end, the
    peak for the kernel level).
    """
    out: list[Point] = []
    for batch, context, tags in points:
        for impl in impls:
            if level == "kernel":
                est = steady = kernel_mem_estimate(impl, batch, context, shape)
            else:
                est = e2e_mem_estimate(impl, batch, context, shape)
                steady = e2e_mem_estimate(impl, batch, context, shape, steady=True)
            p = Point(level, arch, impl, batch, context, est, None, list(tags))
            if est > available_bytes:
                p.skip = (f"needs about {est / 2**30:.1f} GiB, more than device memory "
                          f"({available_bytes / 2**30:.1f} GiB free)")
            elif budget_bytes and steady > budget_bytes:
                p.skip = (f"needs about {steady / 2**30:.1f} GiB, more than the memory budget "
                          f"({budget_bytes / 2**30:.1f} GiB)")
            elif impl.endswith("-ref") and batch * context > ref_max_tokens:
                p.skip = (
                    f"reference path skipped above {ref_max_tokens} cached tokens per layer "
                    f"(batch*context = {batch * context}); use the kernel"
                )
            out.append(p)
    return out


def max_batch_under_budget(
    budget_bytes: int, fixed_bytes: int, per_sequence_bytes: float, cap: int = 4096
) -> int:
    """Largest batch b with fixed + b * per_sequence <= budget (0 if not even one fits)."""
    if per_sequence_bytes <= 0:
        raise ValueError("per_sequence_bytes must be positive")
    room = budget_bytes - fixed_bytes
    if room < per_sequence_bytes:
        return 0
    return int(min(cap, room // per_sequence_bytes))


def order_points(points: list[Point], impls: list[str] | tuple[str, ...]) -> list[Point]:
    """Measurement order for time-limited sweeps: the paper's settings first, then smaller before larger
    points, the impls of one point together in ``impls`` order."""
    rank = {impl: i for i, impl in enumerate(impls)}
    return sorted(points, key=lambda p: ("paper" not in p.tags, p.batch * p.context, p.batch, rank.get(p.impl, 99)))


def e2e_per_sequence_bytes(method: str, context: int, s: Shape) -> float:
    """Cache bytes of one sequence over all layers, plus its per-token activations at decode."""
    kv = s.num_layers * rf.kv_bytes(method, 1, context + 128, s.num_kv_heads, s.head_dim)
    act = (4 * s.hidden_size + 3 * s.intermediate_size) * 2 + s.vocab_size * 4 * 2
    return kv + act
