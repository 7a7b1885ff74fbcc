"""--batch-size for vision benchmarks: a left-padded batch of image+question items (different image sizes,
so different numbers of image tokens, and different limits) gives each item the greedy tokens it gets alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import oscar_core as oc
from oscar_eval.api import run_benchmark
from oscar_eval.benchmarks.base import Item
from oscar_eval.models import cache_kwarg

R = 32  # a small window, so the prompts (about 40-70 tokens) flush blocks and decoding flushes again


@pytest.fixture(scope="module")
def runner(smoke_cache):
    from oscar_eval.models.vision import VisionRunner, load_vision_model, smoke_model_path

    torch.set_num_threads(1)
    return VisionRunner(load_vision_model(smoke_model_path(), device="cpu", dtype="float32"))


def _items() -> list[Item]:
    from PIL import Image

    sizes, limits = ((64, 64), (96, 160), (128, 64)), (9, 40, 21)
    prompts = ("What is written here?", "Read the text in the image, then answer briefly: which colour is it?",
               "Name the shape.")
    return [Item(item_id=f"v/{i}", subset="v", index=i, prompt=q, references=["x"], max_new_tokens=m,
                 images=[Image.new("RGB", size, color)])
            for i, (size, m, q, color) in enumerate(zip(sizes, limits, prompts, ("white", "red", "blue"), strict=True))]


def _alone(runner, item: Item, method: str) -> list[int]:
    """Batch 1 straight through model.generate on the processor's own inputs: the oracle."""
    inputs, _ = runner.build_inputs(item)
    model = runner.loaded.model
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=item.max_new_tokens, do_sample=False,
                             eos_token_id=runner._stop_ids(), pad_token_id=0,
                             **{cache_kwarg(): oc.make_cache(model, method, residual_length=R)})
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("method", ["fp16", "oscar", "kivi"])
def test_vision_batch_gives_each_item_its_tokens_alone(runner, method):
    items = _items()
    widths = {runner.prompt_tokens(it) for it in items}
    assert len(widths) == 3  # the rows really are padded to different extents
    gens = runner.generate_batch(items, oc.make_cache(runner.loaded.model, method, residual_length=R))
    tok = runner.processor.tokenizer
    for item, gen in zip(items, gens, strict=True):
        alone = _alone(runner, item, method)
        assert gen.new_tokens == len(alone) and gen.prediction == tok.decode(alone, skip_special_tokens=True).strip()
        assert gen.input_tokens == runner.prompt_tokens(item)
        assert gen.prompt_sha256 == runner.generate(item, oc.make_cache(runner.loaded.model, method)).prompt_sha256


def test_batched_ocrbench_smoke_records_match_batch_one(tmp_path: Path):
    runs = {}
    for size in (1, 3):
        (summary,) = run_benchmark("ocrbench", methods=["oscar"], results=tmp_path / str(size), progress=False,
                                   batch_size=size, log=lambda m: None)
        recs = [json.loads(x) for x in (Path(summary["run_dir"]) / "records.jsonl").read_text().splitlines()]
        # timings differ, and a batched record says which batch it was in
        runs[size] = sorted(({k: v for k, v in r.items() if k not in ("seconds", "batch")} for r in recs),
                            key=lambda r: r["item_id"])
    assert runs[1] == runs[3] and len(runs[1]) >= 3
