"""Provenance for the manifest: environment, git commit, file hashes, model revision."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit(start: Path | None = None) -> str | None:
    """Commit of the source checkout oscar_eval runs from (``+dirty`` when it has local changes)."""
    where = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def model_revision(path: str | Path) -> str:
    """The HF snapshot commit when ``path`` is in the hub cache, else sha256 of config + weight index.

    Hashing the weights themselves would take minutes for 8B models; the config plus the weight file
    names and sizes (or the safetensors index) identify a checkpoint well enough for provenance.
    """
    p = Path(path).resolve()
    if p.parent.name == "snapshots" and len(p.name) == 40:
        return p.name
    h = hashlib.sha256()
    # oscar_eval_source.json: two GGUF quantizations of one model convert to equal configs and sizes.
    for name in ("config.json", "model.safetensors.index.json", "generation_config.json", "oscar_eval_source.json"):
        f = p / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return "sha256:" + h.hexdigest()


def model_source(path: str | Path) -> dict | None:
    """Where a model folder converted by oscar_eval.checkpoints came from (package, version, GGUF hash and
    quantization, "gguf-dequantized"); None for an ordinary Hugging Face folder."""
    from oscar_eval.checkpoints import model_source as _source

    return _source(path)


def environment() -> dict:
    import torch
    import transformers

    from oscar_eval import __version__

    gpu = None
    cuda = torch.version.cuda
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "oscar_eval": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": cuda,
        "gpu": gpu,
        "platform": platform.platform(),
    }


def now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
