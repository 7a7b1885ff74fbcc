"""Provenance: the one collector of the environment a result came from, plus file hashes and model revision.

:func:`environment` is what every result file records: the accuracy manifest's ``env``, the speed
profiler's ``env`` (``results/speed/*.json``), the kernel scripts' ``env`` (``results/kernels/*.json``)
and the CPU timing script's ``provenance``. Its keys are the ones those files carry and the report
reads (docs/results.md). GPU facts are null when torch sees no CUDA device: a CPU run never records
the GPU of the machine it happened to run on.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Packages whose versions the speed numbers depend on (attention backends, kernel compiler).
OPTIONAL_PACKAGES = ("triton", "flash_attn", "flashinfer", "flashinfer-python", "numpy")
#: Keys that describe the CUDA device; all null without one.
GPU_KEYS = ("cuda", "cudnn", "gpu", "driver", "clocks", "gpu_memory_bytes", "sm_count", "compute_capability",
            "l2_bytes", "nvcc")
_SOURCE_DIRS = ("oscar_core", "oscar_eval", "csrc")
_SOURCE_SUFFIXES = (".py", ".cu", ".cuh", ".cpp", ".h", ".json", ".yaml")
_SMI_FIELDS = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,temperature.gpu,pstate"
#: What a model folder converted by :mod:`oscar_eval.checkpoints` came from (written there, read here).
SOURCE_FILE = "oscar_eval_source.json"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def sha256_files(paths: Iterable[str | Path], chunk: int = 1 << 20) -> str:
    """One sha256 over the bytes of ``paths``, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    return sha256_files([path], chunk)


def package_version(package: str) -> str | None:
    """The installed version of a distribution (pip name), or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], cwd: str | Path | None = None) -> str | None:
    """Stripped stdout of ``cmd``; None when the tool is missing, fails or prints nothing."""
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_dirty(where: Path | None = None, paths: Iterable[str] = (), untracked: bool = False) -> bool | None:
    """Whether the checkout at ``where`` has local changes (below ``paths`` when given); None outside git."""
    cmd = ["git", "-C", str(where or repo_root()), "status", "--porcelain"]
    if not untracked:
        cmd.append("--untracked-files=no")
    try:
        out = subprocess.run([*cmd, "--", *paths], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip())


def git_info(where: Path | None = None) -> dict[str, Any]:
    """``git_commit`` (``+dirty`` when the checkout has local changes) and ``git_dirty``.

    Outside a git checkout (a copied tree on a GPU machine) the commit is ``$GIT_COMMIT`` when set, else
    null, and ``git_dirty`` is null.
    """
    where = where or repo_root()
    head = _run(["git", "-C", str(where), "rev-parse", "--verify", "-q", "HEAD"])
    if head is None:
        return {"git_commit": os.environ.get("GIT_COMMIT") or None, "git_dirty": None}
    dirty = git_dirty(where)
    return {"git_commit": head + ("+dirty" if dirty else ""), "git_dirty": dirty}


def git_commit(start: Path | None = None) -> str | None:
    """Commit of the source checkout (``+dirty`` when it has local changes); see :func:`git_info`."""
    return git_info(start)["git_commit"]


def source_digest(root: Path | None = None) -> str:
    """sha256 over the package sources (oscar_core, oscar_eval, csrc): identifies uncommitted code."""
    root = root or repo_root()
    h = hashlib.sha256()
    for sub in _SOURCE_DIRS:
        base = root / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in _SOURCE_SUFFIXES:
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def _number(x: str) -> float | None:
    try:
        return float(x)
    except ValueError:
        return None


def _nvidia_smi() -> dict[str, Any]:
    """Name, driver and clocks of GPU 0 at this moment (nvidia-smi), or {} without the tool."""
    q = _run(["nvidia-smi", f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader,nounits", "-i", "0"])
    parts = [p.strip() for p in q.splitlines()[0].split(",")] if q else []
    if len(parts) < 9:
        return {}
    names = ("sm_mhz", "mem_mhz", "max_sm_mhz", "max_mem_mhz", "power_w", "temp_c")
    clocks: dict[str, Any] = {k: _number(v) for k, v in zip(names, parts[2:8], strict=True)}
    clocks["pstate"] = parts[8]
    return {"gpu": parts[0], "driver": parts[1], "clocks": clocks}


def gpu_info() -> dict[str, Any]:
    """The :data:`GPU_KEYS`: device properties, nvidia-smi's driver and clocks, nvcc; nulls without CUDA."""
    import torch

    info: dict[str, Any] = dict.fromkeys(GPU_KEYS)
    if not torch.cuda.is_available():
        return info
    try:
        props = torch.cuda.get_device_properties(0)
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpu=props.name,
                    gpu_memory_bytes=int(props.total_memory), sm_count=int(props.multi_processor_count),
                    compute_capability=f"{props.major}.{props.minor}",
                    l2_bytes=int(getattr(props, "L2_cache_size", 0)) or None)
    except Exception:  # provenance is best effort: a half-broken driver still gets its run recorded
        pass
    smi = _nvidia_smi()
    info["gpu"] = info["gpu"] or smi.get("gpu")
    info["driver"], info["clocks"] = smi.get("driver"), smi.get("clocks")
    nvcc = _run(["nvcc", "--version"])
    info["nvcc"] = nvcc.splitlines()[-1] if nvcc else None
    return info


def environment() -> dict[str, Any]:
    """Everything a result's provenance records: versions, git state, CUDA device, host, command line, time."""
    import torch

    import oscar_core
    from oscar_eval import __version__

    return {
        "oscar_eval": __version__,
        "oscar_core": oscar_core.__version__,
        **git_info(),
        "source_sha256": source_digest(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "transformers": package_version("transformers"),
        "packages": {name: package_version(name) for name in OPTIONAL_PACKAGES},
        **gpu_info(),
        "kernel_defines": os.environ.get("OSCAR_KERNELS_DEFINES", ""),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "argv": list(sys.argv),
        "date": now(),
    }


def model_revision(path: str | Path) -> str:
    """The HF snapshot commit when ``path`` is in the hub cache, else sha256 of config + weight index.

    Hashing the weights themselves would take minutes for 8B models; the config plus the weight file
    names and sizes (or the safetensors index) identify a checkpoint well enough for provenance.
    """
    p = Path(path).resolve()
    if p.parent.name == "snapshots" and len(p.name) == 40:
        return p.name
    h = hashlib.sha256()
    # SOURCE_FILE: two GGUF quantizations of one model convert to equal configs and sizes.
    for name in ("config.json", "model.safetensors.index.json", "generation_config.json", SOURCE_FILE):
        f = p / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return "sha256:" + h.hexdigest()


def model_source(path: str | Path) -> dict | None:
    """Where a model folder converted by oscar_eval.checkpoints came from (its :data:`SOURCE_FILE`: package,
    version, GGUF hash and quantization, "gguf-dequantized"); None for an ordinary Hugging Face folder."""
    f = Path(path) / SOURCE_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
