"""Perplexity through the cache: which logits score which token (prompt vs cache), fp16 == plain forward,
token accounting, too-short documents, deterministic standard-library documents, the summary's
weighting, and the CLI end to end (smoke model)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import oscar_core as oc
from oscar_eval.benchmarks.base import Item, ItemError
from oscar_eval.benchmarks.ppl import Perplexity, load_config, stdlib_documents, summarize_records
from oscar_eval.cli import UserError
from oscar_eval.models import LoadedModel
from oscar_eval.models.ppl import PerplexityRunner, reference_logits, teacher_forced

from .conftest import error_line, run_cli

P, N = 128, 24  # P = one full block of R = 128: kivi quantizes the whole prompt right after attending it


@pytest.fixture(scope="module")
def tok():
    from oscar_eval.smoke import build_tokenizer

    return build_tokenizer()  # byte-level: one token per byte, lengths are exact


def _model(tok):
    from oscar_eval.smoke import build_model

    return build_model(len(tok)).eval()  # float32, seeded


@pytest.fixture(scope="module")
def text() -> str:
    return stdlib_documents(["difflib"], 1)[0][1]


def _ids(tok, text: str, n: int = P + N) -> torch.Tensor:
    return torch.tensor([tok(text)["input_ids"][:n]])


def _oracle_nll(model, ids: torch.Tensor) -> list[float]:
    """Independent reference: one plain forward, position P-1+j predicts token P+j."""
    with torch.inference_mode():
        logp = model(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)
    return [-float(logp[P - 1 + j, ids[0, P + j]]) for j in range(ids.shape[1] - P)]


class CorruptingCache(DynamicCache):
    """Hands the prompt its exact K/V, then overwrites the stored prompt values with noise: everything read
    back from the cache later is badly wrong (a quantizer with a huge error), the prompt's own pass is not."""

    def __init__(self) -> None:
        super().__init__()
        self.prompt_done: set[int] = set()

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx in self.prompt_done:
            return k, v
        self.prompt_done.add(layer_idx)
        exact = k.clone(), v.clone()
        g = torch.Generator().manual_seed(layer_idx)
        self.layers[layer_idx].values.copy_(5 * torch.randn(v.shape, generator=g))
        return exact


def _through(model, ids, cache) -> dict:
    with torch.inference_mode():
        ref = reference_logits(model, ids, P)
        return teacher_forced(model, ids, P, cache, ref)


# -- which logits score which token ------------------------------------------------------------------
def test_first_token_from_prompt_pass_rest_through_cache(tok, text):
    model = _model(tok)
    ids = _ids(tok, text)
    per = _through(model, ids, CorruptingCache())
    oracle = _oracle_nll(model, ids)
    # Position 0 is the prompt pass: exact K/V, so it matches the plain forward (token and logits).
    assert per["kl"][0] < 1e-9 and per["nll"][0] == pytest.approx(oracle[0], abs=1e-4)
    # Every later position reads the corrupted cache: far from the reference at every single step.
    assert min(per["kl"][1:]) > 1e-2, per["kl"]
    assert len(per["nll"]) == N


def test_fp16_equals_plain_forward(tok, text):
    """fp16 through its cache is the plain forward: per token (so no shift by one anywhere), KL 0, top-1 1.
    Tolerance: float32, the same function computed with other matmul shapes (cache vs one pass) agrees to
    about 1e-6 in the logits; 1e-4 nats per token leaves margin and is far below any shift's error."""
    model = _model(tok)
    ids = _ids(tok, text)
    per = _through(model, ids, oc.make_cache(model, "fp16"))
    oracle = _oracle_nll(model, ids)
    assert per["nll"] == pytest.approx(oracle, abs=1e-4)
    assert max(per["kl"]) < 1e-7 and per["top1"] == [1] * N
    shifted = oracle[1:] + oracle[:1]
    assert max(abs(a - b) for a, b in zip(per["nll"], shifted, strict=True)) > 0.1  # the check has teeth
    runner = PerplexityRunner(LoadedModel(model, tok, Path("smoke"), "cpu", "float32"))
    gen = runner.generate(Item("d", "text", 0, text, [], 0, extra={"prompt_tokens": P, "scored_tokens": N}),
                          oc.make_cache(model, "fp16"))
    m = gen.metrics
    assert m["ppl"] == pytest.approx(math.exp(sum(oracle) / N), rel=1e-5)
    assert m["ref_ppl"] == pytest.approx(m["ppl"], rel=1e-5) and m["kl"] < 1e-7 and m["top1"] == 1.0


def test_real_quantized_cache_spares_only_the_first_token(tok, text):
    """kivi quantizes the whole 128-token prompt after attending it: the first scored token (prompt pass)
    is exact, the cached steps are not."""
    model = _model(tok)
    ids = _ids(tok, text)
    per = _through(model, ids, oc.make_cache(model, "kivi"))
    assert per["kl"][0] < 1e-9
    cached = sum(per["kl"][1:]) / (N - 1)
    assert cached > 1e-5 and cached > 1e3 * max(per["kl"][0], 1e-12)


def test_fused_rotation_leaves_the_reference_unchanged(tok, text):
    """The reference is computed on the model as prepared for the method (oscar fuses the V/O Hadamard):
    in float32 that moves the reference log-probs by < 1e-4, far below any KL we report."""
    model = _model(tok)
    ids = _ids(tok, text)
    with torch.inference_mode():
        before = reference_logits(model, ids, P)
        oc.make_cache(model, "oscar")
        after = reference_logits(model, ids, P)
    assert (before - after).abs().max() < 1e-4


# -- token accounting, teacher forcing -----------------------------------------------------------------
def test_exactly_n_tokens_teacher_forced(tok, text):
    model = _model(tok)
    calls: list[list[int]] = []
    hook = model.register_forward_pre_hook(lambda mod, args, kw: calls.append(kw["input_ids"][0].tolist()),
                                           with_kwargs=True)
    runner = PerplexityRunner(LoadedModel(model, tok, Path("smoke"), "cpu", "float32"))
    item = Item("d", "text", 0, text, [], 0, extra={"prompt_tokens": P, "scored_tokens": N})
    gen = runner.generate(item, oc.make_cache(model, "kivi"))
    hook.remove()
    ids = tok(text)["input_ids"]
    m = gen.metrics
    assert m["scored_tokens"] == N and len(m["nll_tokens"]) == len(m["kl_tokens"]) == len(m["top1_tokens"]) == N
    assert m["cached"]["tokens"] == N - 1 and m["document_tokens"] == len(ids) > P + N
    assert gen.input_tokens == P + N and gen.truncated
    # One reference forward over P+N tokens, the prompt, then the true tokens P .. P+N-2 one at a time.
    assert calls[0] == ids[:P + N] and calls[1] == ids[:P]
    assert calls[2:] == [[t] for t in ids[P:P + N - 1]]


def test_summary_is_token_weighted():
    def rec(i, nll, n, kl, top1):
        m = {"scored_tokens": n, "nll": nll, "ppl": math.exp(nll), "kl": kl, "top1": top1, "ref_nll": nll,
             "ref_ppl": math.exp(nll), "cached": {"tokens": n - 1, "nll": nll, "kl": kl, "top1": top1}}
        return {"item_id": f"d{i}", "status": "ok", "metrics": m}

    s = summarize_records([rec(0, 1.0, 10, 0.1, 1.0), rec(1, 2.0, 30, 0.3, 0.5),
                           {"item_id": "bad", "status": "failed", "error": "x"}])
    assert s["n_documents"] == 2 and s["n_tokens"] == 40
    assert s["nll"] == pytest.approx(1.75) and s["ppl"] == pytest.approx(math.exp(1.75))  # not mean of PPLs
    assert s["kl"] == pytest.approx(0.25) and s["top1"] == pytest.approx(0.625)
    assert s["cached"]["n_tokens"] == 38 and s["cached"]["nll"] == pytest.approx((9 + 58) / 38)
    assert set(s["documents"]) == {"d0", "d1"}


# -- documents ---------------------------------------------------------------------------------------
def test_short_and_bad_documents_are_item_errors(tok, tmp_path, text):
    (tmp_path / "long.txt").write_text(text[:1000], encoding="utf-8")
    lines = [json.dumps({"text": text[:500]}), json.dumps({"text": "too short"}), "", "{not json",
             json.dumps({"body": "no text field"})]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    b = Perplexity(text=[str(tmp_path / "long.txt"), str(tmp_path / "docs.jsonl")], prompt_tokens=300,
                   scored_tokens=100)
    b.use_tokenizer("smoke", tokenizer=tok)
    items = list(b.items("text"))
    assert [i.item_id for i in items] == ["long.txt", "docs.jsonl:1", "docs.jsonl:2", "docs.jsonl:4",
                                          "docs.jsonl:5"]
    ok = [i for i in items if isinstance(i, Item)]
    assert [i.item_id for i in ok] == ["long.txt", "docs.jsonl:1"]
    errors = {i.item_id: i.error for i in items if isinstance(i, ItemError)}
    assert "document docs.jsonl:2 has 10 tokens" in errors["docs.jsonl:2"] and "need 400" in errors["docs.jsonl:2"]
    assert "not JSON" in errors["docs.jsonl:4"] and '"text"' in errors["docs.jsonl:5"]
    assert b.settings["ppl"]["documents"]["files"].keys() == {"long.txt", "docs.jsonl"}


def test_options_are_checked(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="scored-tokens"):
        Perplexity(text=str(tmp_path / "a.txt"), scored_tokens=1)
    with pytest.raises(UserError, match="not found"):
        Perplexity(text=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="no --text"):
        Perplexity()


def test_stdlib_documents_are_deterministic(tok):
    cfg = load_config()["stdlib"]
    a = Perplexity(stdlib=True, prompt_tokens=P, scored_tokens=N)
    b = Perplexity(stdlib=True, prompt_tokens=P, scored_tokens=N)
    da, db = a.settings["ppl"]["documents"], b.settings["ppl"]["documents"]
    assert da == db and da["source"] == "python-stdlib-docstrings" and da["python"]
    groups = [g.split("+") for g in da["documents"]]
    assert [m for g in groups for m in g] == cfg["modules"] and len(groups) >= 4
    texts = [t for _, t in stdlib_documents(cfg["modules"], cfg["min_chars"])]
    assert all(len(t) >= cfg["min_chars"] for t in texts[:-1]) and all(texts)
    # A bare process (another hash seed, no torch/transformers imported: they patch logging and inspect at
    # import) builds the very same text as this one.
    code = ("from oscar_eval.benchmarks.ppl import Perplexity; "
            "print(Perplexity(stdlib=True).settings['ppl']['documents']['sha256'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert out == da["sha256"]
    a.use_tokenizer("smoke", tokenizer=tok)
    items = list(a.items("stdlib", limit=2))
    assert [i.item_id for i in items] == ["stdlib:" + g for g in da["documents"][:2]]
    assert all(p.is_file() for p in a.data_files("stdlib"))


# -- end to end ------------------------------------------------------------------------------------------
def test_cli_smoke_end_to_end(smoke_cache, capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "ppl", "--method", "fp16", "--method", "kivi", "--limit", "2",
                             "--prompt-tokens", "130", "--scored-tokens", "20", "--results", str(tmp_path),
                             "--no-progress")
    assert code == 0, err
    assert "ppl | smoke-tiny-llama" in out and "fp16" in out and "kivi" in out
    for method in ("fp16", "kivi"):
        (run,) = (tmp_path / "runs").glob(f"ppl-smoke-tiny-llama-{method}-*")
        records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(len(r["metrics"]["nll_tokens"]) == 20 for r in records)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["n_tokens"] == 40 and summary["ppl"] == pytest.approx(math.exp(summary["nll"]))
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["settings"]["ppl"]["documents"]["source"] == "python-stdlib-docstrings"
        assert manifest["data"]["files"]
    fp16 = json.loads(next((tmp_path / "runs").glob("ppl-smoke-tiny-llama-fp16-*/summary.json")).read_text())
    assert fp16["top1"] == 1.0 and fp16["kl"] < 1e-7


def test_cli_text_files_and_short_document(smoke_model, capsys, tmp_path, text):
    (tmp_path / "a.txt").write_text(text[:400], encoding="utf-8")
    (tmp_path / "short.txt").write_text("tiny", encoding="utf-8")
    code, out, err = run_cli(capsys, "run", "ppl", "--model", str(smoke_model), "--method", "fp16",
                             "--text", str(tmp_path / "a.txt"), str(tmp_path / "short.txt"),
                             "--prompt-tokens", "150", "--scored-tokens", "10",
                             "--results", str(tmp_path / "res"), "--no-progress", "--device", "cpu")
    assert code != 0 or "1 failed" in out  # a failed document is reported, never dropped
    (run,) = (tmp_path / "res" / "runs").glob("ppl-*-fp16-*")
    records = {r["item_id"]: r for r in map(json.loads, (run / "records.jsonl").read_text().splitlines())}
    assert records["a.txt"]["status"] == "ok" and records["a.txt"]["metrics"]["scored_tokens"] == 10
    assert records["short.txt"]["status"] == "failed" and "short.txt has 5 tokens" in records["short.txt"]["error"]


def test_cli_ppl_options_only_for_ppl(capsys):
    code, _, err = run_cli(capsys, "run", "niah", "--prompt-tokens", "10")
    assert code != 0 and "only for the ppl benchmark" in error_line(err)
