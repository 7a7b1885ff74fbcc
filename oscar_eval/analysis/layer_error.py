"""Per-layer attention-output error of KV-cache methods, each layer isolated, plus key statistics.

For one prompt the full-precision model runs once; its attention function records every layer's
post-RoPE queries, keys and values (and the decoder layer's input, for methods that observe it). Then,
per layer and method, only that layer's K/V go through the method's own cache layer
(:class:`oscar_core.cache.PackedKVLayer`: the real encoders, window and flush policy): the first
``prompt_tokens`` are committed as a prompt (quantized as the cache does after prefill) and the last
``steps`` tokens are appended one by one as decode steps. Each step's query attends the rebuilt cache
timeline and is compared with the same query attending the full-precision K/V:
``||o_method - o_fp|| / ||o_fp||`` over all steps and query heads. Errors therefore never compound
across layers: each number is that layer's own damage.

Also per layer, method-independent: key-norm statistics (token 0 / median: the attention sink), the
``k_proj`` bias against the keys it is added to, and how concentrated the per-channel key energy is
before and after the per-head Hadamard (the rotation OScaR and QuaRot apply).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from oscar_core.cache import PackedKVLayer
from oscar_core.hadamard import hadamard_transform
from oscar_core.methods import MethodSpec
from oscar_core.methods.base import LayerState
from oscar_core.methods.oscar import token_norms
from oscar_core.model import inspect_model

CAPTURE_ATTN = "oscar_layer_capture"


@dataclass
class LayerInputs:
    """One layer's attention inputs for one prompt (batch 1, float32)."""

    layer: int
    q: torch.Tensor  # [1, Hq, T, D] post-RoPE
    k: torch.Tensor  # [1, Hkv, T, D] post-RoPE (after k_norm where the model has one)
    v: torch.Tensor  # [1, Hkv, T, D] as the unmodified v_proj produces them
    hidden: torch.Tensor | None  # [1, T, hidden] the decoder layer's input
    scaling: float
    k_bias: torch.Tensor | None  # [Hkv * D] k_proj bias, or None


@torch.no_grad()
def capture_layer_inputs(model: torch.nn.Module, input_ids: torch.Tensor) -> list[LayerInputs]:
    """Run ``input_ids`` (``[1, T]``) through the unmodified model once, recording each layer's Q/K/V.

    The model must not be prepared for a rotating method (its v_proj would hold the rotation).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, tokens], got shape {tuple(input_ids.shape)}")
    info = inspect_model(model)
    if any(getattr(m, "_oscar_vo_rotated", False) for m in info.attention_modules.values()):
        raise ValueError("the model's V/O projections are rotated (prepared for a rotating method); "
                         "load it afresh or prepare it for fp16 first")
    seen: dict[int, dict] = {}

    def record(module, query, key, value, attention_mask, **kwargs):
        seen[module.layer_idx] = {"q": query.float(), "k": key.float(), "v": value.float(),
                                  "scaling": float(kwargs.get("scaling") or module.scaling)}
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    hidden: dict[int, torch.Tensor] = {}
    hooks = []
    for layer in model.modules():
        attn = getattr(layer, "self_attn", None)
        if attn is not None and getattr(attn, "layer_idx", None) in info.attention_modules:
            def pre(mod, args, kwargs, idx=attn.layer_idx):
                x = args[0] if args else kwargs.get("hidden_states")
                hidden[idx] = x.float()
            hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
    AttentionInterface.register(CAPTURE_ATTN, record)
    config = info.text_config
    original = config._attn_implementation
    config._attn_implementation = CAPTURE_ATTN
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model(input_ids=input_ids, use_cache=False)
    finally:
        config._attn_implementation = original
        for h in hooks:
            h.remove()
    missing = sorted(set(info.attention_modules) - set(seen))
    if missing:
        raise RuntimeError(f"layers {missing} did not run through the attention interface")
    out = []
    for i in sorted(seen):
        bias = info.attention_modules[i].k_proj.bias
        out.append(LayerInputs(i, seen[i]["q"], seen[i]["k"], seen[i]["v"], hidden.get(i), seen[i]["scaling"],
                               None if bias is None else bias.detach().float().clone()))
    return out


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])


def _steps_attention(q: torch.Tensor, k_hat: torch.Tensor, k_full: torch.Tensor, v_hat: torch.Tensor,
                     v_full: torch.Tensor, n_k: torch.Tensor, n_v: torch.Tensor, scaling: float) -> torch.Tensor:
    """All decode steps at once: query ``s`` of ``q`` ``[1, Hq, S, D]`` is token ``T - S + s`` and attends
    tokens up to itself; of those, the first ``n_k[s]`` keys (``n_v[s]`` values) come from the quantized
    ``k_hat`` (``v_hat``), the rest from ``k_full`` (``v_full``), all ``[1, Hkv, T, D]``."""
    steps, total = q.shape[2], k_full.shape[2]
    group = q.shape[1] // k_full.shape[1]
    k_hat, k_full, v_hat, v_full = (x.repeat_interleave(group, dim=1) for x in (k_hat, k_full, v_hat, v_full))
    pos = torch.arange(total)
    quant_k = pos[None, :] < n_k[:, None]  # [S, T]
    quant_v = (pos[None, :] < n_v[:, None]).to(q.dtype)
    scores = torch.where(quant_k, q @ k_hat.transpose(-1, -2), q @ k_full.transpose(-1, -2)) * scaling
    future = pos[None, :] > (total - steps + torch.arange(steps))[:, None]
    p = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return (p * quant_v) @ v_hat + (p * (1 - quant_v)) @ v_full


@torch.no_grad()
def layer_output_error(spec: MethodSpec, x: LayerInputs, shared: dict | None = None, prompt_tokens: int | None = None,
                       steps: int = 64, exact: bool = False) -> dict[str, float]:
    """One method's error on one isolated layer (see the module docstring).

    ``shared``: the method's per-layer state from ``spec.init_layer_states`` (None: empty). Returns the
    attention-output relative error with keys and values quantized (``output``), keys only
    (``output_keys_only``), values only (``output_values_only``), and the reconstruction errors of the
    keys and values the cache holds quantized after the last step (``key``, ``value``; window tokens
    are exact and excluded), with the number of those tokens.

    ``exact=True`` rebuilds the cache's timeline (``attention_inputs``) at every step and attends it
    step by step (slow; the tests' oracle). The default rebuilds it once, after the last step, and
    gives step ``t`` the quantized prefix the cache held then (its quantized-token counts are recorded
    at each step) and full precision after it, all steps in one masked attention: the same K/V, since
    the cache quantizes each token exactly once, oldest first, and never re-encodes it.
    """
    total = x.k.shape[2]
    prompt_tokens = total - steps if prompt_tokens is None else prompt_tokens
    if steps < 1 or prompt_tokens < 1 or prompt_tokens + steps > total:
        raise ValueError(f"prompt_tokens={prompt_tokens} + steps={steps} must fit the {total} captured tokens")
    layer = PackedKVLayer(spec, state=LayerState(x.layer, shared if shared is not None else {}))
    v_cache = spec.values_to_cache(x.v)  # what a v_proj with the method's fused rotation produces
    if spec.observes_layer_input and x.hidden is not None:
        layer.layer_input = x.hidden[:, :prompt_tokens]
    if getattr(spec, "observes_prompt_queries", False):  # as the attention function hands them over
        layer.prompt_queries = spec.query_to_attention(x.q[:, :, :prompt_tokens])
    k0, v0 = layer.update(x.k[:, :, :prompt_tokens], v_cache[:, :, :prompt_tokens])
    layer.attention_inputs(k0, v0, [0])  # commits (quantizes) the prompt as after prefill
    k_att = spec.keys_to_attention(x.k)
    timelines, counts = [], []
    for t in range(prompt_tokens, prompt_tokens + steps):
        kt, vt = layer.update(x.k[:, :, t : t + 1], v_cache[:, :, t : t + 1])
        counts.append((layer.k.quantized_tokens(0), layer.v.quantized_tokens(0)))
        if exact:
            timelines.append(layer.attention_inputs(kt, vt, None))
    k_last, v_last = timelines[-1] if exact else layer.attention_inputs(kt, vt, None)
    k_last, v_last = k_last.float(), v_last.float()
    end = prompt_tokens + steps
    k_full, v_full = k_att[:, :, :end], v_cache[:, :, :end]
    q = spec.query_to_attention(x.q[:, :, prompt_tokens:end])
    none = torch.zeros(steps, dtype=torch.long)
    n_k, n_v = (torch.tensor([c[j] for c in counts]) for j in (0, 1))
    variants = {"output": (n_k, n_v), "output_keys_only": (n_k, none), "output_values_only": (none, n_v)}
    ref = _steps_attention(x.q[:, :, prompt_tokens:end], x.k[:, :, :end], x.k[:, :, :end], x.v[:, :, :end],
                           x.v[:, :, :end], none, none, x.scaling)
    if exact:  # every step over the timeline the cache rebuilt at that step
        outs = {name: [] for name in variants}
        for i, t in enumerate(range(prompt_tokens, end)):
            k_hat, v_hat = (z.float() for z in timelines[i])
            for name, (kk, vv) in (("output", (k_hat, v_hat)), ("output_keys_only", (k_hat, v_full[:, :, : t + 1])),
                                   ("output_values_only", (k_full[:, :, : t + 1], v_hat))):
                outs[name].append(_attend(q[:, :, i : i + 1], kk, vv, x.scaling))
        got = {name: torch.cat(o, dim=2) for name, o in outs.items()}
    else:
        got = {name: _steps_attention(q, k_last, k_full, v_last, v_full, a, b, x.scaling)
               for name, (a, b) in variants.items()}
    result = {name: _rel(spec.values_from_cache(o), ref) for name, o in got.items()}
    n_k, n_v = counts[-1]
    keys = spec.keys_from_attention(k_last.float())
    values = spec.values_from_cache(v_last.float())
    result["key"] = _rel(keys[:, :, :n_k], x.k[:, :, :n_k]) if n_k else float("nan")
    result["value"] = _rel(values[:, :, :n_v], x.v[:, :, :n_v]) if n_v else float("nan")
    result["key_tokens_quantized"], result["value_tokens_quantized"] = n_k, n_v
    return result


def top_channel_fraction(k: torch.Tensor, top: int = 4) -> float:
    """Share of the key energy in the ``top`` channels of largest energy, per head, averaged over heads."""
    energy = k.float().pow(2).sum(dim=(0, 2))  # [H, D]
    share = energy.topk(top, dim=-1).values.sum(-1) / energy.sum(-1).clamp_min(1e-30)
    return float(share.mean())


def group_range_energy(k: torch.Tensor, group: int = 32) -> float:
    """Sum over per-channel groups of ``group`` tokens of ``(max - min)^2``, over the keys' energy.

    Min-max quantization's squared error is proportional to the squared range of each group, so the
    ratio of this number between two bases predicts their per-channel quantization error ratio.
    """
    t = k.shape[2] // group * group
    x = k[:, :, :t].float().reshape(k.shape[0], k.shape[1], t // group, group, k.shape[3])
    rng = x.amax(dim=3) - x.amin(dim=3)
    return float(rng.pow(2).sum() * group / x.pow(2).sum().clamp_min(1e-30))


@torch.no_grad()
def key_statistics(x: LayerInputs) -> dict[str, float]:
    """Method-independent key statistics of one layer (norms over all KV heads of a token)."""
    norms = token_norms(x.k)[0]  # [T], OScaR's own per-token norm over all KV heads
    median = float(norms.median())
    rotated = hadamard_transform(x.k)
    out = {
        "key_norm_median": median,
        "sink_ratio": float(norms[0] / median),  # token 0 / median
        "min_ratio": float(norms.min() / median),
        "max_ratio": float(norms.max() / median),
        "top4_channel_energy": top_channel_fraction(x.k),
        "top4_channel_energy_rotated": top_channel_fraction(rotated),
        "group_range_energy": group_range_energy(x.k),
        "group_range_energy_rotated": group_range_energy(rotated),
    }
    if x.k_bias is not None:
        # RoPE rotates the bias pairwise without changing its norm, so it compares to post-RoPE keys
        out["k_bias_norm"] = float(x.k_bias.norm())
        out["k_bias_over_mean_key_norm"] = float(x.k_bias.norm() / norms.mean())
    return out


def analyze_layers(inputs: list[LayerInputs], specs: dict[str, MethodSpec],
                   shared: dict[str, list[dict]] | None = None, steps: int = 64,
                   prompt_tokens: int | None = None, progress=None) -> list[dict]:
    """Per layer: :func:`key_statistics` and, per labelled spec, :func:`layer_output_error`."""
    rows = []
    for x in inputs:
        row = {"layer": x.layer, **key_statistics(x), "methods": {}}
        for label, spec in specs.items():
            state = (shared or {}).get(label)
            row["methods"][label] = layer_output_error(spec, x, state[x.layer] if state else None,
                                                       prompt_tokens, steps)
        rows.append(row)
        if progress is not None:
            progress(x.layer)
    return rows
