"""A decode step of the kernel-layout cache makes the host wait for nothing (oscar-eval issue 15).

The fallback kernel cache (``kernels="fallback"``) runs the Python path of the CUDA one, so refusing every
host synchronisation, host-made tensor and device move inside its decode steps (``cache.update`` and the
attention call of each layer after the prompt, flushes included) checks the CUDA path's host side on a CPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from tiny_models import llama
from transformers.modeling_utils import AttentionInterface

import oscar_core as oc
from oscar_core.cache.attention import ATTN_NAME
from oscar_core.cache.host_sync import DEVICE_MOVE, HOST_TENSOR, KINDS, SYNC, HostSyncError, HostSyncWatch
from oscar_core.kernel_cache import KernelOScaRLayer

R = 32


def _model(dtype=torch.float32):
    model, inputs = llama(head_dim=64, hidden_size=192, num_attention_heads=3, num_key_value_heads=3,
                          num_hidden_layers=2)
    return model.to(dtype), inputs


def _inputs(inputs, pads: list[int], prompt: int = 70):
    x = inputs(prompt, batch=len(pads))
    for b, pad in enumerate(pads):
        x["attention_mask"][b, :pad] = 0
    return x


@contextmanager
def _watched_decode_steps(cache, watch: HostSyncWatch):
    """Watch every layer's ``cache.update`` and attention call once that layer holds a prompt; yields a
    dict counting the watched calls and the key blocks flushed during them."""
    seen = {"calls": 0, "flushed": 0}
    decoding = {}
    update, attention = cache.update, AttentionInterface._global_mapping[ATTN_NAME]

    def blocks(layer):
        return sum(layer.k.n_units) if layer.k.n_units else 0

    def watched_update(key_states, value_states, layer_idx, *args, **kwargs):
        layer = cache.layers[layer_idx]
        decoding["layer"] = layer if layer.get_seq_length() > 0 else None
        if decoding["layer"] is None:
            return update(key_states, value_states, layer_idx, *args, **kwargs)
        before = blocks(layer)
        with watch.watching():
            out = update(key_states, value_states, layer_idx, *args, **kwargs)
        seen["calls"] += 1
        seen["flushed"] += blocks(layer) - before
        return out

    def watched_attention(*args, **kwargs):
        if decoding.pop("layer", None) is None:
            return attention(*args, **kwargs)
        with watch.watching():
            out = attention(*args, **kwargs)
        seen["calls"] += 1
        return out

    cache.update = watched_update
    AttentionInterface._global_mapping[ATTN_NAME] = watched_attention
    try:
        yield seen
    finally:
        AttentionInterface._global_mapping[ATTN_NAME] = attention
        del cache.update


def _generate(model, x, cache, n: int):
    return model.generate(**x, past_key_values=cache, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0)


@pytest.mark.parametrize(("pads", "r"), [([0, 0], R), ([0, 5, 21], R), ([0, 2], 2 * R)],
                         ids=["flushes-together", "staggered-flushes", "window-grows"])
def test_fallback_kernel_decode_steps_never_wait_for_the_device(pads, r):
    model, inputs = _model()
    x = _inputs(inputs, pads)
    n = 2 * r + 3  # every sequence's window fills and flushes twice (at different steps when staggered)
    cache = oc.make_cache(model, "oscar", kernels="fallback", residual_length=r)
    with HostSyncWatch(refuse=KINDS) as watch, _watched_decode_steps(cache, watch) as seen:
        out = _generate(model, x, cache, n)
    assert isinstance(cache.layers[0], KernelOScaRLayer)
    layers = model.config.num_hidden_layers
    assert seen["calls"] == 2 * layers * (n - 1)  # every decode step was watched, none refused
    assert seen["flushed"] == 2 * len(pads) * layers  # two block flushes per sequence, inside watched steps
    for layer in cache.layers:  # the device-side lengths followed the host's through the flushes
        assert layer._dev_lens.tolist() == layer._host_lens()
    # fp32: the kernel layout's fallback decode picks the reference path's tokens, step for step
    if r > R:  # the window buffer started at 32 tokens of room and grew by 32 to R
        assert cache.layers[0].k.buf.shape[2] == r
    ref = _generate(model, x, oc.make_cache(model, "oscar", kernels="off", residual_length=r), n)
    assert torch.equal(out, ref)


def test_bf16_kernel_decode_is_sync_free_and_attends_like_the_reference():
    model, inputs = _model(torch.bfloat16)
    x = _inputs(inputs, [0, 13])
    g = torch.Generator().manual_seed(3)
    follow = torch.randint(3, 200, (2, 2 * R), generator=g)

    def logits(cache, watch=None):
        mask, out = x["attention_mask"], []
        with torch.no_grad():
            model(**x, past_key_values=cache, use_cache=True)
            for t in range(follow.shape[1]):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out.append(model(input_ids=follow[:, t : t + 1], attention_mask=mask, past_key_values=cache,
                                 use_cache=True).logits[:, -1].float())
        return torch.stack(out, 1)

    cache = oc.make_cache(model, "oscar", kernels="fallback", residual_length=R)
    with HostSyncWatch(refuse=KINDS) as watch, _watched_decode_steps(cache, watch) as seen:
        got = logits(cache)
    assert seen["flushed"] == 2 * 2 * model.config.num_hidden_layers  # bf16 flushes: the pack-kernel path
    ref = logits(oc.make_cache(model, "oscar", kernels="off", residual_length=R))
    torch.testing.assert_close(got, ref, rtol=0, atol=0.05)  # fp32 kernel math vs bf16 SDPA


def test_the_watch_catches_each_kind_only_while_watching():
    t, n = torch.arange(4.0), torch.tensor(2)
    mask = t > 1
    cases = {
        SYNC: [lambda: t.sum().item(), lambda: t.tolist(), lambda: bool(t[0]), lambda: int(t[1]),
               lambda: t[mask], lambda: t.nonzero(), lambda: torch.where(mask), lambda: t[:n],
               lambda: torch.equal(t, t), lambda: t.cpu()],
        HOST_TENSOR: [lambda: torch.tensor([1, 2]), lambda: torch.arange(3), lambda: torch.zeros(2)],
        DEVICE_MOVE: [lambda: t.to("cpu"), lambda: t.to(t)],
    }
    index = torch.tensor([0, 2])
    allowed = [lambda: t.to(torch.float64), lambda: torch.arange(3, device=t.device), lambda: t.new_zeros(2),
               lambda: t[1:3], lambda: t[index], lambda: t.repeat_interleave(2), lambda: torch.where(mask, t, 0)]
    with HostSyncWatch(refuse=KINDS) as watch:
        for kind, calls in cases.items():
            for call in calls:
                call()  # outside watching(): allowed
                with watch.watching(), pytest.raises(HostSyncError, match=kind):
                    call()
        for call in allowed:
            with watch.watching():
                call()
    counting = HostSyncWatch()
    with counting, counting.watching():
        t.tolist()
        torch.tensor([0, 2])
    assert counting.counts == {SYNC: 1, HOST_TENSOR: 1}
    assert torch.Tensor.tolist is not None and bool(torch.ones(1))  # the originals are back
    # and Python's view of Tensor is as before: 0-d tensors are not sequences (transformers' Qwen3-VL rope
    # index builds a tensor from a list of them; a watch that left the sequence slot set broke it)
    assert torch.tensor([torch.tensor(1), torch.tensor(2)]).tolist() == [1, 2]
    with pytest.raises(ValueError, match="unknown kinds"):
        HostSyncWatch(refuse=("syncs",))


def test_fallback_kernel_cache_follows_beam_search_and_crop_like_the_reference():
    # reordering (beam search) and cropping rebuild the device-side lengths and the window buffers
    model, inputs = _model()
    x = _inputs(inputs, [0, 9])
    beams = {mode: model.generate(**x, past_key_values=oc.make_cache(model, "oscar", kernels=mode, residual_length=R),
                                  max_new_tokens=40, min_new_tokens=40, num_beams=2, do_sample=False, pad_token_id=0)
             for mode in ("fallback", "off")}
    assert torch.equal(beams["fallback"], beams["off"])
    follow = torch.randint(3, 200, (2, 50), generator=torch.Generator().manual_seed(1))
    logits = {}
    for mode in ("fallback", "off"):
        cache = oc.make_cache(model, "oscar", kernels=mode, residual_length=R)
        mask, out = x["attention_mask"], []
        with torch.no_grad():
            model(**x, past_key_values=cache, use_cache=True)
            for t in range(50):
                if t == 30:  # both sequences flushed once; take back 3 window tokens
                    cache.crop(-3)
                    mask = mask[:, :-3]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out.append(model(input_ids=follow[:, t : t + 1], attention_mask=mask, past_key_values=cache,
                                 use_cache=True).logits[:, -1])
        logits[mode] = torch.stack(out, 1)
        if mode == "fallback":
            assert all(layer._dev_lens.tolist() == layer._host_lens() for layer in cache.layers)
    torch.testing.assert_close(logits["fallback"], logits["off"], rtol=0, atol=1e-4)
