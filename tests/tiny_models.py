"""Tiny random models of the five supported architectures, built from configs (no downloads).

Each builder returns ``(model, generate_kwargs(prompt_len, batch))``: the model in eval mode
(float32, so that "identical" means identical) and a function making inputs for ``generate``
(with an image for the vision-language models).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")

VOCAB = 256
_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=8192,
)
_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12], "mrope_interleaved": True}
_VISION = dict(
    depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128, patch_size=16,
    spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0],
)


def _text_ids(prompt_len: int, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 200, (batch, prompt_len), generator=g)


def _text_inputs(prompt_len: int, batch: int = 1) -> dict:
    ids = _text_ids(prompt_len, batch)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _causal_lm(config_cls, model_cls, overrides: dict):
    torch.manual_seed(0)
    return model_cls(config_cls(**{**_TEXT, **overrides})).eval(), _text_inputs


def llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _causal_lm(LlamaConfig, LlamaForCausalLM, overrides)


def qwen3(**overrides):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _causal_lm(Qwen3Config, Qwen3ForCausalLM, overrides)


def qwen3_vl():
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen3VLConfig(
        text_config=dict(_TEXT, rope_parameters=_MROPE), vision_config=_VISION,
        image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253,
    )
    model = Qwen3VLForConditionalGeneration(config).eval()

    def inputs(prompt_len: int, batch: int = 1) -> dict:
        # A 64x64 image: 4x4 patches of 16, merged 2x2 -> 4 image tokens.
        image = [252] + [250] * 4 + [253]
        ids = torch.cat([torch.tensor([image] * batch), _text_ids(prompt_len - len(image), batch)], dim=1)
        g = torch.Generator().manual_seed(1)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(16 * batch, 3 * 2 * 16 * 16, generator=g),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * batch),
        }

    return model, inputs


def llava_next():
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaNextConfig(
        text_config=dict(model_type="llama", **_TEXT),
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, image_size=32, patch_size=16, projection_dim=64,
        ),
        image_token_index=250, image_grid_pinpoints=[[32, 32]], vision_feature_layer=-1,
    )
    model = LlavaNextForConditionalGeneration(config).eval()

    def inputs(prompt_len: int, batch: int = 1) -> dict:
        # A 32x32 image in anyres with one 32x32 tile: 4 base + 4 tile + 2 newline features = 10 tokens.
        image = [250] * 10
        ids = torch.cat([torch.tensor([image] * batch), _text_ids(prompt_len - len(image), batch)], dim=1)
        g = torch.Generator().manual_seed(1)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(batch, 2, 3, 32, 32, generator=g),
            "image_sizes": torch.tensor([[32, 32]] * batch),
        }

    return model, inputs


def qwen3_omni():
    """The full Qwen3-Omni model (thinker only: no audio output); the cache goes to the thinker."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    torch.manual_seed(0)
    text = dict(_TEXT, moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2, rope_parameters=_MROPE)
    thinker = dict(
        text_config=text,
        audio_config=dict(d_model=64, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=128,
                          num_mel_bins=32, output_dim=128, n_window=4, downsample_hidden_size=32),
        vision_config=_VISION,
        audio_token_id=240, image_token_id=241, video_token_id=242, vision_start_token_id=243,
        vision_end_token_id=244, audio_start_token_id=245, audio_end_token_id=246,
    )
    model = Qwen3OmniMoeForConditionalGeneration(
        Qwen3OmniMoeConfig(thinker_config=thinker, enable_audio_output=False)
    ).eval()
    return model, _text_inputs


ARCHITECTURES: dict[str, Callable] = {
    "llama": llama,
    "qwen3": qwen3,
    "qwen3_vl": qwen3_vl,
    "llava_next": llava_next,
    "qwen3_omni": qwen3_omni,
}


def generate(model, inputs: dict, cache=None, max_new_tokens: int = 20, **kwargs):
    """Greedy generation returning (sequences, per-step logits), for any of the five models."""
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "output_logits": True,
              "return_dict_in_generate": True, "eos_token_id": None, "pad_token_id": 0, **kwargs}
    if hasattr(model, "thinker"):
        kwargs = {f"thinker_{k}": v for k, v in kwargs.items()}
        if cache is not None:
            kwargs["thinker_past_key_values"] = cache
        out = model.generate(**inputs, return_audio=False, **kwargs)
    else:
        if cache is not None:
            kwargs["past_key_values"] = cache
        out = model.generate(**inputs, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)
