"""Where a model comes from and what it runs on: local files only (a folder, a .gguf file, an offline
checkpoint of :mod:`oscar_eval.checkpoints`, the local Hugging Face cache), the device and the dtype.

Importing this module (any of :mod:`oscar_eval.models`) switches the Hugging Face libraries offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from oscar_eval.errors import UserError

# Never touch the network: set before transformers/huggingface_hub read their settings.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def resolve_model_path(model: str | Path) -> Path:
    """A local folder, a .gguf file (or a folder holding one), the short name of an offline checkpoint
    (oscar_eval.checkpoints: converted once into a folder), or a repo id already in the Hugging Face
    cache (never downloaded)."""
    from oscar_eval import checkpoints

    converted = checkpoints.resolve(model)
    if converted is not None:
        return converted
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"model folder {p} has no config.json")
        return p.resolve()
    try:
        from huggingface_hub import snapshot_download

        # HF_HUB_CACHE is read here (not at import) so a cache chosen at run time is honoured.
        return Path(snapshot_download(str(model), local_files_only=True,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception:  # noqa: BLE001 - any failure means "not available locally"
        known = ", ".join(checkpoints.CHECKPOINTS)
        raise UserError(
            f"model {str(model)!r} is not a folder, a .gguf file, a known offline checkpoint ({known}) nor in "
            f"the local Hugging Face cache; download it first (e.g. `hf download {model}`) or pass its folder "
            "with --model") from None

