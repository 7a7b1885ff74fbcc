"""The built-in smoke configuration: a tiny random Llama, a byte-level tokenizer, a LongBench-E fixture.

Everything is built locally from code with fixed seeds (no network) and saved once under the cache
folder, so the smoke model has a real path and loads through the same code as a real checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SMOKE_VERSION = 1
SMOKE_LABEL = "smoke-tiny-llama"
SMOKE_DATA = Path(__file__).resolve().parents[1] / "data" / "longbench_e_smoke"
SMOKE_MAX_INPUT_LEN = 768  # small enough that the fixture's longest prompts exercise middle truncation


def cache_root() -> Path:
    env = os.environ.get("OSCAR_EVAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "oscar_eval"


def build_tokenizer():
    """Byte-level BPE with no merges (one token per byte) plus <s>, </s>, <pad>: covers any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                        special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    # A minimal chat template so --chat-template can be exercised on the smoke model too.
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def build_model(vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    return model


def build_once(target: Path, build, markers: tuple[str, ...] = ("config.json",)) -> Path:
    """Return ``target``, building it first with ``build(folder)`` unless its ``markers`` exist.

    Built in a temporary sibling folder and renamed into place, so concurrent builders (parallel
    tests, two runs) never see half a model: the first rename wins and the others use its copy."""
    if all((target / m).is_file() for m in markers):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smoke-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; use its copy
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smoke_model_path() -> Path:
    """Build (once) and return the folder of the smoke model."""

    def build(folder: Path) -> None:
        tok = build_tokenizer()
        build_model(len(tok)).save_pretrained(folder)
        tok.save_pretrained(folder)

    return build_once(cache_root() / f"smoke-tiny-llama-v{SMOKE_VERSION}", build, ("config.json", "tokenizer.json"))
