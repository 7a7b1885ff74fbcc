"""What identifies a run: its configuration (every input that can change a number), hashed into the run id.

A run's configuration has two parts (docs/results.md, "Run identity"):

- the static part, known before any weights load: the benchmark, its settings and options, the
  selected subsets, ``--limit``, the ids of the items to evaluate, the data files' sha256, the model's
  content hash (``provenance.model_revision``), dtype and device, the method and all its parameters.
  Its hash is the last part of the run id, so the early checks (an existing run, the run's lock) need
  no model.
- the runtime part, known once the model is loaded: the decode path the cache really takes (CUDA
  kernel, with a hash of the kernel sources, the kernels' PyTorch fallbacks, the PyTorch reference,
  or fp16) and the processor classes (a stand-in processor is marked as such).

The manifest stores both (``config``) and their hash (``config_hash``); ``--resume`` continues a run
only when the stored configuration equals the new one, and names the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

KERNEL_SOURCES = ("oscar_bindings.cpp", "oscar_kernels.cu")


def config_hash(config: dict) -> str:
    """16 hex digits of the full configuration (static and runtime parts)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def items_digest(item_ids: list[str]) -> str:
    """sha256 of the ordered item ids: a second NIAH grid or a ``--limit`` is a different item set."""
    return hashlib.sha256("\n".join(item_ids).encode()).hexdigest()


def static_config(*, benchmark: str, settings: dict, subsets: list[str], limit: int | None, item_ids: list[str],
                  data_files: dict[str, str], model_revision: str, dtype: str, device: str, method: str,
                  params: dict, device_map: str | None = None) -> dict:
    model = {"revision": model_revision, "dtype": dtype, "device": device}
    if device_map is not None:  # only when given, so the ids of runs on one device stay as they were
        model["device_map"] = device_map
    config = {"benchmark": benchmark, "settings": settings, "subsets": list(subsets), "limit": limit,
            "items": {"n": len(item_ids), "sha256": items_digest(item_ids)}, "data_files": dict(data_files),
            "model": model, "method": {"name": method, "params": params}}
    return json.loads(json.dumps(config, default=str))  # as the manifest stores it (tuples -> lists)


def device_identity(device: str) -> str:
    """``cpu``, or ``cuda (<GPU name>)``: different GPUs may round bf16 differently."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        return f"cuda ({torch.cuda.get_device_name(index or 0)})"
    return device.split(":")[0]


def kernel_build() -> str:
    """sha256 of the CUDA sources and build defines the kernels are compiled from (they build just in time)."""
    from oscar_core import kernels

    csrc = Path(kernels.__file__).resolve().parents[2] / "csrc"
    h = hashlib.sha256()
    for name in KERNEL_SOURCES:
        f = csrc / name
        h.update(name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"(missing)") + b"\0")
    h.update(os.environ.get("OSCAR_KERNELS_DEFINES", "").encode())
    return "sha256:" + h.hexdigest()[:16]


def decode_path(cache: Any) -> str:
    """The decode path a cache from ``oscar_core.make_cache`` takes: ``kernel`` (CUDA decode kernel),
    ``kernel-fallback`` (kernel layout, PyTorch fallbacks), ``reference`` (dequantize + attention) or
    ``fp16`` (no quantization). A cache's own ``decode_path`` attribute wins when it has one."""
    own = getattr(cache, "decode_path", None)
    if isinstance(own, str):
        return own
    layers = getattr(cache, "layers", None) or []
    if getattr(cache, "spec", None) is None or not getattr(cache.spec, "quantizes", False):
        return "fp16"
    if layers and hasattr(layers[0], "kernel_attention"):
        return "kernel-fallback" if getattr(layers[0], "force_fallback", False) else "kernel"
    return "reference"


def _class_entry(obj: Any) -> dict:
    cls = type(obj)
    # The harness's own processors (oscar_eval.models.vision.QwenVLProcessor, oscar_eval.models.audio.AudioTextProcessor)
    # stand in for a model's processor that could not be built here.
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "stand_in": cls.__module__.startswith("oscar_eval.")}


def processors(runner: Any, loaded: Any) -> dict:
    """The classes that turn an item into model inputs: tokenizer, processor and its parts."""
    out: dict[str, dict] = {}
    proc = getattr(runner, "processor", None)
    proc = proc if proc is not None else getattr(loaded, "processor", None)
    if proc is not None:
        out["processor"] = _class_entry(proc)
        for part in ("image_processor", "feature_extractor"):
            if getattr(proc, part, None) is not None:
                out[part] = _class_entry(getattr(proc, part))
    tok = getattr(proc, "tokenizer", None) if proc is not None else None
    tok = tok if tok is not None else getattr(loaded, "tokenizer", None)
    if tok is not None:
        out["tokenizer"] = _class_entry(tok)
    return out


def runtime_config(cache: Any, runner: Any, loaded: Any) -> dict:
    path = decode_path(cache)
    return {"decode_path": path, "kernel_build": kernel_build() if path == "kernel" else None,
            "processors": processors(runner, loaded)}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differences(old: dict, new: dict, limit: int = 6) -> list[str]:
    """``["method.name: 'kivi' -> 'oscar'", ...]``: the fields where two configurations differ."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(absent)") != b.get(key, "(absent)"):
            out.append(f"{key}: {_short(a.get(key, '(absent)'))} -> {_short(b.get(key, '(absent)'))}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."
