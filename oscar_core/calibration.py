"""Offline calibration of RotateKV's per-layer key channel permutations (:func:`calibrate_rotatekv`).

:func:`calibrate_rotatekv` runs the model on a local text file the user gives (never evaluation
data), collects each layer's keys, undoes RoPE, applies RoPE-free grouped-head Hadamard
(:func:`oscar_core.methods.rotatekv.grouped_hadamard`), sums every one of the layer's ``H*D`` rotated
channels over all calibration tokens (signed, as the official ``k_reordering_calibration.py``) and
sorts the channels ascending: the permutation of that layer. Where it is stored, and the fingerprint
that names it: :mod:`oscar_core.calibration_store` (its names are importable from here too).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

import torch

from oscar_core.calibration_store import (
    FORMAT_VERSION,
    calibration_path,
    default_calibration_dir,
    load_calibration,
    model_fingerprint,
    sample_indices,
)
from oscar_core.compat import forward_cache_kwarg
from oscar_core.methods.base import MethodConfigError

__all__ = ["FORMAT_VERSION", "calibrate_rotatekv", "calibration_path", "default_calibration_dir",
           "load_calibration", "model_fingerprint", "sample_indices"]


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
        model(input_ids=chunk, **{forward_cache_kwarg(model): cache}, use_cache=True)
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
