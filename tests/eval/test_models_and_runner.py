"""Middle truncation, chat template, model resolution, per-item failure recording."""

from __future__ import annotations

import pytest

from oscar_eval.benchmarks.base import Item
from oscar_eval.cli import UserError
from oscar_eval.models import Generation, TextRunner, load_model, resolve_model_path
from oscar_eval.runner import evaluate_items
from oscar_eval.store.results import RunStore


@pytest.fixture(scope="module")
def loaded(smoke_model):
    return load_model(smoke_model, device="cpu", dtype="float32")


def _item(prompt: str, **kw) -> Item:
    base = dict(item_id="qasper_e/x", subset="qasper_e", index=0, prompt=prompt, references=["a"],
                max_new_tokens=4, length=100)
    base.update(kw)
    return Item(**base)


def test_middle_truncation_keeps_first_and_last_half(loaded):
    # smoke tokenizer: one token per byte plus <s>; 20 tokens kept = <s> + 9 first bytes ... 10 last bytes
    runner = TextRunner(loaded, max_input_len=20)
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    out, truncated = runner.truncate(text)
    assert truncated and out == text[:9] + text[-10:]
    ids, truncated2, _ = runner.build_inputs(_item(text))
    assert truncated2 and len(ids) == 20  # <s> + 19 bytes


def test_no_truncation_at_or_below_limit(loaded):
    runner = TextRunner(loaded, max_input_len=20)
    text = "x" * 19  # 19 bytes + <s> = 20 tokens
    assert runner.truncate(text) == (text, False)


def test_chat_template_only_when_enabled_and_allowed(loaded):
    raw = TextRunner(loaded, max_input_len=1000)
    chat = TextRunner(loaded, max_input_len=1000, chat_template=True)
    assert raw.build_inputs(_item("hi"))[2] == "hi"
    assert chat.build_inputs(_item("hi"))[2] == "<|user|>hi\n<|assistant|>"
    # the official exclusions (few-shot and code subsets) stay raw even with --chat-template
    assert chat.build_inputs(_item("hi", chat_template=False))[2] == "hi"


def test_generate_with_plain_cache(loaded):
    from transformers import DynamicCache

    runner = TextRunner(loaded, max_input_len=64)
    gen = runner.generate(_item("Question: what?\nAnswer:", max_new_tokens=5), DynamicCache())
    assert isinstance(gen.prediction, str) and 1 <= gen.new_tokens <= 5 and gen.input_tokens == 24


def test_stop_at_newline_limits_to_first_line(loaded):
    runner = TextRunner(loaded, max_input_len=64)
    gen = runner.generate(_item("Dialogue: hi\nSummary:", max_new_tokens=40, stop_at_newline=True), None)
    assert gen.new_tokens >= 1 and "\n" not in gen.prediction.rstrip("\n")


def test_unknown_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no-such-org/no-such-model"):
        resolve_model_path("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        resolve_model_path(tmp_path / "empty")


def test_failed_item_is_recorded_and_the_run_continues(tmp_path):
    items = [_item(f"p{i}", item_id=f"qasper_e/{i}", index=i) for i in range(3)]

    def generate(item):
        if item.index == 1:
            raise RuntimeError("CUDA out of memory\nsecond line of detail")
        return Generation("a", 3, False, 1, "0" * 64)

    store = RunStore(tmp_path, "r")
    store.open(resume=False)
    stats = evaluate_items(items, store, generate, lambda it, p: 1.0, seed=42)
    store.close()
    recs = store.records()
    assert stats.done == 3 and stats.failed == 1
    assert [r["status"] for r in recs] == ["ok", "failed", "ok"]
    assert recs[1]["error"] == "RuntimeError: CUDA out of memory" and recs[1]["score"] is None
    # resume skips the items recorded ok and tries the failed one again (a new record: latest wins)
    store.open(resume=True)
    stats = evaluate_items(items, store, generate, lambda it, p: 1.0, seed=42, done_ids=store.done_ids())
    store.close()
    assert stats.skipped == 2 and stats.done == 1 and len(store.records()) == 4
    assert len(store.latest_records()) == 3 and store.failed_ids() == {"qasper_e/1"}


def test_model_from_local_hf_cache_and_its_revision(tmp_path, smoke_model, monkeypatch):
    import shutil

    from oscar_eval.provenance import model_revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    snap = repo / "snapshots" / commit
    shutil.copytree(smoke_model, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    path = resolve_model_path("tiny-org/tiny-llama")
    assert path == snap and model_revision(path) == commit
    assert model_revision(smoke_model).startswith("sha256:")
