"""--batch-size: left-padded batches give batch 1's greedy tokens, records and summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import oscar_core as oc
from oscar_eval.api import run_benchmark
from oscar_eval.benchmarks.base import Item
from oscar_eval.errors import UserError
from oscar_eval.models import Generation, TextRunner, cache_kwarg, load_model
from oscar_eval.runner import evaluate_items, length_batches
from oscar_eval.store.results import RunStore

R = 32  # a small window: prompts of 40-110 tokens flush blocks during the prompt and while decoding


@pytest.fixture(scope="module")
def loaded(smoke_model):
    torch.set_num_threads(1)
    return load_model(smoke_model, device="cpu", dtype="float32")


def _items() -> list[Item]:
    text = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "
    lengths, limits = (40, 110, 75, 52), (30, 12, 41, 25)
    return [Item(item_id=f"s/{i}", subset="s", index=i, prompt=(text * 2)[:n], references=["x"],
                 max_new_tokens=m, length=n) for i, (n, m) in enumerate(zip(lengths, limits, strict=True))]


def _stop_token(loaded, method: str) -> int:
    """A token item 0 generates through ``method``'s cache but item 1 never does: as EOS, some rows stop
    early and others run to their limit."""
    runner = TextRunner(loaded, max_input_len=512)
    streams = []
    for item in _items()[:2]:
        ids, _, _ = runner.build_inputs(item)
        with torch.inference_mode():
            out = loaded.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                        max_new_tokens=item.max_new_tokens, do_sample=False, eos_token_id=None,
                                        pad_token_id=0,
                                        **{cache_kwarg(): oc.make_cache(loaded.model, method, residual_length=R)})
        streams.append(out[0, len(ids):].tolist())
    return next(t for t in streams[0][1:] if t not in streams[1])


def _generate_alone(loaded, runner, item, method) -> Generation:
    """Batch 1 straight through model.generate (not the runner's batch code): the oracle."""
    ids, _, _ = runner.build_inputs(item)
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                    max_new_tokens=item.max_new_tokens, do_sample=False,
                                    eos_token_id=runner._stop_ids(item), pad_token_id=0,
                                    **{cache_kwarg(): oc.make_cache(loaded.model, method, residual_length=R)})
    new = out[0, len(ids):]
    return Generation(loaded.tokenizer.decode(new, skip_special_tokens=True), len(ids), False, int(new.numel()),
                      "")


@pytest.fixture
def stop_rule(loaded):
    cfg = loaded.model.generation_config
    saved = cfg.eos_token_id

    def set_for(method: str) -> None:
        cfg.eos_token_id = None
        cfg.eos_token_id = _stop_token(loaded, method)

    yield set_for
    cfg.eos_token_id = saved


@pytest.mark.parametrize("method", ["fp16", "oscar", "kivi"])
def test_batch_gives_the_tokens_of_each_item_alone(loaded, stop_rule, method):
    stop_rule(method)
    runner = TextRunner(loaded, max_input_len=512)
    items = _items()
    alone = [_generate_alone(loaded, runner, it, method) for it in items]
    batched = runner.generate_batch(items, oc.make_cache(loaded.model, method, residual_length=R))
    assert [g.prediction for g in batched] == [g.prediction for g in alone]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in alone]
    assert [g.input_tokens for g in batched] == [g.input_tokens for g in alone]
    # the stop token ends some rows early and the limits cut others: both cases are exercised
    assert any(g.new_tokens < it.max_new_tokens for g, it in zip(alone, items, strict=True))
    assert any(g.new_tokens == it.max_new_tokens for g, it in zip(alone, items, strict=True))


def test_batch_rejects_mixed_stop_rules(loaded):
    runner = TextRunner(loaded, max_input_len=512)
    a, b = _items()[:2]
    b.stop_at_newline = True
    with pytest.raises(ValueError, match="stop"):
        runner.generate_batch([a, b], None)
    assert runner.batch_key(a) != runner.batch_key(b)


def test_length_batches_group_similar_lengths():
    items = _items()
    groups = length_batches(items, 2, key=lambda it: it.length)
    assert [[it.length for it in g] for g in groups] == [[40, 52], [75, 110]]
    assert length_batches(items, 3, key=None)[0] == items[:3]


def test_an_item_whose_batch_key_fails_is_run_alone_and_fails_alone(tmp_path):
    """A key that raises (e.g. an image that does not decode when its prompt length is measured) must not
    stop the run: that item gets a batch of its own, is recorded as failed, the others are generated."""
    items = _items()

    def key(it):
        if it.index == 1:
            raise OSError("cannot identify image file")
        return it.length

    groups = length_batches(items, 2, key=key)
    assert [[it.index for it in g] for g in groups] == [[0, 3], [2], [1]]

    def generate(item):
        if item.index == 1:
            raise OSError("cannot identify image file")
        return Generation(f"p{item.index}", 3, False, 2, "0" * 64)

    store = _store(tmp_path, "bad-key")
    stats = evaluate_items(items, store, generate, lambda it, p: 1.0, seed=1,
                           generate_batch=lambda batch: [generate(it) for it in batch], batch_size=2, batch_key=key)
    store.close()
    assert stats.failed == 1 and stats.done == 4
    by_id = {r["item_id"]: r for r in store.latest_records()}
    assert by_id["s/1"]["status"] == "failed" and "cannot identify image file" in by_id["s/1"]["error"]


def _store(tmp_path, name: str) -> RunStore:
    store = RunStore(tmp_path, name)
    store.open(resume=False)
    return store


def _strip(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k not in ("seconds", "batch")} for r in records),
                  key=lambda r: r["item_id"])


def test_a_failing_batch_is_retried_item_by_item(tmp_path):
    items = _items()

    def generate(item):
        if item.index == 2:
            raise RuntimeError("bad item")
        return Generation(f"p{item.index}", 3, False, 2, "0" * 64)

    def generate_batch(batch):
        if any(it.index == 2 for it in batch):
            raise RuntimeError("batch with the bad item")
        return [generate(it) for it in batch]

    one, many = _store(tmp_path, "one"), _store(tmp_path, "many")
    evaluate_items(items, one, generate, lambda it, p: 1.0, seed=1)
    stats = evaluate_items(items, many, generate, lambda it, p: 1.0, seed=1, generate_batch=generate_batch,
                           batch_size=2, batch_key=lambda it: it.length)
    one.close()
    many.close()
    assert stats.failed == 1 and stats.done == 4
    assert _strip(one.latest_records()) == _strip(many.latest_records())
    by_id = {r["item_id"]: r for r in many.latest_records()}
    assert by_id["s/2"]["error"] == "RuntimeError: bad item"
    # items 0 and 3 (lengths 40, 52) shared a batch; 2 and 1 were run alone after theirs failed
    assert by_id["s/0"]["batch"]["size"] == 2 and "batch" not in by_id["s/1"]


def _reopen(run_dir: str) -> RunStore:
    return RunStore(Path(run_dir).parent.parent, Path(run_dir).name)  # <root>/runs/<run id>


def _ruler(tmp_path, name, batch_size):
    # short contexts and a few tasks keep it quick; the smoke haystack and model are the real pipeline's
    return run_benchmark("ruler", methods=["fp16", "oscar"], limit=2, results=tmp_path / name, progress=False,
                         batch_size=batch_size, log=lambda m: None, subsets=["niah_single_1", "fwe"],
                         benchmark_options={"contexts": [2048], "num_samples": 2})


def test_ruler_smoke_run_batched_records_match_batch_one(tmp_path):
    one = _ruler(tmp_path, "one", 1)
    many = _ruler(tmp_path, "many", 3)
    for a, b in zip(one, many, strict=True):
        ra, rb = (_strip(_reopen(s["run_dir"]).latest_records()) for s in (a, b))
        assert ra == rb and len(ra) >= 4
        assert a["run_dir"] != b["run_dir"]  # the batch size is part of the run's identity
        manifest = json.loads((Path(b["run_dir"]) / "manifest.json").read_text())
        assert manifest["settings"]["batch_size"] == 3
        assert b["throughput"]["new_tokens"] == a["throughput"]["new_tokens"] > 0


def test_batch_size_is_checked_before_anything_loads(tmp_path):
    with pytest.raises(UserError, match="--batch-size"):
        run_benchmark("ruler", methods=["fp16"], results=tmp_path, batch_size=0, progress=False)
    with pytest.raises(UserError, match="one at a time .ppl inputs.; batching is for the text, vision, audio generation"):
        run_benchmark("ppl", methods=["fp16"], results=tmp_path, batch_size=2, progress=False,
                      log=lambda m: None)

