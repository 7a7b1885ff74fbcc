"""Kernel level: one attention layer's decode step, packed methods against BF16 baselines.

Every implementation is built by a ``build_<impl>`` function that allocates its inputs for one
(batch, context) point and returns a :class:`Case`: a callable doing ``calls`` attention calls,
cycling over enough input sets that the working set exceeds the L2 (so no arm is timed out of
cache), and the bytes it holds. An implementation that cannot run here (a package not installed, a
kernel not built) raises :class:`Unavailable`, which the runner records as a skipped row.

Decode attention with GQA has one query token per sequence, so the G = H_q / H_kv query heads of a
KV head are folded into the query-length axis (``[B, H_kv, G, D]`` against ``[B, H_kv, T, D]``, no
mask): the standard FlashDecoding trick, which lets every SDPA backend run without repeating K/V.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from oscar_eval.speed import plan as pl
from oscar_eval.speed import roofline as rf
from oscar_eval.speed.case import Case, Unavailable
from oscar_eval.speed.timing import burst_us


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _rand(shape, device, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# BF16 baselines on a preallocated cache
# ----------------------------------------------------------------------------------------------


def _fold_q(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """``[B, H_q, 1, D]`` -> ``[B, H_kv, G, D]`` (query heads of one KV head are consecutive)."""
    b, hq, _, d = q.shape
    return q.reshape(b, num_kv_heads, hq // num_kv_heads, d)


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def build_bf16_sdpa(backend: str, batch: int, context: int, s: pl.Shape, device) -> Case:
    """PyTorch SDPA on a preallocated BF16 cache, one backend forced.

    Two query layouts are tried (mean of 5 calls after one, ``timing.burst_us``: the row's
    ``layout_probe_us``) and the faster kept (the row's ``layout``): ``fold`` (the GQA group
    as query rows, ``[B, H_kv, G, D]``) and ``gqa`` (``[B, H_q, 1, D]`` with ``enable_gqa=True``).
    Backends differ in which one they decode fast (cuDNN, for instance, has a split-KV decode path for
    one query row only).
    """
    from torch.nn.attention import sdpa_kernel

    g = s.num_q_heads // s.num_kv_heads
    one = rf.kv_bytes("bf16", batch, context, s.num_kv_heads, s.head_dim)
    n = pl.n_sets(one)
    sets = []
    for _ in range(n):
        k = _rand((batch, s.num_kv_heads, context, s.head_dim), device)
        v = _rand((batch, s.num_kv_heads, context, s.head_dim), device)
        q = _rand((batch, s.num_q_heads, 1, s.head_dim), device)
        sets.append((q, k, v))
    be = _sdpa_backend(backend)

    def call(layout: str, q, k, v):
        if layout == "fold":
            return F.scaled_dot_product_attention(_fold_q(q, s.num_kv_heads), k, v)
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    probes: dict[str, Any] = {}
    for layout in ("fold", "gqa"):
        try:
            with sdpa_kernel(be):
                probes[layout] = round(burst_us(lambda lay=layout: call(lay, *sets[0]), 5, warmup=1), 2)
        except RuntimeError as exc:
            probes[layout] = f"unsupported: {str(exc).splitlines()[0][:160]}"
    timed = {k: v for k, v in probes.items() if isinstance(v, float)}
    if not timed:
        raise Unavailable(f"SDPA {backend} backend runs neither query layout here: {probes}")
    layout = min(timed, key=timed.get)

    def fn():
        with sdpa_kernel(be):
            for q, k, v in sets:
                call(layout, q, k, v)

    def check() -> float:
        q, k, v = sets[0]
        with sdpa_kernel(be):
            out = call(layout, q, k, v).float().reshape(batch, s.num_kv_heads, g, s.head_dim)
        ref = _ref_attention(_fold_q(q, s.num_kv_heads), k, v)
        return float((out - ref).norm() / ref.norm())

    return Case(fn, n, int(one), note=f"{n} input sets cycled; layout {layout}", check=check,
                info={"layout": layout, "layout_probe_us": probes})


def _ref_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float32 attention of folded queries ``[B, H_kv, G, D]`` over ``[B, H_kv, T, D]``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1)
    return p @ v.float()


def build_bf16_flash_attn(batch: int, context: int, s: pl.Shape, device) -> Case:
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception as exc:
        raise Unavailable(f"flash-attn not importable ({exc.__class__.__name__})") from None
    one = rf.kv_bytes("bf16", batch, context, s.num_kv_heads, s.head_dim)
    n = pl.n_sets(one)
    # The paper's FlashDecoding-v2 baseline: flash_attn_with_kvcache on a [B, T, H_kv, D] cache.
    sets = []
    seqlens = torch.full((batch,), context, dtype=torch.int32, device=device)
    for _ in range(n):
        k = _rand((batch, context, s.num_kv_heads, s.head_dim), device)
        v = _rand((batch, context, s.num_kv_heads, s.head_dim), device)
        q = _rand((batch, 1, s.num_q_heads, s.head_dim), device)
        sets.append((q, k, v))

    def fn():
        for q, k, v in sets:
            flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens, causal=True)

    return Case(fn, n, int(one), note=f"{n} input sets cycled; flash_attn_with_kvcache")


def build_bf16_flashinfer(batch: int, context: int, s: pl.Shape, device) -> Case:
    try:
        import flashinfer
    except Exception as exc:
        raise Unavailable(f"flashinfer not importable ({exc.__class__.__name__})") from None
    page = 16
    one = rf.kv_bytes("bf16", batch, context, s.num_kv_heads, s.head_dim)
    n = pl.n_sets(one)
    pages_per_seq = math.ceil(context / page)
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    indptr = torch.arange(0, batch + 1, device=device, dtype=torch.int32) * pages_per_seq
    indices = torch.arange(batch * pages_per_seq, device=device, dtype=torch.int32)
    last = torch.full((batch,), context - (pages_per_seq - 1) * page, device=device, dtype=torch.int32)
    wrapper.plan(indptr, indices, last, s.num_q_heads, s.num_kv_heads, s.head_dim, page,
                 q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    sets = []
    for _ in range(n):
        kv = _rand((batch * pages_per_seq, 2, page, s.num_kv_heads, s.head_dim), device)
        q = _rand((batch, s.num_q_heads, s.head_dim), device)
        sets.append((q, kv))

    def fn():
        for q, kv in sets:
            wrapper.run(q, kv)

    return Case(fn, n, int(one), note=f"{n} input sets cycled; paged (page {page}), tensor-core decode")


def build_bf16_dynamic(attn: str, batch: int, context: int, s: pl.Shape, device) -> Case:
    """The paper's style of baseline: transformers' DynamicCache (torch.cat every step), eager launches."""
    from transformers import DynamicCache

    g = s.num_q_heads // s.num_kv_heads
    cache = DynamicCache()
    cache.update(_rand((batch, s.num_kv_heads, context, s.head_dim), device),
                 _rand((batch, s.num_kv_heads, context, s.head_dim), device), 0)
    k_new = _rand((batch, s.num_kv_heads, 1, s.head_dim), device)
    v_new = _rand((batch, s.num_kv_heads, 1, s.head_dim), device)
    q = _rand((batch, s.num_q_heads, 1, s.head_dim), device)
    scale = 1.0 / math.sqrt(s.head_dim)

    if attn == "flash":
        # FlashDecoding-class kernel, as the paper's flash_attn_with_kvcache (cuDNN would re-plan for
        # every new length: tens of ms per step).
        from torch.nn.attention import sdpa_kernel

        qf = _fold_q(q, s.num_kv_heads)
        be = _sdpa_backend("flash")

        def attend(k, v):
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(qf, k, v)
    else:  # transformers' eager_attention_forward: repeat_kv, matmul, fp32 softmax, matmul

        def attend(k, v):
            kr = k[:, :, None].expand(batch, s.num_kv_heads, g, k.shape[2], s.head_dim).reshape(
                batch, s.num_q_heads, k.shape[2], s.head_dim)
            vr = v[:, :, None].expand(batch, s.num_kv_heads, g, v.shape[2], s.head_dim).reshape(
                batch, s.num_q_heads, v.shape[2], s.head_dim)
            w = torch.matmul(q, kr.transpose(2, 3)) * scale
            w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            return torch.matmul(w, vr)

    def fn():
        k, v = cache.update(k_new, v_new, 0)
        attend(k, v)

    one = rf.kv_bytes("bf16", batch, context, s.num_kv_heads, s.head_dim)
    return Case(fn, 1, int(one), use_graph=False, state=cache,
                note=f"DynamicCache torch.cat append + {attn} attention, eager (the cache grows 1 token per call)")


# ----------------------------------------------------------------------------------------------
# Packed methods
# ----------------------------------------------------------------------------------------------


def _split(method: str, context: int) -> tuple[int, int, int, int]:
    return rf.split_tokens(context, rf.layout_for(method), decode=True)


def _encode_layer(method: str, batch: int, context: int, s: pl.Shape, device, spec=None):
    """Random attention-basis K/V of one layer, encoded by the reference encoder of ``method``.

    Returns (spec, k_block, v_block, k_window, v_window, q) with blocks as the cache stores them.
    """
    import oscar_core as oc

    spec = spec or oc.get_method(method)
    kq, kf, vq, vf = _split(method, context)
    shape = (batch, s.num_kv_heads)
    k_block = spec.encode_keys(_rand((*shape, kq, s.head_dim), device)) if kq else None
    torch.cuda.empty_cache()
    v_block = spec.encode_values(_rand((*shape, vq, s.head_dim), device)) if vq else None
    torch.cuda.empty_cache()
    k_win = _rand((*shape, kf, s.head_dim), device)
    v_win = _rand((*shape, vf, s.head_dim), device)
    q = _rand((batch, s.num_q_heads, 1, s.head_dim), device)
    return spec, k_block, v_block, k_win, v_win, q


def _block_bytes(block: dict[str, torch.Tensor] | None) -> int:
    return 0 if block is None else _nbytes(*block.values())


def build_packed_ref(method: str, batch: int, context: int, s: pl.Shape, device) -> Case:
    """The pure-PyTorch reference path: dequantize the packed blocks, then SDPA (what the cache does)."""
    spec, kb, vb, kw, vw, q = _encode_layer(method, batch, context, s, device)
    qf = _fold_q(q, s.num_kv_heads)

    def fn():
        qa = spec.query_to_attention(qf)
        k = torch.cat([spec.decode_keys(kb, torch.bfloat16), kw], dim=2) if kb is not None else kw
        v = torch.cat([spec.decode_values(vb, torch.bfloat16), vw], dim=2) if vb is not None else vw
        F.scaled_dot_product_attention(qa, k, v)

    held = _block_bytes(kb) + _block_bytes(vb) + _nbytes(kw, vw)
    return Case(fn, 1, held, note="reference: dequantize to bf16 (oscar_core numerics) + SDPA, every step")


def build_packed_kernel(method: str, batch: int, context: int, s: pl.Shape, device) -> Case:
    """The CUDA decode-attention kernel on the packed cache (oscar_core.kernels)."""
    from oscar_eval.speed import packed_kernel

    return packed_kernel.build(method, batch, context, s, device)


BUILDERS: dict[str, Callable[[int, int, pl.Shape, Any], Case]] = {
    "bf16-sdpa-cudnn": lambda b, c, s, d: build_bf16_sdpa("cudnn", b, c, s, d),
    "bf16-sdpa-flash": lambda b, c, s, d: build_bf16_sdpa("flash", b, c, s, d),
    "bf16-flash-attn": build_bf16_flash_attn,
    "bf16-flashinfer": build_bf16_flashinfer,
    "bf16-dynamic-flash": lambda b, c, s, d: build_bf16_dynamic("flash", b, c, s, d),
    "bf16-dynamic-eager": lambda b, c, s, d: build_bf16_dynamic("eager", b, c, s, d),
    "oscar-int2": lambda b, c, s, d: build_packed_kernel("oscar", b, c, s, d),
    "kivi-int2": lambda b, c, s, d: build_packed_kernel("kivi", b, c, s, d),
    "oscar-ref": lambda b, c, s, d: build_packed_ref("oscar", b, c, s, d),
    "kivi-ref": lambda b, c, s, d: build_packed_ref("kivi", b, c, s, d),
}


def step_bytes(impl: str, batch: int, context: int, s: pl.Shape) -> float:
    """Roofline bytes of one call: the method's packed (or BF16) bytes, whatever the impl moves."""
    return rf.attention_step_bytes(rf.method_of(impl), batch, context, s.num_q_heads, s.num_kv_heads, s.head_dim)
