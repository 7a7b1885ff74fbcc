"""Needle-in-a-haystack: placement (token-exact), context sizing, scoring, summary grid, smoke run through
the CLI (fp16 + oscar), --resume, one-line errors, and the report's heatmap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oscar_eval.benchmarks.niah import (
    SMOKE_DATA,
    NeedleInAHaystack,
    depth_percents,
    insert_needle,
    parse_contexts,
    retrieved,
    summarize_records,
)
from oscar_eval.cli import UserError, main


@pytest.fixture(scope="module")
def tok():
    from oscar_eval.smoke import build_tokenizer

    return build_tokenizer()  # byte-level: one token per byte, so every position is checkable exactly


def _bench(tok, contexts=(512, 1024), depths=15, chat_template=False, **kw) -> NeedleInAHaystack:
    b = NeedleInAHaystack(data_dir=SMOKE_DATA, contexts=list(contexts), depths=depths, **kw)
    b.use_tokenizer("smoke-tokenizer", chat_template=chat_template, max_input_len=4096, tokenizer=tok)
    return b


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# -- pure helpers -------------------------------------------------------------------------------
def test_depths_and_contexts():
    assert depth_percents(15) == [0, 7, 14, 21, 29, 36, 43, 50, 57, 64, 71, 79, 86, 93, 100]
    assert depth_percents(3) == [0, 50, 100] and depth_percents(1) == [0]
    assert parse_contexts("1k, 2k,42000,1024") == [1024, 2048, 42000]  # 1k = 1024 (as RULER's)
    assert parse_contexts("42k") == [43008] and parse_contexts([512, "1.5k"]) == [512, 1536]
    for bad in ("12q", "", "0"):
        with pytest.raises(UserError):
            parse_contexts(bad)
    with pytest.raises(UserError):
        depth_percents(0)


def test_insert_needle_rule():
    hay = [1, 2, 9, 3, 4, 9, 5, 6]  # 9 ends a sentence

    def end(t):
        return t == 9

    assert insert_needle(hay, [7, 7], 50, end) == ([1, 2, 9, 7, 7, 3, 4, 9, 5, 6], 3)  # int(8*.5)=4 -> back to 3
    assert insert_needle(hay, [7], 75, end)[1] == 6            # position 6 follows a 9: stays
    assert insert_needle(hay, [7], 0, end)[1] == 0
    assert insert_needle(hay, [7], 100, end) == (hay + [7], 8)  # appended
    assert insert_needle([1, 2, 3, 4], [7], 90, end)[1] == 0   # no sentence end before: at the start


# -- construction with the real template and tokenizer ------------------------------------------------
def test_needle_at_depth_on_sentence_boundary_token_exact(tok):
    b = _bench(tok)
    prefix, _, _ = b.template.partition("{context}")
    needle = _ids(tok, b.needle)
    dot = _ids(tok, ".")
    for context in b.contexts:
        for depth in b.depths:
            built = b.build(context, depth)
            ids = tok(built.prompt, add_special_tokens=True)["input_ids"]
            assert len(ids) == built.input_tokens == context  # byte tokens: the budget is filled exactly
            start = len(tok(prefix, add_special_tokens=True)["input_ids"])
            body = ids[start:start + built.haystack_tokens + len(needle)]
            at = built.needle_at
            assert body[at:at + len(needle)] == needle
            hay = body[:at] + body[at + len(needle):]
            assert hay == b._hay[:built.haystack_tokens]  # the haystack's first tokens, in order
            assert built.target == (int(len(hay) * depth / 100) if depth < 100 else len(hay))
            assert at <= built.target
            if 0 < at < len(hay):
                assert hay[at - 1] in dot                          # right after a sentence end ...
            assert not any(t in dot for t in hay[at:built.target])  # ... the nearest one at or before
            if depth == 100:
                assert at == len(hay)
    # depth moves the needle monotonically through the haystack
    positions = [b.build(1024, d).needle_at for d in b.depths]
    assert positions == sorted(positions) and positions[0] == 0 and positions[-1] == b.build(1024, 100).haystack_tokens


def test_context_length_respected_with_chat_template(tok):
    b = _bench(tok, contexts=(600, 900), depths=3, chat_template=True)
    for c in b.contexts:
        for d in b.depths:
            built = b.build(c, d)
            text = tok.apply_chat_template([{"role": "user", "content": built.prompt}], tokenize=False,
                                           add_generation_prompt=True)
            assert built.input_tokens == len(_ids(tok, text)) <= c
    items = list(b.items("600"))
    assert [i.item_id for i in items] == ["600/0", "600/50", "600/100"]
    assert all(i.length == 600 and i.max_new_tokens == 64 for i in items)
    with pytest.raises(UserError, match="too small"):
        _bench(tok, contexts=(200,), depths=1).build(200, 0)
    with pytest.raises(UserError, match="exceeds --max-input-len"):
        NeedleInAHaystack(data_dir=SMOKE_DATA, contexts=[8192]).use_tokenizer("x", max_input_len=4096, tokenizer=tok)


def test_context_fits_with_a_merging_bpe_tokenizer():
    """A BPE with merges (tokens span the needle's seams): the prompt still fits, filled almost fully."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([(SMOKE_DATA / "haystack.txt").read_text()] * 4, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    bpe = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    b = NeedleInAHaystack(data_dir=SMOKE_DATA, contexts=[300, 700, 1500], depths=5)
    b.use_tokenizer("bpe", max_input_len=4096, tokenizer=bpe)
    for c in b.contexts:
        for d in b.depths:
            built = b.build(c, d)
            n = len(bpe(built.prompt)["input_ids"])
            assert n == built.input_tokens <= c and n >= c - 8
            before, needle, _ = built.prompt.partition(b.needle.strip())
            assert needle and (d in (0, 100) or before.rstrip().endswith("."))  # 100: appended


def test_scoring_rule():
    keys = ["sandwich", "Dolores Park"]
    assert retrieved("The best thing to do is eat a sandwich and sit in Dolores Park.", keys) == 1.0
    assert retrieved("EAT A SANDWICH, then sit in dolores-park!", keys) == 1.0   # case and punctuation
    assert retrieved("eat sandwiches in Dolores\nPark", keys) == 1.0              # substring, whitespace
    assert retrieved("Sit in Dolores Park on a sunny day.", keys) == 0.0          # one key missing
    assert retrieved("The best thing to do in San Francisco is unknown.", keys) == 0.0
    assert retrieved("", keys) == 0.0 and retrieved("sandwich", []) == 0.0


def test_summary_grid_arithmetic():
    recs = [{"item_id": f"{c}/{d}", "status": "ok", "score": s}
            for (c, d, s) in [(1000, 0, 1.0), (1000, 50, 0.0), (1000, 100, 1.0), (2000, 0, 1.0), (2000, 50, 1.0)]]
    recs.append({"item_id": "2000/100", "status": "failed", "score": None})
    s = summarize_records(recs)
    assert s["grid"] == {"1000": {"0": 100.0, "50": 0.0, "100": 100.0}, "2000": {"0": 100.0, "50": 100.0}}
    assert list(s["grid"]) == ["1000", "2000"] and list(s["grid"]["1000"]) == ["0", "50", "100"]
    assert s["average"] == pytest.approx(80.0) and s["n"] == 5
    assert s["contexts"] == {"1000": pytest.approx(200 / 3), "2000": 100.0}
    assert s["depths"] == {"0": 100.0, "50": 50.0, "100": 100.0}
    assert s["columns"] == {"Accuracy": pytest.approx(80.0)}
    assert summarize_records([])["average"] is None


def test_printed_grid_averages_each_context_and_shows_the_overall_apart(capsys):
    from oscar_eval.commands.run import print_summaries

    recs = [{"item_id": f"{c}/{d}", "status": "ok", "score": s}
            for (c, d, s) in [(1000, 0, 1.0), (1000, 50, 0.0), (1000, 100, 0.0), (2000, 0, 1.0), (2000, 50, 1.0),
                              (2000, 100, 0.0)]]
    summary = {"benchmark": "niah", "model_label": "m", "method": "fp16", "n_items": 6, "n_failed": 0,
               "run_dir": "RUN", **summarize_records(recs)}
    print_summaries([summary])
    out = capsys.readouterr().out
    rows = {cells[0]: cells[1:] for line in out.splitlines()
            if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) == 4}
    assert rows["Average"] == ["33.33", "66.67", "50.00"]  # per context (column), then all cells
    assert rows["0"] == ["100.00", "100.00", "100.00"] and rows["100"] == ["0.00", "0.00", "0.00"]
    assert rows["50"] == ["0.00", "100.00", "50.00"]  # the last column: each depth over all contexts
    assert "all contexts" in out and "overall average 50.00" in out


# -- through the command line -----------------------------------------------------------------------
def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, smoke_cache) -> Path:
    root = tmp_path_factory.mktemp("niah_results")
    code = main(["run", "niah", "--method", "fp16", "--method", "oscar", "--results", str(root), "--no-progress"])
    assert code == 0
    return root


def test_smoke_run_fp16_and_oscar(smoke_results, capsys):
    runs = sorted((smoke_results / "runs").iterdir())
    assert [r.name.split("-")[-2] for r in runs] == ["fp16", "oscar"]
    for run_dir in runs:
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["configuration"] == "smoke" and m["benchmark"] == "niah" and m["subsets"] == ["512", "1024"]
        assert m["settings"]["niah"]["answer"] == ["sandwich", "Dolores Park"]
        assert list(m["data"]["files"]) == ["haystack.txt"]
        recs = _records(run_dir)
        assert [r["item_id"] for r in recs] == ["512/0", "512/50", "512/100", "1024/0", "1024/50", "1024/100"]
        assert all(r["status"] == "ok" and r["score"] in (0.0, 1.0) for r in recs)
        assert all(r["input_tokens"] <= r["length"] and not r["truncated"] for r in recs)
        s = json.loads((run_dir / "summary.json").read_text())
        assert s["configuration"] == "smoke" and s["n_items"] == 6 and s["n_failed"] == 0
        assert set(s["grid"]) == {"512", "1024"} and set(s["grid"]["512"]) == {"0", "50", "100"}
        assert s["average"] == pytest.approx(100 * sum(r["score"] for r in recs) / 6)
        assert s["columns"]["Accuracy"] == s["average"] and "containment" in s["scoring"]["rule"]


def test_resume_skips_done_items(tmp_path, smoke_cache, capsys):
    args = ["run", "niah", "--method", "fp16", "--contexts", "512", "--depths", "3", "--results", str(tmp_path),
            "--no-progress"]
    assert _run(capsys, *args)[0] == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    first = _records(run_dir)
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "records.jsonl").write_text("".join(lines[:1]) + lines[1][:20])  # killed mid-record
    code, _, err = _run(capsys, *args, "--resume")
    assert code == 0 and "1 item(s) already recorded were skipped" in err
    again = _records(run_dir)
    assert [r["item_id"] for r in again] == ["512/0", "512/50", "512/100"]
    assert again[0] == first[0] and [r["prediction"] for r in again] == [r["prediction"] for r in first]
    code, _, err = _run(capsys, *args, "--resume")  # nothing left to do
    assert code == 0 and "3 item(s) already recorded were skipped" in err and len(_records(run_dir)) == 3
    # another grid is another run (issue 14: it used to be merged into this one)
    assert _run(capsys, *[("1024" if a == "512" else a) for a in args], "--resume")[0] == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2
    s = json.loads((run_dir / "summary.json").read_text())
    assert list(s["grid"]) == ["512"] and s["n_items"] == 3


def test_missing_haystack_is_one_line_error(capsys, tmp_path, smoke_model):
    missing = tmp_path / "nowhere" / "hay.txt"
    code, _, err = _run(capsys, "run", "niah", "--model", str(smoke_model), "--method", "fp16",
                        "--haystack", str(missing), "--results", str(tmp_path / "res"))
    lines = [x for x in err.splitlines() if x.startswith("oscar-eval: error:")]
    assert code == 2 and len(lines) == 1 and str(missing) in lines[0]
    code, _, err = _run(capsys, "run", "niah", "--model", str(smoke_model), "--data-dir", str(tmp_path),
                        "--results", str(tmp_path / "res"))
    assert code == 2 and str(tmp_path / "haystack.txt") in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "run", "longbench", "--contexts", "1k")
    assert code == 2 and "only for the niah benchmark" in err
    assert not (tmp_path / "res").exists()


def test_user_haystack_file(capsys, tmp_path, smoke_model):
    hay = tmp_path / "my_hay.txt"
    hay.write_text((SMOKE_DATA / "haystack.txt").read_text())
    code, out, _ = _run(capsys, "run", "niah", "--model", str(smoke_model), "--method", "fp16", "--haystack",
                        str(hay), "--contexts", "600", "--depths", "2", "--results", str(tmp_path / "res"),
                        "--no-progress")
    assert code == 0 and "depth %" in out
    (run_dir,) = (tmp_path / "res" / "runs").iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["configuration"] == "user" and list(m["data"]["files"]) == ["my_hay.txt"]
    assert [r["item_id"] for r in _records(run_dir)] == ["600/0", "600/100"]


def test_relative_data_dir_with_a_haystack_name(capsys, tmp_path, smoke_model, monkeypatch):
    # --data-dir relative to the working directory and --haystack a name inside it: the manifest records
    # the file relative to that folder (it once raised ValueError: an absolute file against a relative dir)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_hay.txt").write_text((SMOKE_DATA / "haystack.txt").read_text())
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "run", "niah", "--model", str(smoke_model), "--method", "fp16", "--data-dir",
                          "data", "--haystack", "my_hay.txt", "--contexts", "600", "--depths", "2",
                          "--results", "res", "--no-progress")
    assert code == 0, err
    (run_dir,) = (tmp_path / "res" / "runs").iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert list(m["data"]["files"]) == ["my_hay.txt"] and m["data"]["dir"] == str((tmp_path / "data").resolve())


def test_model_without_haystack_uses_the_labelled_stdlib_docstrings(capsys, tmp_path, smoke_model, monkeypatch):
    monkeypatch.setenv("OSCAR_EVAL_HOME", str(tmp_path / "home"))
    code, out, err = _run(capsys, "run", "niah", "--model", str(smoke_model), "--method", "fp16", "--contexts", "600",
                          "--depths", "2", "--results", str(tmp_path / "res"), "--no-progress")
    assert code == 0 and "depth %" in out
    assert "standard library's docstrings" in err and "not the usual essays" in err
    (run_dir,) = (tmp_path / "res" / "runs").iterdir()
    (name,) = json.loads((run_dir / "manifest.json").read_text())["data"]["files"]
    assert name.startswith("stdlib-docstrings-py") and (tmp_path / "home" / "haystacks" / name).is_file()


def test_report_renders_niah_heatmap(smoke_results, tmp_path):
    from oscar_eval.report import render_report

    out = render_report(smoke_results, tmp_path / "report", include_smoke=True)
    assert (tmp_path / "report" / "fig-niah.png") in out.figures
    md = out.markdown.read_text()
    assert "Needle-in-a-haystack" in md and "fig-niah.png" in md
    assert "no heatmap" not in md
