"""Offline calibration (RotateKV's per-layer key channel permutations) and its store.

:func:`calibrate_rotatekv` runs the model on a local text file the user gives (never evaluation
data), collects each layer's keys, undoes RoPE, applies RoPE-free grouped-head Hadamard
(:func:`oscar_core.methods.rotatekv.grouped_hadamard`), sums every one of the layer's ``H*D`` rotated
channels over all calibration tokens (signed, as the official ``k_reordering_calibration.py``) and
sorts the channels ascending: the permutation of that layer.

A calibration is stored as one ``.pt`` file (a dict of tensors and plain values, loadable with
``torch.load(weights_only=True)``) named by the model's *fingerprint* and the ``head_group`` it was
computed with (the permutation sorts *rotated* channels, so it is only valid for that head group; the
quantization group size does not enter it). The fingerprint is a SHA-256 over the text decoder's
configuration (private and dtype entries excluded) and a fixed sample of the weights that determine
the keys (embeddings, norms, q/k projections; not v/o, which methods rotate in place): 4096 evenly
spaced elements per tensor at exact int64 indices. A calibration is only ever used for the model and
head group it carries; ``make_cache`` finds it in the store (default folder ``results/calibration``,
or ``$OSCAR_EVAL_CALIBRATION_DIR``) or loads an explicit ``calibration=PATH`` after checking both.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from oscar_core.methods.base import MethodConfigError

#: 2: exact integer fingerprint sample indices (format 1's float32 ones differ); head group in the name
FORMAT_VERSION = 2
_SAMPLES_PER_TENSOR = 4096


def default_calibration_dir() -> Path:
    """``$OSCAR_EVAL_CALIBRATION_DIR`` or ``results/calibration`` (next to the default results store)."""
    return Path(os.environ.get("OSCAR_EVAL_CALIBRATION_DIR", "results/calibration"))


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
    from oscar_core.model import _text_model

    decoder = _text_model(model)
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


def _stored_head_groups(fingerprint: str, directory: Path) -> dict[int, Path]:
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


def _calibrate_hint(spec: Any, info: Any) -> str:
    from oscar_core.methods.rotatekv import default_head_group

    flag = "" if spec.head_group == default_head_group(info.num_kv_heads, info.head_dim) else \
        f" --set head_group={spec.head_group}"
    return f"`oscar-eval calibrate rotatekv --model PATH --text FILE{flag}`"


def permutations_for(spec: Any, model: torch.nn.Module, info: Any) -> list[torch.Tensor]:
    """Per-layer permutations ``[H*D]`` for ``spec.calibration`` on ``model`` (clear errors otherwise)."""
    spec = spec.resolve_for_model(info.num_kv_heads, info.head_dim)
    hd = info.num_kv_heads * info.head_dim
    if spec.calibration == "identity":
        return [torch.arange(hd) for _ in range(info.num_layers)]
    fp = model_fingerprint(model)
    if spec.calibration is None:
        path = calibration_path(fp, head_group=spec.head_group)
        if not path.is_file():
            others = _stored_head_groups(fp, path.parent)
            if others:
                listed = ", ".join(f"head_group={g} ({p})" for g, p in others.items())
                raise MethodConfigError(
                    f"rotatekv: this model's calibration for head_group={spec.head_group} (the value this cache "
                    f"uses) is not at {path}; found {listed}. A permutation is only valid for the head group it "
                    f"was computed with: run with that head_group, or calibrate with {_calibrate_hint(spec, info)}"
                )
            raise MethodConfigError(
                f"rotatekv needs a calibration for this model (fingerprint {fp[:12]}, head_group={spec.head_group}), "
                f"none found at {path}. Create one with {_calibrate_hint(spec, info)} (a text file of your choice, "
                "never evaluation data), pass calibration=PATH, or calibration='identity' to run without reordering"
            )
    else:
        path = Path(spec.calibration)
    data = load_calibration(path)
    if data.get("model_fingerprint") != fp:
        raise MethodConfigError(
            f"rotatekv: calibration {path} belongs to another model (fingerprint "
            f"{str(data.get('model_fingerprint'))[:12]}, this model is {fp[:12]}); recalibrate for this model"
        )
    if int(data["head_group"]) != spec.head_group:
        raise MethodConfigError(
            f"rotatekv: calibration {path} was computed with head_group={data['head_group']}, this cache uses "
            f"head_group={spec.head_group}; run with head_group={data['head_group']} or calibrate with "
            f"{_calibrate_hint(spec, info)}"
        )
    perms = data["permutations"]
    if tuple(perms.shape) != (info.num_layers, hd):
        raise MethodConfigError(
            f"rotatekv: calibration {path} has permutations of shape {tuple(perms.shape)}, expected "
            f"({info.num_layers}, {hd}) for this model"
        )
    return [perms[i].long() for i in range(info.num_layers)]


@torch.no_grad()
def calibrate_rotatekv(
    model: torch.nn.Module,
    tokenizer: Any,
    text_path: str | Path,
    *,
    seq_len: int = 2048,
    max_tokens: int = 2048 * 64,
    head_group: int | None = None,
    out_dir: str | Path | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Compute (and by default store) RotateKV's per-layer key channel permutations.

    The text is tokenized once, cut into chunks of ``seq_len`` tokens (at most ``max_tokens`` in all),
    and each chunk is run through the model with a plain transformers cache, whose post-RoPE keys are
    rotated back to pre-RoPE (positions ``0..seq_len-1``). ``head_group`` None: the model's default, as
    ``make_cache`` resolves it (:func:`oscar_core.methods.rotatekv.default_head_group`). Returns the
    calibration dict (also written to :func:`calibration_path` under ``out_dir`` when ``save``; its
    ``"path"`` entry says where).
    """
    from transformers import DynamicCache

    from oscar_core.methods.rotatekv import (
        RotateKVSpec,
        grouped_hadamard,
        rope_per_layer,
        rope_tables,
        undo_rope,
    )
    from oscar_core.model import inspect_model

    text_path = Path(text_path)
    if not text_path.is_file():
        raise MethodConfigError(f"calibration text file {text_path} does not exist")
    text = text_path.read_text(encoding="utf-8", errors="replace")
    info = inspect_model(model)
    spec = RotateKVSpec(head_group=head_group).resolve_for_model(info.num_kv_heads, info.head_dim)
    spec.check_model(info.num_kv_heads, info.head_dim)  # names the head groups that work on this model
    head_group = spec.head_group
    ropes = rope_per_layer(model, info.num_layers, info.head_dim)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0][:max_tokens]
    if ids.numel() < 2:
        raise MethodConfigError(f"calibration text {text_path} has fewer than 2 tokens")
    device = next(model.parameters()).device
    hd = info.num_kv_heads * info.head_dim
    sums = torch.zeros(info.num_layers, hd, dtype=torch.float64)
    n_tokens = 0
    for start in range(0, ids.numel(), seq_len):
        chunk = ids[start : start + seq_len].unsqueeze(0).to(device)
        # No config: every layer keeps all t keys (a sliding-window layer would keep only its window).
        cache = DynamicCache()
        model(input_ids=chunk, **{_cache_kwarg(model): cache}, use_cache=True)
        t = chunk.shape[1]
        positions = torch.arange(t, device=device)[None, :]
        for layer in range(info.num_layers):
            cos, sin = rope_tables(ropes[layer][0], positions, ropes[layer][1])
            k = cache.layers[layer].keys.float()  # [1, H, t, D] post-RoPE
            rotated = grouped_hadamard(undo_rope(k, cos, sin), head_group)  # [1, t, H*D]
            sums[layer] += rotated.sum(dim=(0, 1)).double().cpu()
        n_tokens += t
    for module in info.attention_modules.values():  # a capture hook (rotatekv-prepared model) has no consumer here
        module.__dict__.pop("_oscar_layer_input", None)
    perms = torch.stack([torch.sort(sums[layer]).indices for layer in range(info.num_layers)])
    fp = model_fingerprint(model)
    data: dict[str, Any] = {
        "method": "rotatekv",
        "format_version": FORMAT_VERSION,
        "model_fingerprint": fp,
        "model_class": type(model).__name__,
        "num_layers": info.num_layers,
        "num_kv_heads": info.num_kv_heads,
        "head_dim": info.head_dim,
        "head_group": head_group,
        "permutations": perms,
        "channel_sums": sums.float(),
        "text_file": str(text_path),
        "text_sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(),
        "n_tokens": n_tokens,
        "seq_len": seq_len,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if save:
        path = calibration_path(fp, out_dir, head_group=head_group)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(path)
        data["path"] = str(path)
    return data


def _cache_kwarg(model: torch.nn.Module) -> str:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"
