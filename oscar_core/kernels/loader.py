"""Build and load the CUDA extension (csrc/) once, and say why it is unavailable when it is.

The extension is built just in time (``torch.utils.cpp_extension.load``, ninja) on first use and
cached in ``TORCH_EXTENSIONS_DIR``. Environment: ``OSCAR_DISABLE_KERNELS`` (never build, use the
fallbacks), ``OSCAR_KERNELS_VERBOSE`` (build log and ptxas register counts), ``OSCAR_KERNELS_DEFINES``
(comma-separated build-time variants, e.g. ``OSCAR_V_HSUB=1``; each gets its own build).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"

_lock = threading.Lock()
_ext: Any = None
_reason: str | None = None


def load() -> Any:
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
        if not (CSRC / "oscar_kernels.cu").exists():
            _reason = f"CUDA sources not found under {CSRC}"
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
                sources=[str(CSRC / "oscar_bindings.cpp"), str(CSRC / "oscar_kernels.cu")],
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
    return load() is not None


def unavailable_reason() -> str:
    """One line: why :func:`available` is false ('' when it is true)."""
    load()
    return _reason or ""


def cuda_extension(*tensors: torch.Tensor, force_fallback: bool) -> Any:
    """The extension when an op on ``tensors`` should take the CUDA path (all on a CUDA device, the
    extension built, no ``force_fallback``), else None: the caller runs its PyTorch fallback."""
    if force_fallback or not all(t.is_cuda for t in tensors):
        return None
    return load()
