"""CUDA kernels for OScaR INT2 (csrc/), with pure-PyTorch fallbacks of the same signature and layout.

Functions (all take and return the packed layout of :mod:`oscar_core.kernels.layout`):

Head dims 64, 128 and 256 (:data:`HEAD_DIMS`; the kernels are templates on it, one instantiation each);
every function reads the head dim off its tensors.

* :func:`pack_oscar_keys` ``k [N, H, T, D]`` post-RoPE, *unrotated* keys (bf16/fp16, ``T`` a
  multiple of 32) -> :class:`KernelKeys`: Hadamard per head, fp32 token norm over all kv heads,
  per-channel groups of 32 tokens, integer zero point, 2 bits; one fused kernel.
* :func:`pack_values` ``v [N, H, T, D]`` (already rotated by the fused ``v_proj``) ->
  :class:`KernelValues`: per-token groups of 32 channels, integer zero point, 2 bits.
* :func:`decode_attention` one query token per sequence against the packed cache plus the
  full-precision residual window: split-KV, GQA, per-sequence device-side lengths, no host
  synchronisation and fixed shapes (CUDA-graph capturable).
* :func:`append_window` writes one decode token per sequence into the full-precision window at
  device-side slots, rotating the key (OScaR) in the same launch.
* :func:`from_reference_blocks` / :func:`to_reference_blocks` convert between the reference Block
  dicts of :class:`oscar_core.methods.oscar.OScaRSpec` (or, with ``method="kivi"``,
  :class:`oscar_core.methods.kivi.KIVISpec`) and this layout, bit for bit.
* :func:`pack_kivi_keys` / :func:`pack_kivi_values`: KIVI's format in the same layout (float minimum
  instead of the integer zero point, no token norm, no query rotation); the decode kernel reads both.
  They encode with the reference quantizer (no fused CUDA pack kernel for KIVI).

The CUDA path is used when :func:`available` is true and the tensors live on a CUDA device; the
extension is built just in time (``torch.utils.cpp_extension.load``, ninja) on first use and cached
in ``TORCH_EXTENSIONS_DIR``. Everything else runs the PyTorch fallbacks, whose numerics are the
reference quantizer's (:mod:`oscar_core.quant`), the oracle of the GPU tests.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from oscar_core.hadamard import hadamard_transform
from oscar_core.kernels.layout import (
    BLOCK_BYTES,
    GROUP,
    HEAD_DIM,
    HEAD_DIMS,
    ZERO_BIAS,
    block_bytes,
    block_bytes_to_codes,
    check_head_dim,
    code_bytes,
    codes_to_block_bytes,
    head_dim_of_block,
    meta_fp16,
    meta_to_stored,
)
from oscar_core.quant import pack_codes, unpack_codes

__all__ = [
    "BLOCK_BYTES",
    "GROUP",
    "HEAD_DIM",
    "HEAD_DIMS",
    "DecodeWorkspace",
    "KernelKeys",
    "KernelValues",
    "alloc_keys",
    "alloc_values",
    "append_window",
    "available",
    "choose_splits",
    "decode_attention",
    "decode_attention_reference",
    "dequantize_keys",
    "dequantize_values",
    "from_reference_blocks",
    "make_decode_workspace",
    "max_pack_heads",
    "pack_kivi_keys",
    "pack_kivi_values",
    "pack_oscar_keys",
    "pack_values",
    "to_reference_blocks",
    "unavailable_reason",
]

_CSRC = Path(__file__).resolve().parents[2] / "csrc"
_WARPS_PER_CTA = 4  # must match kNW in csrc/oscar_kernels.cu
_CTAS_PER_SM = {64: 4, 128: 4, 256: 2}  # decode CTAs resident per SM: DecodeCfg<D>::kMinCtas there

_lock = threading.Lock()
_ext: Any = None
_reason: str | None = None


def _load() -> Any:
    """Build (once) and return the extension module, or None; sets the one-line reason on failure."""
    global _ext, _reason
    with _lock:
        if _ext is not None or _reason is not None:
            return _ext
        if os.environ.get("OSCAR_DISABLE_KERNELS"):
            _reason = "disabled by OSCAR_DISABLE_KERNELS"
            return None
        if not torch.cuda.is_available():
            _reason = "no CUDA device"
            return None
        major, _minor = torch.cuda.get_device_capability()
        if major < 8:
            _reason = f"compute capability {major}.x < 8.0 (mma.m16n8k16 f16 needs sm_80+)"
            return None
        from torch.utils import cpp_extension

        nvcc = shutil.which("nvcc")
        if cpp_extension.CUDA_HOME is None and nvcc is None:
            _reason = "no nvcc (CUDA_HOME unset and nvcc not on PATH)"
            return None
        if not (_CSRC / "oscar_kernels.cu").exists():
            _reason = f"CUDA sources not found under {_CSRC}"
            return None
        flags = ["-O3", "-lineinfo", "-gencode=arch=compute_80,code=compute_80"]
        if major == 9:
            flags.insert(0, "-gencode=arch=compute_90a,code=sm_90a")
        if os.environ.get("OSCAR_KERNELS_VERBOSE"):
            flags.append("-Xptxas=-v")
        # build-time variants for experiments, e.g. OSCAR_KERNELS_DEFINES="OSCAR_V_HSUB=1"
        defines = [d for d in os.environ.get("OSCAR_KERNELS_DEFINES", "").split(",") if d]
        flags += [f"-D{d}" for d in defines]
        suffix = "".join("_" + "".join(ch for ch in d if ch.isalnum()) for d in defines)
        try:
            _ext = cpp_extension.load(
                name=f"oscar_kernels_sm{major}x{suffix}",
                sources=[str(_CSRC / "oscar_bindings.cpp"), str(_CSRC / "oscar_kernels.cu")],
                extra_cflags=["-O3"],
                extra_cuda_cflags=flags,
                verbose=bool(os.environ.get("OSCAR_KERNELS_VERBOSE")),
            )
        except Exception as exc:  # build or load error: keep the fallbacks working
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            errs = [ln for ln in lines if "error" in ln.lower()]
            _reason = "build error: " + (errs[0] if errs else lines[0] if lines else type(exc).__name__)[:300]
            return None
        return _ext


def available() -> bool:
    """True when the CUDA extension is built (or builds now) and a suitable GPU is present."""
    return _load() is not None


def unavailable_reason() -> str:
    """One line: why :func:`available` is false ('' when it is true)."""
    _load()
    return _reason or ""


def _use_cuda(*tensors: torch.Tensor, force_fallback: bool) -> bool:
    return not force_fallback and all(t.is_cuda for t in tensors) and available()


# -------------------------------------------------------------------------------------------------
# Packed containers
# -------------------------------------------------------------------------------------------------


ZERO_POINTS = ("integer", "float")


@dataclass
class KernelValues:
    """Packed values: ``data`` uint8 ``[N, H, G, 12 D]`` (1536 bytes for head dim 128). ``zero_point``:
    ``"integer"`` (OScaR, stored ``1024 + z``) or ``"float"`` (KIVI's group minimum ``mn``, stored as is)."""

    data: torch.Tensor
    zero_point: str = field(default="integer", kw_only=True)

    def __post_init__(self) -> None:
        if self.zero_point not in ZERO_POINTS:
            raise ValueError(f"zero_point must be one of {ZERO_POINTS}, got {self.zero_point!r}")

    @property
    def num_tokens(self) -> int:
        return self.data.shape[2] * GROUP

    @property
    def head_dim(self) -> int:
        return head_dim_of_block(self.data, "packed data")

    def copy_into(self, dst: KernelValues, token_start: int) -> None:
        """Write these tokens into a larger (capacity) buffer at ``token_start`` (a multiple of 32)."""
        if token_start % GROUP:
            raise ValueError(f"token_start {token_start} is not a multiple of {GROUP}")
        g0, n = token_start // GROUP, self.data.shape[2]
        dst.data[:, :, g0 : g0 + n].copy_(self.data)


@dataclass
class KernelKeys(KernelValues):
    """Packed keys: the values' layout plus OScaR's token norms ``norm`` fp32 ``[N, >= G*32]`` (None: no
    token scaling, KIVI) and whether the decode rotates the query (OScaR's keys are Hadamard-rotated)."""

    norm: torch.Tensor | None = None
    rotate_query: bool = field(default=True, kw_only=True)

    def copy_into(self, dst: KernelKeys, token_start: int) -> None:
        super().copy_into(dst, token_start)
        if self.norm is not None and dst.norm is not None:
            n = self.num_tokens
            dst.norm[:, token_start : token_start + n].copy_(self.norm[:, :n])


_FORMATS = {"oscar": ("integer", True), "kivi": ("float", False)}  # method -> (zero point, norms + rotation)


def _format(method: str) -> tuple[str, bool]:
    if method not in _FORMATS:
        raise ValueError(f"the kernel layout serves {', '.join(_FORMATS)}, not {method!r}")
    return _FORMATS[method]


def alloc_keys(batch: int, kv_heads: int, capacity: int, device: torch.device | str, method: str = "oscar",
               *, head_dim: int = HEAD_DIM) -> KernelKeys:
    """A zeroed capacity buffer for ``capacity`` tokens (rounded up to 32); OScaR's norms start at 1."""
    zp, scaled = _format(method)
    g = -(-capacity // GROUP)
    norm = torch.ones(batch, g * GROUP, dtype=torch.float32, device=device) if scaled else None
    data = torch.zeros(batch, kv_heads, g, block_bytes(head_dim), dtype=torch.uint8, device=device)
    return KernelKeys(data, norm, zero_point=zp, rotate_query=scaled)


def alloc_values(batch: int, kv_heads: int, capacity: int, device: torch.device | str, method: str = "oscar",
                 *, head_dim: int = HEAD_DIM) -> KernelValues:
    g = -(-capacity // GROUP)
    return KernelValues(torch.zeros(batch, kv_heads, g, block_bytes(head_dim), dtype=torch.uint8, device=device),
                        zero_point=_format(method)[0])


def _check_kv(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"{what} must be [N, H, T, head_dim] with head_dim in {HEAD_DIMS}, got {tuple(x.shape)}")
    if x.shape[2] % GROUP:
        raise ValueError(f"{what}: {x.shape[2]} tokens is not a multiple of {GROUP}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"{what} must be bfloat16 or float16, got {x.dtype}")


# -------------------------------------------------------------------------------------------------
# Converters between reference Block dicts and the kernel layout
# -------------------------------------------------------------------------------------------------


def _keys_ref_to_data(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, zero_point: str
                      ) -> torch.Tensor:
    n, h, g, d, _ = codes.shape
    c = unpack_codes(codes, 2)  # [N, H, G, D, 32] (channel, token)
    tc = c.transpose(-1, -2)  # [N, H, G, 32, D]
    off = code_bytes(d)
    out = torch.empty(n, h, g, block_bytes(d), dtype=torch.uint8, device=codes.device)
    out[..., :off] = codes_to_block_bytes(tc, keys=True)
    out[..., off : off + 2 * d] = meta_to_stored(scale, True).contiguous().view(torch.uint8)
    out[..., off + 2 * d :] = meta_to_stored(_bias_zero(zero, zero_point), True).contiguous().view(torch.uint8)
    return out


def _bias_zero(zero: torch.Tensor, zero_point: str) -> torch.Tensor:
    """Reference fp16 zero -> stored fp16: ``1024 + z`` for the integer zero point (exact: the scale floor
    keeps |z| <= 1024), KIVI's minimum ``mn`` unchanged."""
    return (zero.float() + ZERO_BIAS).half() if zero_point == "integer" else zero.half()


def _unbias_zero(zz: torch.Tensor, zero_point: str) -> torch.Tensor:
    return (zz.float() - ZERO_BIAS).half() if zero_point == "integer" else zz


def _zero_f32(zz: torch.Tensor, zero_point: str) -> torch.Tensor:
    return zz.float() - ZERO_BIAS if zero_point == "integer" else zz.float()


def _values_ref_to_data(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, zero_point: str
                        ) -> torch.Tensor:
    n, h, t, ng, _ = codes.shape
    g, d = t // GROUP, ng * GROUP
    c = unpack_codes(codes, 2).reshape(n, h, g, GROUP, d)  # (token, channel)
    off = code_bytes(d)
    out = torch.empty(n, h, g, block_bytes(d), dtype=torch.uint8, device=codes.device)
    out[..., :off] = codes_to_block_bytes(c, keys=False)
    s = scale.reshape(n, h, g, GROUP, ng).transpose(-1, -2).contiguous()  # [.., D/32 groups, 32 tokens]
    z = _bias_zero(zero, zero_point).reshape(n, h, g, GROUP, ng).transpose(-1, -2).contiguous()
    out[..., off : off + 2 * d] = meta_to_stored(s.view(n, h, g, -1), False).contiguous().view(torch.uint8)
    out[..., off + 2 * d :] = meta_to_stored(z.view(n, h, g, -1), False).contiguous().view(torch.uint8)
    return out


def from_reference_blocks(
    key_block: dict[str, torch.Tensor] | None,
    value_block: dict[str, torch.Tensor] | None,
    *,
    method: str = "oscar",
) -> tuple[KernelKeys | None, KernelValues | None]:
    """Reference blocks (``OScaRSpec().encode_keys`` / ``encode_values``, or KIVI's with
    ``method="kivi"``) -> kernel layout.

    Key block: ``codes`` uint8 ``[N, H, T/32, D, 8]``, ``scale``/``zero`` fp16 ``[N, H, T/32, D]``,
    and for OScaR ``norm`` fp32 ``[N, T]``. Value block: ``codes`` ``[N, H, T, D/32, 8]``,
    ``scale``/``zero`` ``[N, H, T, D/32]``. ``D`` in :data:`HEAD_DIMS`. Either may be None.
    """
    zp, scaled = _format(method)
    keys = values = None
    if key_block is not None:
        codes = key_block["codes"]
        if codes.dim() != 5 or codes.shape[-2] not in HEAD_DIMS or codes.shape[-1] != GROUP // 4:
            raise ValueError(f"key codes must be [N, H, T/32, D, 8] with D in {HEAD_DIMS}, got {tuple(codes.shape)}")
        if scaled and "norm" not in key_block:
            raise ValueError("the key block has no 'norm': OScaR's kernel layout needs the token scaling")
        if not scaled and "norm" in key_block:
            raise ValueError(f"a {method} key block has no token norm; this one has (an OScaR block?)")
        data = _keys_ref_to_data(codes, key_block["scale"], key_block["zero"], zp)
        norm = key_block["norm"].float().contiguous() if scaled else None
        keys = KernelKeys(data, norm, zero_point=zp, rotate_query=scaled)
    if value_block is not None:
        codes = value_block["codes"]
        if (codes.dim() != 5 or codes.shape[-2] * GROUP not in HEAD_DIMS or codes.shape[-1] != GROUP // 4
                or codes.shape[2] % GROUP):
            raise ValueError(
                f"value codes must be [N, H, T, D/32, 8] with D in {HEAD_DIMS} and T % 32 == 0, "
                f"got {tuple(codes.shape)}"
            )
        values = KernelValues(_values_ref_to_data(codes, value_block["scale"], value_block["zero"], zp),
                              zero_point=zp)
    return keys, values


def to_reference_blocks(
    keys: KernelKeys | None, values: KernelValues | None
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """Inverse of :func:`from_reference_blocks` (bit for bit)."""
    kb = vb = None
    if keys is not None:
        d = keys.data
        n, h, g, _ = d.shape
        tc = block_bytes_to_codes(d[..., : code_bytes(keys.head_dim)], keys=True)  # [N, H, G, 32, D]
        scale, zz = meta_fp16(d, True)
        kb = {
            "codes": pack_codes(tc.transpose(-1, -2).contiguous(), 2),
            "scale": scale,
            "zero": _unbias_zero(zz, keys.zero_point),
        }
        if keys.norm is not None:
            kb["norm"] = keys.norm[:, : g * GROUP].contiguous()
    if values is not None:
        d = values.data
        n, h, g, _ = d.shape
        ng = values.head_dim // GROUP
        tc = block_bytes_to_codes(d[..., : code_bytes(values.head_dim)], keys=False)  # [N, H, G, 32, D]
        codes = tc.reshape(n, h, g * GROUP, ng, GROUP)
        scale, zz = meta_fp16(d, False)  # [N, H, G, D/32 * 32]
        zero = _unbias_zero(zz, values.zero_point)
        vb = {
            "codes": pack_codes(codes, 2),
            "scale": scale.view(n, h, g, ng, GROUP).transpose(-1, -2).reshape(n, h, g * GROUP, ng).contiguous(),
            "zero": zero.view(n, h, g, ng, GROUP).transpose(-1, -2).reshape(n, h, g * GROUP, ng).contiguous(),
        }
    return kb, vb


# -------------------------------------------------------------------------------------------------
# Pack
# -------------------------------------------------------------------------------------------------


def _spec():
    from oscar_core.methods.oscar import OScaRSpec

    return OScaRSpec()


def max_pack_heads(head_dim: int) -> int:
    """kv heads the key pack kernel holds in shared memory (every head of a 32-token group, for the token
    norm; the same ~140 KB: 32, 16, 8 for head dim 64, 128, 256;
    ``PackKeysCfg<D>::kMaxHeads`` in csrc/oscar_kernels.cu). More heads take the reference encoder."""
    return 2048 // check_head_dim(head_dim)


def pack_oscar_keys(k: torch.Tensor, *, rotated: bool = False, force_fallback: bool = False) -> KernelKeys:
    """Post-RoPE keys ``[N, H, T, D]`` -> packed OScaR keys (rotation + token norm + quantization fused).

    Bit for bit the reference: ``OScaRSpec().encode_keys(hadamard_transform(k))`` (the rotation rounds
    to ``k.dtype`` as the reference's does; ``token_norms`` sums in the order the kernel uses).
    ``rotated=True``: ``k`` is already in the attention basis (what the cache holds), no rotation.
    """
    _check_kv(k, "keys")
    n, h, t, d = k.shape
    if _use_cuda(k, force_fallback=force_fallback) and h <= max_pack_heads(d):
        ext = _ext
        kc = k.contiguous()
        data = torch.empty(n, h, t // GROUP, block_bytes(d), dtype=torch.uint8, device=k.device)
        norm = torch.empty(n, t, dtype=torch.float32, device=k.device)
        ext.pack_keys(kc, data, norm, not rotated)
        return KernelKeys(data, norm)
    kb, _ = from_reference_blocks(_spec().encode_keys(k if rotated else hadamard_transform(k)), None)
    assert kb is not None
    return kb


def pack_values(v: torch.Tensor, *, force_fallback: bool = False) -> KernelValues:
    """Values ``[N, H, T, D]`` (in the cache basis, i.e. already rotated) -> packed values."""
    _check_kv(v, "values")
    n, h, t, d = v.shape
    if _use_cuda(v, force_fallback=force_fallback):
        data = torch.empty(n, h, t // GROUP, block_bytes(d), dtype=torch.uint8, device=v.device)
        _ext.pack_values(v.contiguous(), data)
        return KernelValues(data)
    _, vb = from_reference_blocks(None, _spec().encode_values(v))
    assert vb is not None
    return vb


def _kivi_spec():
    from oscar_core.methods.kivi import KIVISpec

    return KIVISpec()


def pack_kivi_keys(k: torch.Tensor) -> KernelKeys:
    """Keys ``[N, H, T, D]`` -> KIVI-packed keys (per-channel groups of 32 tokens, float minimum), via the
    reference quantizer on ``k``'s device (``KIVISpec().encode_keys``)."""
    _check_kv(k, "keys")
    kb, _ = from_reference_blocks(_kivi_spec().encode_keys(k), None, method="kivi")
    assert kb is not None
    return kb


def pack_kivi_values(v: torch.Tensor) -> KernelValues:
    """Values ``[N, H, T, D]`` -> KIVI-packed values (per-token groups of 32 channels, float minimum)."""
    _check_kv(v, "values")
    _, vb = from_reference_blocks(None, _kivi_spec().encode_values(v), method="kivi")
    assert vb is not None
    return vb


def append_window(
    k: torch.Tensor,
    v: torch.Tensor,
    res_k: torch.Tensor,
    res_v: torch.Tensor,
    slots: torch.Tensor,
    *,
    rotate: bool = True,
    force_fallback: bool = False,
) -> None:
    """Write one token per sequence into the window: ``res_k[b, :, slots[b]] = H k[b]`` (``rotate``,
    OScaR's attention basis, numerics of :func:`oscar_core.hadamard.hadamard_transform`) or ``k[b]``,
    and ``res_v[b, :, slots[b]] = v[b]``. ``k``/``v`` ``[B, Hkv, D]``, ``res_*`` ``[B, Hkv, R, D]``
    of the same dtype, ``slots`` int32 ``[B]`` on the device; slots outside ``[0, R)`` write nothing.
    One launch, no host synchronisation (CUDA-graph capturable)."""
    if k.dim() != 3 or k.shape[-1] not in HEAD_DIMS or v.shape != k.shape:
        raise ValueError(f"k and v must be [B, Hkv, head_dim] with head_dim in {HEAD_DIMS}, got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    if (res_k.dim() != 4 or res_k.shape[:2] != k.shape[:2] or res_k.shape[3] != k.shape[-1]
            or res_v.shape != res_k.shape):
        raise ValueError(f"res_k/res_v must be [B, Hkv, R, {k.shape[-1]}] matching k, got {tuple(res_k.shape)}")
    if not (k.dtype == v.dtype == res_k.dtype == res_v.dtype):
        raise ValueError(f"k, v and the window must share a dtype ({k.dtype}, {v.dtype}, {res_k.dtype})")
    if _use_cuda(k, res_k, force_fallback=force_fallback) and k.dtype in (torch.bfloat16, torch.float16):
        _ext.append_window(k.contiguous(), v.contiguous(), res_k, res_v, slots.to(torch.int32), rotate)
        return
    kk = hadamard_transform(k) if rotate else k
    r = res_k.shape[2]
    ok = (slots >= 0) & (slots < r)
    rows = torch.arange(k.shape[0], device=k.device)[ok]
    pos = slots.long()[ok]
    res_k[rows, :, pos] = kk[ok]
    res_v[rows, :, pos] = v[ok]


# -------------------------------------------------------------------------------------------------
# Dequantization (fallback decode, tests)
# -------------------------------------------------------------------------------------------------


def dequantize_keys(keys: KernelKeys, with_norm: bool = True) -> torch.Tensor:
    """fp32 ``[N, H, G*32, D]`` attention-basis keys (``k_hat * norm`` when ``with_norm``)."""
    d = keys.data
    n, h, g, _ = d.shape
    hd = keys.head_dim
    codes = block_bytes_to_codes(d[..., : code_bytes(hd)], keys=True).float()  # [N, H, G, 32, D]
    scale, zz = meta_fp16(d, True)
    s, z = scale.float().unsqueeze(-2), _zero_f32(zz, keys.zero_point).unsqueeze(-2)
    k = s * (codes - z) if keys.zero_point == "integer" else codes * s + z
    k = k.reshape(n, h, g * GROUP, hd)
    if with_norm and keys.norm is not None:
        k = k * keys.norm[:, None, : g * GROUP, None]
    return k


def dequantize_values(values: KernelValues) -> torch.Tensor:
    """fp32 ``[N, H, G*32, D]`` values (cache basis)."""
    d = values.data
    n, h, g, _ = d.shape
    hd = values.head_dim
    ng = hd // GROUP
    codes = block_bytes_to_codes(d[..., : code_bytes(hd)], keys=False).float()  # [N, H, G, 32 tok, D ch]
    scale, zz = meta_fp16(d, False)  # [.., D/32 * 32] as [group][token]
    s = scale.float().view(n, h, g, ng, GROUP).transpose(-1, -2).repeat_interleave(GROUP, dim=-1)
    z = _zero_f32(zz, values.zero_point).view(n, h, g, ng, GROUP).transpose(-1, -2).repeat_interleave(GROUP, dim=-1)
    x = s * (codes - z) if values.zero_point == "integer" else codes * s + z
    return x.reshape(n, h, g * GROUP, hd)


# -------------------------------------------------------------------------------------------------
# Decode attention
# -------------------------------------------------------------------------------------------------


def choose_splits(batch: int, kv_heads: int, groups: int, sm_count: int, head_dim: int = HEAD_DIM
                  ) -> tuple[int, int]:
    """Host-side split-KV choice from the *capacity* (never from lengths): ``(num_splits, groups_per_split)``,
    about one wave of the decode CTAs that fit on an SM at ``head_dim``."""
    if groups <= 0:
        return 1, _WARPS_PER_CTA
    target = _CTAS_PER_SM[check_head_dim(head_dim)] * sm_count
    splits = max(1, -(-target // max(1, batch * kv_heads)))
    splits = min(splits, -(-groups // _WARPS_PER_CTA))
    gps = -(-groups // splits)
    gps = -(-gps // _WARPS_PER_CTA) * _WARPS_PER_CTA
    return -(-groups // gps), gps


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # only shapes the (unused) split choice of CPU workspaces
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def decode_attention_reference(
    q: torch.Tensor,
    keys: KernelKeys,
    values: KernelValues,
    qlens: torch.Tensor,
    res_k: torch.Tensor,
    res_v: torch.Tensor,
    rlens: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """float32 reference of :func:`decode_attention` on the same packed data (returns fp32)."""
    b, hq, d = q.shape
    hkv = keys.data.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    qr = (hadamard_transform(q.float()) if keys.rotate_query else q.float()).view(b, hkv, hq // hkv, d)
    k = dequantize_keys(keys)  # [B, Hkv, Tq, D]
    v = dequantize_values(values)
    kk = torch.cat([k, res_k.float()], dim=2)
    vv = torch.cat([v, res_v.float()], dim=2)
    tq, r = k.shape[2], res_k.shape[2]
    pos_q = torch.arange(tq, device=q.device)
    pos_r = torch.arange(r, device=q.device)
    valid = torch.cat(
        [pos_q[None] < qlens.to(q.device).view(b, 1), pos_r[None] < rlens.to(q.device).view(b, 1)], dim=1
    )  # [B, Tq + R]
    s = torch.einsum("bhgd,bhtd->bhgt", qr, kk) * scale
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # a sequence with no tokens at all
    out = torch.einsum("bhgt,bhtd->bhgd", p, vv)
    return out.reshape(b, hq, d)


@dataclass
class DecodeWorkspace:
    """Fixed buffers of one :func:`decode_attention` configuration (reuse them across steps and in CUDA
    graphs): the splits' partial softmax states ``pm``/``pl`` ``[B, Hq, S]`` and ``po``
    ``[B, Hq, S, D]`` (fp32), ``S`` = quantized splits + one per 32 residual tokens."""

    pm: torch.Tensor
    pl: torch.Tensor
    po: torch.Tensor
    num_splits: int
    groups_per_split: int


def _splits_for(b: int, hkv: int, gcap: int, num_splits: int | None, device: torch.device, head_dim: int
                ) -> tuple[int, int]:
    if num_splits is None:
        return choose_splits(b, hkv, gcap, _sm_count(device), head_dim)
    nsplit = max(1, min(num_splits, max(1, gcap)))
    gps = max(1, -(-gcap // nsplit))
    return max(1, -(-gcap // gps)), gps


def make_decode_workspace(
    q_heads: int,
    keys: KernelKeys,
    residual_capacity: int,
    *,
    num_splits: int | None = None,
) -> DecodeWorkspace:
    """Allocate the workspace for ``q_heads`` query heads over ``keys``' capacity and ``residual_capacity``
    (the ``R`` of the residual buffers). Allocate it outside graph capture and keep it alive."""
    b, hkv, gcap, _ = keys.data.shape
    dev, d = keys.data.device, keys.head_dim
    nsplit, gps = _splits_for(b, hkv, gcap, num_splits, dev, d)
    s = nsplit + -(-residual_capacity // GROUP)  # quantized splits + one per 32 residual tokens
    return DecodeWorkspace(
        pm=torch.empty(b, q_heads, s, dtype=torch.float32, device=dev),
        pl=torch.empty(b, q_heads, s, dtype=torch.float32, device=dev),
        po=torch.empty(b, q_heads, s, d, dtype=torch.float32, device=dev),
        num_splits=nsplit,
        groups_per_split=gps,
    )


def decode_attention(
    q: torch.Tensor,
    keys: KernelKeys,
    values: KernelValues,
    qlens: torch.Tensor,
    res_k: torch.Tensor,
    res_v: torch.Tensor,
    rlens: torch.Tensor,
    softmax_scale: float | None = None,
    *,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    workspace: DecodeWorkspace | None = None,
    force_fallback: bool = False,
    _phases: int = 3,
) -> torch.Tensor:
    """One decode step of attention for ``B`` sequences over packed keys/values + the residual window.

    ``q`` ``[B, Hq, D]`` bf16/fp16 (``D`` in :data:`HEAD_DIMS`), *unrotated* (the Hadamard is applied
    inside when ``keys.rotate_query``); ``keys``/``values``
    capacity buffers ``[B, Hkv, Gcap, 12 D]`` (norms ``[B, >= Gcap*32]``); ``qlens`` int32 ``[B]``
    quantized tokens per sequence (multiples of 32, at most ``Gcap*32``); ``res_k``/``res_v``
    ``[B, Hkv, R, D]`` (q's dtype) the full-precision window, keys *rotated* and unscaled; ``rlens``
    int32 ``[B]`` (at most ``R``). Returns ``[B, Hq, D]`` in q's dtype: softmax over all valid
    tokens of ``(q_rot . k) * scale`` (quantized keys times their token norm), times the values
    (cache basis). Lengths are read on the device: no host synchronisation, capturable in a graph.
    GQA groups other than 1, 2, 4, 8 (and CPU tensors) take the float32 PyTorch path.

    Two launches: the split-KV kernel (quantized splits plus one CTA per 32 residual tokens, every CTA
    one kv head with its whole GQA group) writes partial softmax states; a small kernel combines them.
    Pass a :func:`make_decode_workspace` ``workspace`` to reuse fixed buffers across steps (without one,
    the partial buffers are allocated per call, which graph capture also handles).
    """
    if q.dim() != 3 or q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"q must be [B, Hq, head_dim] with head_dim in {HEAD_DIMS}, got {tuple(q.shape)}")
    b, hq, d = q.shape
    if keys.head_dim != d or values.head_dim != d or res_k.shape[-1] != d or res_v.shape[-1] != d:
        raise ValueError(f"head_dim mismatch: q {d}, keys {keys.head_dim}, values {values.head_dim}, "
                         f"res_k {res_k.shape[-1]}, res_v {res_v.shape[-1]}")
    hkv = keys.data.shape[1]
    if hq % hkv:
        raise ValueError(f"{hq} query heads is not a multiple of {hkv} kv heads")
    if keys.zero_point != values.zero_point:
        raise ValueError(f"keys ({keys.zero_point} zero point) and values ({values.zero_point}) differ in format")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    gqa = hq // hkv
    if _use_cuda(q, keys.data, force_fallback=force_fallback) and gqa in (1, 2, 4, 8):
        ws = workspace
        if ws is None:
            ws = make_decode_workspace(hq, keys, res_k.shape[2], num_splits=num_splits)
        elif ws.pm.shape != (b, hq, ws.num_splits + -(-res_k.shape[2] // GROUP)) or ws.po.shape[-1] != d:
            raise ValueError("the decode workspace does not match these shapes (make a new one)")
        if out is None:
            out = torch.empty_like(q)
        _ext.decode(
            q.contiguous(),
            keys.data,
            values.data,
            keys.norm if keys.norm is not None else torch.empty(0, dtype=torch.float32, device=q.device),
            qlens.to(torch.int32),
            res_k.contiguous(),
            res_v.contiguous(),
            rlens.to(torch.int32),
            ws.pm,
            ws.pl,
            ws.po,
            out,
            ws.num_splits,
            ws.groups_per_split,
            scale * math.log2(math.e),
            _phases,  # 1: split kernel, 2: combine kernel; 4/8: diagnostics (loads only / math only)
            keys.zero_point == "float",
            keys.rotate_query,
        )
        return out
    res = decode_attention_reference(q, keys, values, qlens, res_k, res_v, rlens, scale).to(q.dtype)
    if out is not None:
        out.copy_(res)
        return out
    return res
