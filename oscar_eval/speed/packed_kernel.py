"""Adapter to the packed-cache CUDA decode kernel in :mod:`oscar_core.kernels` (API still moving).

Everything that depends on that package's exact signatures lives here, so the rest of the profiler
does not change when it does. When the kernel is not built or not importable, :func:`build` raises
:class:`~oscar_eval.speed.case.Unavailable` with the reason, and the sweep records the row as
skipped.

Kernel API used (oscar_core.kernels, 2026-11-29): ``pack_oscar_keys(k [N,H,T,128]) -> KernelKeys``,
``pack_values(v) -> KernelValues``, ``pack_kivi_keys`` / ``pack_kivi_values`` (KIVI's float-minimum format
in the same layout), ``decode_attention(q [B,Hq,128], keys, values, qlens int32 [B],
res_k [B,Hkv,R,128], res_v, rlens int32 [B], out=...)`` and its fp32 oracle
``decode_attention_reference`` (same arguments).
"""

from __future__ import annotations

from typing import Any

import torch

from oscar_eval.speed import plan as pl
from oscar_eval.speed import roofline as rf
from oscar_eval.speed.case import Case, Unavailable


def kernels_status() -> dict[str, Any]:
    """What the profiler can see of oscar_core.kernels (recorded in every results file)."""
    try:
        from oscar_core import kernels
    except Exception as exc:
        return {"importable": False, "available": False, "reason": f"{exc.__class__.__name__}: {exc}"[:300]}
    status: dict[str, Any] = {"importable": True, "available": False}
    avail = getattr(kernels, "available", None)
    try:
        status["available"] = bool(avail()) if callable(avail) else False
    except Exception as exc:
        status["reason"] = f"available() raised {exc.__class__.__name__}: {exc}"[:300]
    why = getattr(kernels, "unavailable_reason", None)
    if callable(why) and not status["available"]:
        try:
            status["reason"] = status.get("reason") or why()
        except Exception:
            pass
    status["api"] = sorted(n for n in getattr(kernels, "__all__", dir(kernels)) if not n.startswith("_"))
    return status


def _kernels():
    try:
        from oscar_core import kernels as kx
    except Exception as exc:
        raise Unavailable(f"oscar_core.kernels not importable ({exc.__class__.__name__}: {exc})") from None
    for name in ("available", "pack_oscar_keys", "pack_values", "decode_attention"):
        if not hasattr(kx, name):
            raise Unavailable(f"oscar_core.kernels has no {name}()")
    if not kx.available():
        reason = kx.unavailable_reason() if hasattr(kx, "unavailable_reason") else "not built"
        raise Unavailable(f"oscar_core.kernels not available: {reason}")
    return kx


def kernel_layout(method: str) -> rf.QuantLayout:
    """The storage the kernel arm of ``method`` holds. KIVI in the kernel layout flushes values with the
    keys (whole blocks, ``KIVISpec(value_flush="block")``), not token by token: the kernel needs equal
    quantized lengths for keys and values."""
    lay = rf.layout_for(method)
    return rf.QuantLayout(lay.bits, lay.group_size, lay.residual_length, lay.token_norm, value_window="block")


class PackedLayer:
    """One layer's packed cache (OScaR or KIVI format) in the kernel layout, filled with random data."""

    def __init__(self, batch: int, context: int, num_kv_heads: int, head_dim: int, device, window: int = 128,
                 method: str = "oscar"):
        kx = _kernels()
        kq, kf, vq, vf = rf.split_tokens(context, kernel_layout(method), decode=True)
        assert kq == vq and kf == vf
        pack_k, pack_v = ((kx.pack_oscar_keys, kx.pack_values) if method == "oscar"
                          else (kx.pack_kivi_keys, kx.pack_kivi_values))
        if kq:
            # Pack in batch chunks of at most ~1 GiB of bf16 source: large batches fit.
            self.keys = kx.alloc_keys(batch, num_kv_heads, kq, device, method, head_dim=head_dim)
            self.values = kx.alloc_values(batch, num_kv_heads, kq, device, method, head_dim=head_dim)
            per_seq = num_kv_heads * kq * head_dim * 2
            step = max(1, (1 << 30) // per_seq)
            if method != "oscar":  # the reference encoder holds fp32 temporaries: smaller chunks
                step = max(1, step // 8)
            for b0 in range(0, batch, step):
                b1 = min(batch, b0 + step)
                shape = (b1 - b0, num_kv_heads, kq, head_dim)
                k = pack_k(torch.randn(shape, device=device, dtype=torch.bfloat16))
                v = pack_v(torch.randn(shape, device=device, dtype=torch.bfloat16))
                self.keys.data[b0:b1].copy_(k.data)
                if k.norm is not None:
                    self.keys.norm[b0:b1, : k.norm.shape[1]].copy_(k.norm)
                self.values.data[b0:b1].copy_(v.data)
                del k, v
        else:  # nothing quantized yet: a one-group buffer with length 0
            self.keys = kx.alloc_keys(batch, num_kv_heads, 32, device, method, head_dim=head_dim)
            self.values = kx.alloc_values(batch, num_kv_heads, 32, device, method, head_dim=head_dim)
        torch.cuda.empty_cache()
        self.qlens = torch.full((batch,), kq, dtype=torch.int32, device=device)
        self.res_k = torch.randn(batch, num_kv_heads, window, head_dim, device=device, dtype=torch.bfloat16)
        self.res_v = torch.randn_like(self.res_k)
        self.rlens = torch.full((batch,), kf, dtype=torch.int32, device=device)
        self.quantized, self.window_tokens = kq, kf
        self.workspace: Any = None

    def nbytes(self) -> int:
        """Bytes a cache of this state must hold: packed blocks + norms + the used window."""
        used_window = 2 * self.res_k[:, :, : self.window_tokens].numel() * self.res_k.element_size()
        norms = self.keys.norm.numel() * 4 if self.keys.norm is not None else 0
        return self.keys.data.numel() + self.values.data.numel() + norms + used_window

    def attend(self, q: torch.Tensor, out: torch.Tensor | None = None, softmax_scale: float | None = None
               ) -> torch.Tensor:
        from oscar_core import kernels as kx

        kwargs: dict[str, Any] = {"out": out}
        if hasattr(kx, "make_decode_workspace") and q.is_cuda:
            # fixed partial-state buffers, made at the first (warm-up) call, outside graph capture
            if self.workspace is None:
                self.workspace = kx.make_decode_workspace(q.shape[1], self.keys, self.res_k.shape[2])
            kwargs["workspace"] = self.workspace
        return kx.decode_attention(q, self.keys, self.values, self.qlens, self.res_k, self.res_v, self.rlens,
                                   softmax_scale, **kwargs)

    def reference(self, q: torch.Tensor) -> torch.Tensor:
        from oscar_core import kernels as kx

        return kx.decode_attention_reference(q, self.keys, self.values, self.qlens, self.res_k, self.res_v,
                                             self.rlens)


def build(method: str, batch: int, context: int, s: pl.Shape, device):
    kx = _kernels()
    if method not in ("oscar", "kivi"):
        raise Unavailable(f"oscar_core.kernels decodes the OScaR and KIVI formats; no {method} kernel")
    if method == "kivi" and not hasattr(kx, "pack_kivi_keys"):
        raise Unavailable("this oscar_core.kernels has no KIVI format (pack_kivi_keys)")
    head_dims = getattr(kx, "HEAD_DIMS", (128,))
    if s.head_dim not in head_dims:
        raise Unavailable(f"the kernel supports head_dim {', '.join(map(str, head_dims))}, not {s.head_dim}")
    if s.num_q_heads // s.num_kv_heads not in (1, 2, 4, 8):
        raise Unavailable(f"the kernel supports GQA groups 1, 2, 4, 8, not {s.num_q_heads // s.num_kv_heads}")
    one = rf.kv_bytes(method, batch, context, s.num_kv_heads, s.head_dim, kernel_layout(method))
    n = pl.n_sets(one)
    sets = []
    for _ in range(n):
        layer = PackedLayer(batch, context, s.num_kv_heads, s.head_dim, device, method=method)
        q = torch.randn(batch, s.num_q_heads, s.head_dim, device=device, dtype=torch.bfloat16)
        sets.append((layer, q, torch.empty_like(q)))

    def fn():
        for layer, q, out in sets:
            layer.attend(q, out)

    def check() -> float:
        layer, q, _ = sets[0]
        got = layer.attend(q).float()
        ref = layer.reference(q)
        return float((got - ref).norm() / ref.norm())

    first = sets[0][0]
    note = f"{n} input sets cycled; oscar_core.kernels.decode_attention"
    if method == "kivi":
        note += "; KIVI format (float minimum, no rotation/norm), values flushed in blocks with the keys"
    return Case(fn, n, first.nbytes(), note=note,
                info={"quantized_tokens": first.quantized, "window_tokens": first.window_tokens}, check=check)
