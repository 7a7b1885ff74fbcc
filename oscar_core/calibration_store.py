"""The RotateKV calibration store: where calibrations live, the model fingerprint that names them, reading one.

A calibration is stored as one ``.pt`` file (a dict of tensors and plain values, loadable with
``torch.load(weights_only=True)``) named by the model's *fingerprint* and the ``head_group`` it was
computed with (the permutation sorts *rotated* channels, so it is only valid for that head group; the
quantization group size does not enter it). The fingerprint is a SHA-256 over the text decoder's
configuration (private and dtype entries excluded) and a fixed sample of the weights that determine
the keys (embeddings, norms, q/k projections; not v/o, which methods rotate in place): 4096 evenly
spaced elements per tensor at exact int64 indices. A calibration is only ever used for the model and
head group it carries; ``make_cache`` finds it in the store (``$OSCAR_EVAL_CALIBRATION_DIR``, default
``$OSCAR_EVAL_HOME/results/calibration``) or loads an explicit ``calibration=PATH`` after checking both
(:func:`oscar_core.methods.rotatekv.permutations_for`). Computing one is :mod:`oscar_core.calibration`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from oscar_core.decoder import text_decoder
from oscar_core.methods.base import MethodConfigError

#: 2: exact integer fingerprint sample indices (format 1's float32 ones differ); head group in the name
FORMAT_VERSION = 2
_SAMPLES_PER_TENSOR = 4096


def default_calibration_dir() -> Path:
    """``$OSCAR_EVAL_CALIBRATION_DIR``, else ``calibration/`` in oscar-eval's default results store
    (``$OSCAR_EVAL_HOME/results``; the home rule of :mod:`oscar_eval.paths`, which the core does not
    import): never the current folder."""
    if os.environ.get("OSCAR_EVAL_CALIBRATION_DIR"):
        return Path(os.environ["OSCAR_EVAL_CALIBRATION_DIR"]).expanduser()
    home = os.environ.get("OSCAR_EVAL_HOME")
    root = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "oscar-eval"
    return root.expanduser() / "results" / "calibration"


# Config entries that describe how a model is run or saved, not what it computes.
_RUNTIME_KEYS = frozenset({
    "torch_dtype", "dtype", "transformers_version", "attn_implementation", "use_cache", "architectures",
    "return_dict", "output_hidden_states", "output_attentions", "torchscript",
})


def _config_dict(config: Any) -> dict:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in sorted(x.items())
                    if not str(k).startswith("_") and k not in _RUNTIME_KEYS}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x if isinstance(x, str | int | float | bool | type(None)) else str(x)

    return clean(d)


def sample_indices(numel: int, k: int = _SAMPLES_PER_TENSOR) -> torch.Tensor:
    """``min(k, numel)`` evenly spaced int64 indices from 0 to ``numel - 1``, both ends included
    (exact integer arithmetic: a float32 ``linspace`` cannot address elements past 2^24)."""
    k = min(k, numel)
    if k <= 1:
        return torch.zeros(k, dtype=torch.long)
    return torch.arange(k, dtype=torch.long) * (numel - 1) // (k - 1)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of the text decoder's config and a fixed sample of its key-determining weights."""
    decoder = text_decoder(model)
    h = hashlib.sha256()
    h.update(json.dumps(_config_dict(decoder.config), sort_keys=True).encode())
    for name, p in decoder.named_parameters():
        if any(part in name for part in ("v_proj", "o_proj", "mlp", "experts", "gate", "visual", "audio")):
            continue
        flat = p.detach().reshape(-1)
        sample = flat[sample_indices(flat.numel()).to(flat.device)].float().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def calibration_path(fingerprint: str, directory: str | Path | None = None, *, head_group: int) -> Path:
    d = Path(directory) if directory is not None else default_calibration_dir()
    return d / f"rotatekv-{fingerprint[:24]}-hg{head_group}.pt"


def stored_head_groups(fingerprint: str, directory: Path) -> dict[int, Path]:
    """Calibrations of this model in ``directory`` made with other head groups (for the error message)."""
    found = {}
    for path in sorted(directory.glob(f"rotatekv-{fingerprint[:24]}-hg*.pt")):
        tail = path.stem.rsplit("-hg", 1)[-1]
        if tail.isdigit():
            found[int(tail)] = path
    return found


def load_calibration(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MethodConfigError(f"rotatekv: calibration file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise MethodConfigError(f"rotatekv: cannot read calibration file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("method") != "rotatekv" or "permutations" not in data:
        raise MethodConfigError(f"rotatekv: {path} is not a RotateKV calibration file")
    if data.get("format_version") != FORMAT_VERSION or "head_group" not in data:
        raise MethodConfigError(
            f"rotatekv: calibration {path} has format {data.get('format_version')}, this version reads format "
            f"{FORMAT_VERSION} (the model fingerprint changed); recalibrate with `oscar-eval calibrate rotatekv`"
        )
    return data
