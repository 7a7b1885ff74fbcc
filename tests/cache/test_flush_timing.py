"""Decode-step flush timing, pinned against official KIVI's policy (jy-yuan/KIVI ``models/llama_kivi.py``).

Official KIVI, per decode step: the new key joins the full-precision key buffer, the step attends it,
and a buffer that reached R keys is quantized *after* the attention; the new value joins the value
buffer, the step attends it, and the oldest value is quantized after the attention when the buffer
holds more than R. The simulation below replays exactly that bookkeeping; the cache's window after
each step (flushes happen when a token arrives, before attention) must equal what the official code
attended in full precision at that step.
"""

from __future__ import annotations

import pytest
import torch

import oscar_core as oc
from tests.tiny_models import llama

R = 32


def _official_attended_windows(prompt_len: int, steps: int, sliding_values: bool) -> list[tuple[int, int]]:
    """(keys, values) attended in full precision at each decode step, by official KIVI's rules."""
    kf = prompt_len % R
    vf = min(prompt_len, R) if sliding_values else kf
    out = []
    for _ in range(steps):
        kf += 1
        vf += 1
        out.append((kf, vf))
        if kf == R:  # the filled key block is quantized after the step's attention
            kf = 0
        if sliding_values and vf > R:  # the oldest value is quantized after the step's attention
            vf -= 1
        elif not sliding_values and vf == R:
            vf = 0
    return out


@pytest.mark.parametrize("prompt_len", [R - 1, R, R + 1, 2 * R + 5])
@pytest.mark.parametrize("method", ["kivi", "oscar"])
def test_window_attended_at_each_step_matches_official_kivi(method, prompt_len):
    model, inputs = llama()
    cache = oc.make_cache(model, method, residual_length=R)
    steps = 2 * R + 3
    ids = inputs(prompt_len + steps)["input_ids"]
    expected = _official_attended_windows(prompt_len, steps, sliding_values=method == "kivi")
    with torch.no_grad():
        model(input_ids=ids[:, :prompt_len], past_key_values=cache, use_cache=True)
        for n in range(steps):
            t = prompt_len + n
            model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            total = t + 1
            for layer in cache.layers:
                got = (layer.k.buf_len[0], layer.v.buf_len[0])
                assert got == expected[n], f"step {n}: window {got}, official KIVI attends {expected[n]}"
                assert layer.k.length(0) == layer.v.length(0) == total


def test_kivi_attends_the_last_r_plus_one_values_unquantized():
    """The values attended in full precision are the raw ones, the one before them is quantized."""
    model, inputs = llama(num_hidden_layers=1)
    cache = oc.make_cache(model, "kivi", residual_length=R)
    prompt_len, steps = 2 * R, 5
    ids = inputs(prompt_len + steps)["input_ids"]
    raw: list[torch.Tensor] = []
    attn = model.model.layers[0].self_attn
    hook = attn.v_proj.register_forward_hook(lambda m, a, out: raw.append(out.detach().clone()))
    with torch.no_grad():
        model(input_ids=ids[:, :prompt_len], past_key_values=cache, use_cache=True)
        for t in range(prompt_len, prompt_len + steps):
            model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
    hook.remove()
    heads, dim = model.config.num_key_value_heads, model.config.head_dim
    values = torch.cat(raw, dim=1).view(1, -1, heads, dim).transpose(1, 2)  # [1, H, T, D]
    layer = cache.layers[0]
    history = layer._timeline(layer.v)
    total = prompt_len + steps
    assert history.shape[2] == total
    torch.testing.assert_close(history[:, :, -(R + 1):], values[:, :, -(R + 1):], rtol=0, atol=0)
    assert not torch.equal(history[:, :, -(R + 2)], values[:, :, -(R + 2)])


# -- timeline oracle: the cache's dequantized history equals an independent block-by-block assembly ---

STATELESS = [("kivi", {}), ("kivi", {"value_flush": "block"}), ("oscar", {}), ("oscar", {"rotation": False}),
             ("oscar", {"token_scaling": False}), ("quarot", {})]


def _record_updates(cache) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """What transformers hands the cache (post-RoPE keys, values as the (fused) v_proj made them)."""
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    update = cache.update

    def spy(key_states, value_states, layer_idx, *args, **kwargs):
        seen.setdefault(layer_idx, []).append((key_states.detach().clone(), value_states.detach().clone()))
        return update(key_states, value_states, layer_idx, *args, **kwargs)

    cache.update = spy
    return seen


def _assemble(spec, raw: torch.Tensor, n_quant: int, unit: int, is_key: bool) -> torch.Tensor:
    """``reference.roundtrip_*`` over the first ``n_quant`` tokens in ``unit``-token blocks, raw after."""
    parts = []
    for start in range(0, n_quant, unit):
        block = raw[:, :, start : start + unit]
        if is_key:  # raw keys are in the model basis; the cache holds the attention basis
            parts.append(spec.keys_to_attention(oc.reference.roundtrip_keys(spec, block)))
        else:  # recorded values are already in the cache basis (the V/O rotation is fused)
            parts.append(spec.values_to_cache(oc.reference.roundtrip_values(spec, spec.values_from_cache(block))))
    window = raw[:, :, n_quant:]
    parts.append(spec.keys_to_attention(window) if is_key else window)
    return torch.cat(parts, dim=2)


@pytest.mark.parametrize("method,overrides", STATELESS, ids=[f"{m}-{o}" for m, o in STATELESS])
def test_history_after_every_step_equals_block_by_block_reference(method, overrides):
    model, inputs = llama()
    spec = oc.get_method(method, residual_length=R, **overrides)
    cache = oc.make_cache(model, spec)
    seen = _record_updates(cache)
    prompt_len, steps = R + 7, 2 * R + 2
    ids = inputs(prompt_len + steps)["input_ids"]
    sliding = spec.value_flush == "token"
    windows = _official_attended_windows(prompt_len, steps, sliding_values=sliding)
    with torch.no_grad():
        model(input_ids=ids[:, :prompt_len], past_key_values=cache, use_cache=True)
        for n in range(steps):
            t = prompt_len + n
            model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            if n % 7 and n != steps - 1:  # every 7th step and the last: enough to see every flush kind
                continue
            total = t + 1
            k_window, v_window = windows[n]
            for idx, layer in enumerate(cache.layers):
                raw_k = torch.cat([k for k, _ in seen[idx]], dim=2)
                raw_v = torch.cat([v for _, v in seen[idx]], dim=2)
                want_k = _assemble(spec, raw_k, total - k_window, R, True)
                want_v = _assemble(spec, raw_v, total - v_window, 1 if sliding else R, False)
                torch.testing.assert_close(layer._timeline(layer.k), want_k, rtol=0, atol=1e-5)
                torch.testing.assert_close(layer._timeline(layer.v), want_v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["oscar", "kivi", "quarot"])
def test_left_padded_batch_logits_equal_each_sequence_alone(method):
    """Teacher-forced decode through several flushes: the batch's logits per step equal each sequence's
    own, so padding neither enters a group nor shifts a window (per-sequence alignment)."""
    model, _ = llama()
    g = torch.Generator().manual_seed(5)
    lengths, steps = (R + 9, 2 * R + 3), R + 6
    seqs = [torch.randint(3, 200, (n + steps,), generator=g) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, (n, s) in enumerate(zip(lengths, seqs, strict=True)):
        ids[b, width - n:] = s[:n]
        mask[b, width - n:] = 1

    def run(prompt, prompt_mask, follow):
        # Positions count real tokens only, as generate() makes them: post-RoPE keys (what is quantized)
        # of a padded sequence are then those of the sequence alone.
        cache = oc.make_cache(model, method, residual_length=R)
        out = []
        with torch.no_grad():
            pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=prompt, attention_mask=prompt_mask, position_ids=pos, past_key_values=cache,
                           use_cache=True).logits[:, -1]
            out.append(logits)
            for n in range(steps - 1):
                prompt_mask = torch.cat([prompt_mask, torch.ones_like(prompt_mask[:, :1])], dim=1)
                pos = prompt_mask.sum(-1, keepdim=True) - 1
                logits = model(input_ids=follow[:, n : n + 1], attention_mask=prompt_mask, position_ids=pos,
                               past_key_values=cache, use_cache=True).logits[:, -1]
                out.append(logits)
        return torch.stack(out, dim=1)  # [B, steps, vocab]

    follow = torch.stack([s[n:] for n, s in zip(lengths, seqs, strict=True)])
    batched = run(ids, mask, follow)
    for b, (n, s) in enumerate(zip(lengths, seqs, strict=True)):
        alone = run(s[None, :n], torch.ones(1, n, dtype=torch.long), follow[b : b + 1])
        torch.testing.assert_close(batched[b], alone[0], rtol=1e-4, atol=1e-4, msg=f"sequence {b}")
