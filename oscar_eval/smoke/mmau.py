"""The MMAU-Pro smoke configuration: a tiny random Qwen3-Omni, a generated fixture, a stand-in judge.

Everything is built locally from code with fixed seeds (no network) and saved once under the cache
folder (``$OSCAR_EVAL_CACHE``, default ``~/.cache/oscar_eval``): the model folder (config, weights,
byte-level tokenizer with the Qwen chat markers and audio tokens, Whisper feature extractor) and a
data folder in the real MMAU-Pro layout (``test.parquet`` + short WAV files under ``data/``). The
judge is a word-overlap rule, clearly labelled as such; it only exercises the judge plumbing.
"""

from __future__ import annotations

import json
import re
import wave
from pathlib import Path

import numpy as np

from oscar_eval.smoke import build_once, cache_root

SMOKE_VERSION = 1
SMOKE_LABEL = "smoke-tiny-qwen3-omni"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_pad|>", "<|audio_start|>", "<|audio_end|>",
            "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

FIXTURE_ROWS = [
    {"id": "smoke-open-1", "question": "What instrument is playing?", "answer": "A violin playing a slow melody.",
     "category": "open", "task_identifier": None, "kwargs": None, "audio": "tone_440.wav"},
    {"id": "smoke-open-2", "question": "Describe the sound.", "answer": "A low hum, like an engine idling.",
     "category": "open", "task_identifier": None, "kwargs": None, "audio": "tone_110.wav"},
    {"id": "smoke-if-1", "question": "Describe the audio in all lowercase letters.", "answer": None,
     "category": "instruction following", "task_identifier": "All Lowercase", "kwargs": {}, "audio": "tone_440.wav"},
    {"id": "smoke-if-2", "question": "Describe the audio in at most 50 words.", "answer": None,
     "category": "instruction following", "task_identifier": "Number Words (at most)", "kwargs": {"N": 50},
     "audio": "tone_110.wav"},
    {"id": "smoke-if-3", "question": "Describe the audio without using any commas.", "answer": None,
     "category": "instruction following", "task_identifier": "No Commas", "kwargs": {}, "audio": "tone_440.wav"},
    {"id": "smoke-closed-1", "question": "Which is higher in pitch?", "answer": "the first sound",
     "category": "sound", "task_identifier": None, "kwargs": None, "audio": "tone_440.wav",
     "choices": ["the first sound", "the second sound"]},
]


def build_tokenizer():
    """Byte-level tokenizer (one token per byte) with Qwen's chat markers and the omni special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
        extra_special_tokens={"audio_token": "<|audio_pad|>", "image_token": "<|image_pad|>",
                              "video_token": "<|video_pad|>", "audio_bos_token": "<|audio_start|>",
                              "audio_eos_token": "<|audio_end|>", "vision_bos_token": "<|vision_start|>",
                              "vision_eos_token": "<|vision_end|>"})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(tok):
    import torch
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    mrope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12], "mrope_interleaved": True}
    text = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2, rope_parameters=mrope)
    thinker = dict(
        text_config=text,
        audio_config=dict(d_model=64, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=128,
                          num_mel_bins=32, output_dim=128, n_window=50, downsample_hidden_size=32),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        audio_token_id=ids["<|audio_pad|>"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], audio_start_token_id=ids["<|audio_start|>"],
        audio_end_token_id=ids["<|audio_end|>"])
    torch.manual_seed(1234)
    model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(thinker_config=thinker,
                                                                    enable_audio_output=False))
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model.eval()


def smoke_model_path() -> Path:
    """Build (once) and return the folder of the tiny Qwen3-Omni smoke model."""
    def build(tmp: Path) -> None:
        from transformers import WhisperFeatureExtractor

        tok = build_tokenizer()
        build_model(tok).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=32).save_pretrained(tmp)

    return build_once(cache_root() / f"smoke-tiny-qwen3-omni-v{SMOKE_VERSION}", build,
                      ("config.json", "preprocessor_config.json"))


def write_wav(path: Path, freq: float, seconds: float = 0.2, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_fixture(root: Path) -> Path:
    """The fixture in MMAU-Pro's layout: ``root/test.parquet`` and ``root/data/*.wav``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in {r["audio"] for r in FIXTURE_ROWS}:
        write_wav(root / "data" / name, float(re.search(r"\d+", name).group()))
    rows = [{"id": r["id"], "question": r["question"], "answer": r["answer"], "choices": r.get("choices", []),
             "category": r["category"], "task_identifier": r["task_identifier"],
             "kwargs": None if r["kwargs"] is None else json.dumps(r["kwargs"]),
             "audio_path": [f"data/{r['audio']}"]} for r in FIXTURE_ROWS]
    pq.write_table(pa.Table.from_pylist(rows), root / "test.parquet")
    return root


def smoke_data_dir() -> Path:
    return build_once(cache_root() / f"mmau_pro_smoke-v{SMOKE_VERSION}", write_fixture, ("test.parquet",))


class OverlapJudge:
    """Smoke-only stand-in for the LLM judge: scores word overlap with the reference (NOT an LLM)."""

    id = "smoke-word-overlap-judge (not an LLM; smoke configuration only)"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, messages: list[dict[str, str]]) -> str:
        self.calls += 1
        prompt = messages[-1]["content"]
        ref = prompt.split("Reference Answer: ", 1)[-1].split("\n\nModel Response: ", 1)[0]
        resp = prompt.split("Model Response: ", 1)[-1].split("\n\nPlease evaluate", 1)[0]
        a, b = set(re.findall(r"\w+", ref.lower())), set(re.findall(r"\w+", resp.lower()))
        s = 1 + round(4 * len(a & b) / max(1, len(a)))
        return (f"CORRECTNESS: {s} - overlap\nRELEVANCE: {s} - overlap\nCOMPLETENESS: {s} - overlap\n"
                f"CLARITY: {s} - overlap\nOVERALL: {s} - word overlap with the reference")


def smoke_configuration() -> dict:
    """What ``oscar-eval run mmau_pro`` without --model/--data-dir runs (see oscar_eval.api)."""
    return {
        "description": ("tiny random-weight Qwen3-Omni (thinker only) + a generated MMAU-Pro fixture "
                        f"({len(FIXTURE_ROWS)} items, short WAV tones) + a word-overlap stand-in judge"),
        "data_dir": smoke_data_dir(),
        "model_path": smoke_model_path,
        "model_label": SMOKE_LABEL,
        "max_input_len": 4096,
        "options": {"judge": OverlapJudge(), "max_new_tokens": 32},
    }
