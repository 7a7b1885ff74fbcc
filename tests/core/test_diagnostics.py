"""TNI diagnostics find the low-norm tokens and measure each method's error on them."""

from __future__ import annotations

import torch
from tni_fixture import SINK_POSITIONS, make_tni_keys

from oscar_core.diagnostics import analyze_keys, collect_keys, norm_ratio_heatmap


def test_analyze_keys_finds_the_sinks_and_oscar_protects_them(tmp_path):
    keys = make_tni_keys().keys
    (layer,) = analyze_keys([keys], ["kivi", "oscar"], low_ratio=0.25)
    assert layer.low_tokens == list(SINK_POSITIONS)
    assert layer.min_ratio < 0.25
    assert layer.errors["oscar"]["low"] * 3 <= layer.errors["kivi"]["low"]
    # the error over all tokens mixes both groups
    for m in ("kivi", "oscar"):
        e = layer.errors[m]
        assert min(e["low"], e["rest"]) <= e["all"] <= max(e["low"], e["rest"])
    norm_ratio_heatmap([layer], str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_collect_keys_returns_post_rope_keys_of_every_layer():
    from tiny_models import llama

    model, inputs = llama()
    ids = inputs(40)["input_ids"]
    keys = collect_keys(model, ids)
    assert len(keys) == 2 and keys[0].shape == (1, 2, 40, 64)
    # recompute layer 0's keys by hand: k_proj of the normed embeddings, then RoPE
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    with torch.no_grad():
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
        k = model.model.layers[0].self_attn.k_proj(h).view(1, 40, 2, 64).transpose(1, 2)
        cos, sin = model.model.rotary_emb(h, torch.arange(40)[None])
        _, k_rope = apply_rotary_pos_emb(k, k, cos, sin)
    torch.testing.assert_close(keys[0], k_rope)
