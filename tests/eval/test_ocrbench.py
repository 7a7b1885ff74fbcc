"""OCRBench: both loaders (VLMEvalKit TSV, echo840/OCRBench parquet), the image-reference rule, safe
answer parsing, VLMEvalKit's scoring rules, group/Total arithmetic, one-line errors, the smoke run end to
end through the CLI (fp16 and oscar) and the report's Table 6 rendered from it."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest

from oscar_eval.benchmarks import get_benchmark
from oscar_eval.benchmarks.base import Item, ItemError
from oscar_eval.benchmarks.ocrbench import OCRBench, parse_answer
from oscar_eval.cli import UserError
from oscar_eval.scoring import ocrbench as ocr

from .conftest import error_line, run_cli

HME = ocr.HME
SMOKE_TSV = Path(__file__).resolve().parents[2] / "oscar_eval" / "data" / "ocrbench_smoke" / "OCRBench.tsv"


def _png(color: str = "white", size: tuple[int, int] = (20, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "image", "question", "answer", "category"])
        w.writerows(rows)
    return path


def _items(bench: OCRBench) -> list[Item | ItemError]:
    return [it for s in bench.subsets() for it in bench.items(s)]


# -- loaders -------------------------------------------------------------------------------------
def test_tsv_loader_and_image_reference(tmp_path):
    red, blue = _png("red"), _png("blue", (12, 30))
    _write_tsv(tmp_path / "OCRBench.tsv", [
        ["10", _b64(red), "what is written?", "['Hello']", "Regular Text Recognition"],
        ["11", "10", "and in capitals?", "['HELLO', 'hello']", "Regular Text Recognition"],
        ["12", _b64(blue), "total?", "['12.50']", "Doc-oriented VQA"],
        ["13", _b64(blue), "x?", "['x^{2}']", HME],
    ])
    bench = get_benchmark("ocrbench", data_dir=tmp_path)
    items = {it.item_id: it for it in _items(bench)}
    assert set(items) == {"ocrbench/10", "ocrbench/11", "ocrbench/12", "ocrbench/13"}
    assert all(isinstance(it, Item) for it in items.values())
    shared = items["ocrbench/11"]
    # A short image entry names the row whose image to use.
    assert shared.images[0].data == red == items["ocrbench/10"].images[0].data
    assert shared.references == ["HELLO", "hello"] and shared.subset == "Regular Text Recognition"
    assert shared.prompt == "and in capitals?" and shared.max_new_tokens == 128
    assert items["ocrbench/12"].images[0].open().size == (12, 30)
    assert bench.data_files("Doc-oriented VQA") == [tmp_path / "OCRBench.tsv"]


def test_parquet_loader_matches_tsv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    img, other = _png("green"), _png("black")
    (tmp_path / "pq" / "data").mkdir(parents=True)
    (tmp_path / "pq" / "data" / "side.png").write_bytes(other)
    table = pa.table({
        "dataset": ["IIIT5K", "HME100k", "FUNSD"],
        "question": ["what is written?", "formula?", "name?"],
        "question_type": ["Regular Text Recognition", HME, "Key Information Extraction"],
        "answer": [["Hello"], ["a+b"], ["ACME"]],
        "image": [{"bytes": img, "path": "a.png"}, {"bytes": None, "path": "side.png"},
                  {"bytes": b"not an image", "path": None}],
    })
    pq.write_table(table, tmp_path / "pq" / "data" / "test-00000-of-00001.parquet")
    bench = OCRBench(data_dir=tmp_path / "pq")
    items = _items(bench)
    by_id = {it.item_id: it for it in items}
    assert set(by_id) == {"ocrbench/0", "ocrbench/1", "ocrbench/2"}
    assert by_id["ocrbench/0"].references == ["Hello"] and by_id["ocrbench/0"].images[0].data == img
    assert by_id["ocrbench/0"].extra["dataset"] == "IIIT5K"
    assert by_id["ocrbench/1"].images[0].data == other and by_id["ocrbench/1"].subset == HME
    bad = by_id["ocrbench/2"]
    assert isinstance(bad, ItemError) and "test-00000-of-00001.parquet:row 3" in bad.error
    assert "not a readable image" in bad.error

    # The same rows as a VLMEvalKit TSV give the same ids, questions and references.
    _write_tsv(tmp_path / "tsv" / "OCRBench.tsv", [
        ["0", _b64(img), "what is written?", "['Hello']", "Regular Text Recognition"],
        ["1", _b64(other), "formula?", "['a+b']", HME],
    ])
    tsv = {it.item_id: it for it in _items(OCRBench(data_dir=tmp_path / "tsv"))}
    for key in tsv:
        assert (tsv[key].prompt, tsv[key].references, tsv[key].subset) == (
            by_id[key].prompt, by_id[key].references, by_id[key].subset)


def test_malformed_rows_become_failed_items_naming_file_and_row(tmp_path):
    ok = _b64(_png())
    path = _write_tsv(tmp_path / "OCRBench.tsv", [
        ["0", ok, "q", "['a']", "Regular Text Recognition"],
        ["1", "@@@not base64 at all, and longer than sixty-four characters to be an image@@@", "q", "['a']",
         "Regular Text Recognition"],
        ["2", ok, "q", "['unterminated", "Doc-oriented VQA"],
        ["3", "99", "q", "['a']", "Doc-oriented VQA"],            # reference to a missing index
        ["4", "5", "q", "['a']", "Doc-oriented VQA"],             # reference to a reference
        ["5", "0", "q", "['a']", "Doc-oriented VQA"],
        ["6", ok, "q", "['a']", "Nonexistent Category"],
        ["7", ok, "q", "[1, 2]", "Digit String Recognition"],     # numbers are kept as strings
    ])
    items = {it.item_id: it for it in _items(OCRBench(data_dir=tmp_path))}
    errors = {k: v.error for k, v in items.items() if isinstance(v, ItemError)}
    assert set(errors) == {"ocrbench/1", "ocrbench/2", "ocrbench/3", "ocrbench/4", "ocrbench/6"}
    for key, line in (("ocrbench/1", 3), ("ocrbench/2", 4), ("ocrbench/3", 5), ("ocrbench/4", 6),
                      ("ocrbench/6", 8)):
        assert f"{path}:{line}:" in errors[key] and "\n" not in errors[key]
    assert "base64" in errors["ocrbench/1"] and "literal" in errors["ocrbench/2"]
    assert "'99'" in errors["ocrbench/3"] and "reference" in errors["ocrbench/4"]
    assert "unknown category" in errors["ocrbench/6"]
    assert items["ocrbench/7"].references == ["1", "2"]
    assert isinstance(items["ocrbench/5"], Item)


def test_hostile_answer_is_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    hostile = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    with pytest.raises(ValueError, match="literal"):
        parse_answer(hostile)
    with pytest.raises(ValueError):
        parse_answer(f"[{hostile}]")
    _write_tsv(tmp_path / "OCRBench.tsv", [["0", _b64(_png()), "q", hostile, "Doc-oriented VQA"]])
    (item,) = _items(OCRBench(data_dir=tmp_path))
    assert isinstance(item, ItemError) and "literal" in item.error
    assert not marker.exists()
    assert parse_answer("['a', \"b\"]") == ["a", "b"] and parse_answer("'solo'") == ["solo"]
    with pytest.raises(ValueError):
        parse_answer("[]")


def test_subsets_accept_categories_and_groups(tmp_path):
    assert OCRBench(subsets=["text recognition"]).subsets() == ocr.CATEGORIES[:6]
    assert OCRBench(subsets=["doc-oriented_vqa", HME]).subsets() == ["Doc-oriented VQA", HME]
    with pytest.raises(UserError, match="bogus"):
        OCRBench(subsets=["bogus"])


# -- scoring -------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction, refs, expected", [
    ("x ^ { 2 } + 1", ["x^{2}+1"], 1.0),          # all spaces removed on both sides
    ("  x^{2}\n+1 ", ["x^{2} +1"], 1.0),           # newline -> space -> removed
    ("The answer is \\frac{a}{b}.", ["\\frac{a}{b}"], 1.0),
    ("X^{2}+1", ["x^{2}+1"], 0.0),                 # case is kept for HME
    ("y", ["x", "y"], 1.0),                        # any reference counts
])
def test_hme_scoring(prediction, refs, expected):
    assert ocr.score(HME, prediction, refs) == expected


@pytest.mark.parametrize("prediction, refs, expected", [
    ("The text says HELLO world", ["hello"], 1.0),   # lower-cased substring
    ("foo\nbar", ["Foo bar"], 1.0),                  # newline -> space
    ("foobar", ["foo bar"], 0.0),                    # spaces are kept outside HME
    ("  12.50  ", ["12.50", "12,50"], 1.0),
    ("nothing", ["something"], 0.0),
])
def test_other_scoring(prediction, refs, expected):
    assert ocr.score("Scene Text-centric VQA", prediction, refs) == expected


def test_group_and_total_arithmetic():
    records = []
    # Full benchmark shape: 50 per recognition category, 200/200/200/100 for the others.
    sizes = {c: 50 for c in ocr.CATEGORIES[:6]} | {"Scene Text-centric VQA": 200, "Doc-oriented VQA": 200,
                                                   "Key Information Extraction": 200, HME: 100}
    hits = {c: i + 1 for i, c in enumerate(ocr.CATEGORIES)}  # category k gets k points
    for c, n in sizes.items():
        for i in range(n):
            records.append({"status": "ok", "subset": c, "score": 1.0 if i < hits[c] else 0.0})
    records[0] = {"status": "failed", "subset": ocr.CATEGORIES[0], "score": None}  # a failure scores 0
    summary = OCRBench().summarize(records)
    cols = summary["columns"]
    assert list(cols) == [*ocr.GROUPS, "Total"]
    assert cols["Text Recognition"] == (1 + 2 + 3 + 4 + 5 + 6) - 1
    assert (cols["Scene Text-centric VQA"], cols["Doc-oriented VQA"], cols["Key Information Extraction"],
            cols[HME]) == (7, 8, 9, 10)
    assert cols["Total"] == sum(cols[g] for g in ocr.GROUPS) == 54
    assert summary["groups"]["Text Recognition"] == {"score": 20.0, "n": 299, "expected": 300}
    assert summary["n_scored"] == 999 and summary["complete"] is False
    assert sum(sizes.values()) == ocr.FULL_SIZE == 1000


# -- CLI: errors and the smoke run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vl_model(smoke_cache) -> Path:
    from oscar_eval.models import vision

    return vision.smoke_model_path()


def test_missing_data_is_a_one_line_error(capsys, tmp_path, vl_model):
    code, _, err = run_cli(capsys, "run", "ocrbench", "--model", str(vl_model), "--method", "fp16",
                        "--data-dir", str(tmp_path / "nowhere"), "--results", str(tmp_path / "r"))
    assert code == 2 and str(tmp_path / "nowhere") in error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "run", "ocrbench", "--model", str(vl_model), "--method", "fp16",
                        "--data-dir", str(tmp_path / "empty"), "--results", str(tmp_path / "r"))
    line = error_line(err)
    assert code == 2 and "OCRBench.tsv" in line and "echo840/OCRBench" in line
    assert not (tmp_path / "r" / "runs").exists()


def test_malformed_row_is_recorded_and_the_run_continues(capsys, tmp_path, vl_model):
    path = _write_tsv(tmp_path / "data" / "OCRBench.tsv", [
        ["0", _b64(_png()), "what is written?", "['a']", "Regular Text Recognition"],
        ["1", _b64(_png()), "what is written?", "os.system('x')", "Regular Text Recognition"],
    ])
    code, _, err = run_cli(capsys, "run", "ocrbench", "--model", str(vl_model), "--method", "fp16", "--data-dir",
                        str(tmp_path / "data"), "--results", str(tmp_path / "r"), "--no-progress")
    assert code == 1 and "1 item(s) failed" in err, err  # failed items make the exit status non-zero
    (run_dir,) = (tmp_path / "r" / "runs").iterdir()
    recs = {r["item_id"]: r for r in map(json.loads, (run_dir / "records.jsonl").read_text().splitlines())}
    assert recs["ocrbench/0"]["status"] == "ok"
    assert recs["ocrbench/1"]["status"] == "failed" and f"{path}:3:" in recs["ocrbench/1"]["error"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_items"] == 2 and summary["n_failed"] == 1


def test_qwen_vl_min_pixels_on_ocrbench(vl_model):
    from oscar_eval.models.vision import VisionRunner, load_vision_model

    loaded = load_vision_model(vl_model, device="cpu")
    runner = VisionRunner(loaded)
    item = next(it for it in _items(OCRBench(data_dir=SMOKE_TSV.parent)) if isinstance(it, Item))
    assert runner.image_kwargs(item)["size"]["shortest_edge"] == 10 * 10 * 32 * 32
    inputs, text = runner.build_inputs(item)
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert h * w * 16 * 16 >= 10 * 10 * 32 * 32  # the tiny fixture image was scaled up to min_pixels
    n_image_tokens = int((inputs["input_ids"] == runner.processor.image_token_id).sum())
    assert n_image_tokens == t * h * w // 4 and text.index("<|image_pad|>") < text.index(item.prompt)
    assert int(inputs["mm_token_type_ids"].sum()) == n_image_tokens


def test_smoke_run_end_to_end_and_report(capsys, tmp_path, smoke_cache):
    results = tmp_path / "results"
    code, out, err = run_cli(capsys, "run", "ocrbench", "--method", "fp16", "--method", "oscar",
                          "--results", str(results), "--no-progress")
    assert code == 0, err
    assert "SMOKE CONFIGURATION" in err and "Qwen3-VL" in err and "Total" in out
    runs = sorted((results / "runs").iterdir())
    assert [r.name.split("-")[-2] for r in runs] == ["fp16", "oscar"]
    n_rows = len(SMOKE_TSV.read_text().splitlines()) - 1
    for run_dir in runs:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["configuration"] == "smoke" and manifest["benchmark"] == "ocrbench"
        assert manifest["model"]["architecture"] == "Qwen3VLForConditionalGeneration"
        assert list(manifest["data"]["files"]) == ["OCRBench.tsv"]
        recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
        assert len(recs) == n_rows and all(r["status"] == "ok" for r in recs)
        assert all(r["input_tokens"] > 100 and r["new_tokens"] >= 1 for r in recs)  # image tokens included
        # Records re-score to what the summary says (the shared image rows included).
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["configuration"] == "smoke" and summary["n_items"] == n_rows
        assert list(summary["columns"]) == [*ocr.GROUPS, "Total"]
        assert summary["columns"]["Total"] == sum(r["score"] for r in recs)
        assert summary["groups"]["Scene Text-centric VQA"]["n"] == 2

    from oscar_eval.report import render_report

    rendered = render_report(results, tmp_path / "report", include_smoke=True)
    md = rendered.markdown.read_text(encoding="utf-8")
    section = md[md.index("Table 6: OCRBench"):]
    assert "smoke-tiny-qwen3-vl" in section
    assert "Handwritten Mathematical Expression Recognition" in section and "Total" in section


# -- VLMEvalKit adapter --------------------------------------------------------------------------
def test_vlmevalkit_adapter_without_vlmeval(tmp_path, vl_model):
    from oscar_eval.adapters import vlmevalkit as vk
    from oscar_eval.models.vision import VisionRunner

    model = vk.OscarVLM(vl_model, method="oscar", device="cpu", max_new_tokens=8)
    image = tmp_path / "img.png"
    image.write_bytes(_png("white", (40, 20)))
    answer = model.generate_inner([{"type": "image", "value": str(image)},
                                   {"type": "text", "value": "what is written?"}], dataset="OCRBench")
    assert isinstance(answer, str)
    item = vk.message_to_item([{"type": "image", "value": str(image)}, {"type": "text", "value": "what is written?"}],
                              "OCRBench", 8)
    import oscar_core as oc

    same = VisionRunner(model.loaded).generate(item, oc.make_cache(model.loaded.model, "oscar")).prediction
    assert answer == same
    rows = vk.eval_rows([{"item_id": "ocrbench/7", "subset": HME, "status": "ok", "prediction": "p",
                          "references": ["a"]},
                         {"item_id": "ocrbench/8", "subset": HME, "status": "failed", "references": ["b"]}])
    assert rows == [{"index": "7", "answer": "['a']", "category": HME, "prediction": "p"},
                    {"index": "8", "answer": "['b']", "category": HME, "prediction": ""}]
    if not vk.HAVE_VLMEVAL:
        with pytest.raises(UserError, match="VLMEvalKit"):
            vk.cross_check(tmp_path)


# -- LLaVA-NeXT: the processor's own chat format and anyres image handling -----------------------
def _tiny_llava_next(folder: Path) -> Path:
    """A tiny random LLaVA-NeXT saved with a real LlavaNextProcessor (vicuna-style template), offline."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from oscar_eval.smoke import build_tokenizer

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                "{% endif %}{% endfor %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
                "{% endif %}{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=[[32, 32]])
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=16, chat_template=template,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096)
    vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, image_size=32, patch_size=16, projection_dim=64)
    config = LlavaNextConfig(text_config=text, vision_config=vision, image_grid_pinpoints=[[32, 32]],
                             image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                             vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def test_llava_next_runner_uses_its_chat_format(tmp_path):
    import oscar_core as oc
    from oscar_eval.models import load_model, runner_for

    loaded = load_model(_tiny_llava_next(tmp_path / "llava"), device="cpu")  # dispatches on the config
    runner = runner_for("vision", loaded)
    _write_tsv(tmp_path / "d" / "OCRBench.tsv",
               [["0", _b64(_png("white", (50, 30))), "what is written?", "['a']", "Regular Text Recognition"]])
    (item,) = _items(OCRBench(data_dir=tmp_path / "d"))
    assert runner.image_kwargs(item) == {}  # min_pixels is a Qwen-VL setting
    inputs, text = runner.build_inputs(item)
    assert text == "USER: <image>\nwhat is written? ASSISTANT:"
    assert tuple(inputs["image_sizes"][0].tolist()) == (30, 50)
    for method in ("fp16", "oscar"):
        gen = runner.generate(item, oc.make_cache(loaded.model, method))
        assert gen.new_tokens >= 1 and gen.input_tokens == inputs["input_ids"].shape[1]


def _upstream_ocrbench_evaluate(frame) -> dict:
    """An independent transcription of VLMEvalKit's OCRBench.evaluate (the oracle of the cross-check)."""
    import ast

    cats = dict.fromkeys(ocr.CATEGORIES, 0)
    for _, line in frame.iterrows():
        predict, answers, category = str(line["prediction"]), ast.literal_eval(line["answer"]), line["category"]
        for answer in answers:
            if category == HME:
                a, p = (x.strip().replace("\n", " ").replace(" ", "") for x in (answer, predict))
            else:
                a, p = (x.lower().strip().replace("\n", " ") for x in (answer, predict))
            if a in p:
                cats[category] += 1
                break
    out = {"Text Recognition": sum(cats[c] for c in ocr.CATEGORIES[:6])}
    out |= {c: cats[c] for c in ocr.CATEGORIES[6:]}
    out["Final Score"] = sum(out.values())
    out["Final Score Norm"] = out["Final Score"] / 10
    return out


def test_vlmevalkit_cross_check_wiring(tmp_path, monkeypatch):
    """cross_check with a stand-in ``vlmeval`` (dump + OCRBench.evaluate); the real one runs where installed."""
    import sys
    import types

    import pandas as pd

    from oscar_eval.adapters import vlmevalkit as vk

    smp = types.ModuleType("vlmeval.smp")
    smp.dump = lambda df, path: df.to_pickle(path)
    dataset = types.ModuleType("vlmeval.dataset")
    dataset.OCRBench = type("OCRBench", (), {"evaluate": staticmethod(
        lambda path: _upstream_ocrbench_evaluate(pd.read_pickle(path)))})
    monkeypatch.setitem(sys.modules, "vlmeval", types.ModuleType("vlmeval"))
    monkeypatch.setitem(sys.modules, "vlmeval.smp", smp)
    monkeypatch.setitem(sys.modules, "vlmeval.dataset", dataset)
    monkeypatch.setattr(vk, "HAVE_VLMEVAL", True)

    cases = [("Regular Text Recognition", "It says HELLO", ["hello"]), ("Digit String Recognition", "1 2", ["12"]),
             (HME, "x ^ 2", ["x^2"]), (HME, "X^2", ["x^2"]), ("Doc-oriented VQA", "a\nb", ["A B", "z"]),
             ("Key Information Extraction", "nope", ["yes"])]
    records = [{"item_id": f"ocrbench/{i}", "subset": c, "status": "ok", "prediction": p, "references": refs,
                "score": ocr.score(c, p, refs)} for i, (c, p, refs) in enumerate(cases)]
    records.append({"item_id": "ocrbench/9", "subset": "Scene Text-centric VQA", "status": "failed",
                    "references": ["x"], "score": None})
    run_dir = tmp_path / "results" / "runs" / "ocrbench-m-oscar-00000000"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text("{}")
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "summary.json").write_text(json.dumps(OCRBench().summarize(records)))
    result = vk.cross_check(run_dir, tmp_path / "work")
    assert result["agree"], result
    assert result["vlmevalkit"]["Total"] == result["ours"]["Total"] == 3
