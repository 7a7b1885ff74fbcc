"""--batch-size for audio benchmarks: a left-padded batch of audio+question items (clips of different
lengths, so different numbers of audio tokens, and different limits) through the tiny Qwen3-Omni smoke
model's thinker gives each item the greedy tokens it gets alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import oscar_core as oc
from oscar_eval.api import run_benchmark
from oscar_eval.benchmarks.base import Item

R = 32  # a small window: the prompts (about 40-60 tokens) flush during the prompt and while decoding


@pytest.fixture(scope="module")
def runner(smoke_cache):
    from oscar_eval.models import load_model
    from oscar_eval.models.audio import AudioRunner
    from oscar_eval.smoke.mmau import smoke_model_path

    torch.set_num_threads(1)
    return AudioRunner(load_model(smoke_model_path(), device="cpu", dtype="float32"))


def _tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _items() -> list[Item]:
    clips, limits = ((_tone(440, 0.2),), (_tone(110, 1.3), _tone(220, 0.4)), (_tone(880, 0.7),)), (7, 30, 16)
    prompts = ("What plays?", "Compare the two sounds, then say which one is lower.", "Describe it.")
    return [Item(item_id=f"a/{i}", subset="a", index=i, prompt=q, references=["x"], max_new_tokens=m,
                 audio=list(c)) for i, (c, m, q) in enumerate(zip(clips, limits, prompts, strict=True))]


def _alone(runner, item: Item, method: str) -> list[int]:
    """Batch 1 straight through the thinker's generate on the processor's own inputs: the oracle."""
    inputs, _ = runner.build_inputs(item)
    model = runner.loaded.model
    with torch.inference_mode():
        out = model.generate(**inputs, return_audio=False, thinker_max_new_tokens=item.max_new_tokens,
                             thinker_do_sample=False, thinker_eos_token_id=runner._stop_ids(runner.processor.tokenizer),
                             thinker_return_dict_in_generate=True,
                             thinker_past_key_values=oc.make_cache(model, method, residual_length=R))
    seqs = out[0] if isinstance(out, tuple) else out.sequences
    return seqs[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("method", ["fp16", "oscar", "kivi"])
def test_audio_batch_gives_each_item_its_tokens_alone(runner, method):
    items = _items()
    assert len({runner.prompt_tokens(it) for it in items}) == 3  # the rows are padded to different extents
    gens = runner.generate_batch(items, oc.make_cache(runner.loaded.model, method, residual_length=R))
    tok = runner.processor.tokenizer
    for item, gen in zip(items, gens, strict=True):
        alone = _alone(runner, item, method)
        assert gen.new_tokens == len(alone) and gen.prediction == tok.decode(alone, skip_special_tokens=True)
        assert gen.input_tokens == runner.prompt_tokens(item)


def test_batched_mmau_smoke_records_match_batch_one(tmp_path: Path):
    runs = {}
    for size in (1, 3):
        opts = {"judge_cache": str(tmp_path / str(size) / "judge_cache")}
        (summary,) = run_benchmark("mmau_pro", methods=["oscar"], results=tmp_path / str(size), progress=False,
                                   batch_size=size, benchmark_options=opts, log=lambda m: None)
        recs = [json.loads(x) for x in (Path(summary["run_dir"]) / "records.jsonl").read_text().splitlines()]
        runs[size] = sorted(({k: v for k, v in r.items() if k not in ("seconds", "batch")} for r in recs),
                            key=lambda r: r["item_id"])
    assert runs[1] == runs[3] and len(runs[1]) >= 3
