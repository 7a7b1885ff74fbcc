"""`oscar-eval run` output (one side-by-side table, a line per finished method, --output json), the
cheap checks that come before any banner or model load, and `oscar-eval list` (issue 17)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from oscar_eval.comparison import compare, summary_rows

from .conftest import error_line, run_cli


def _lb(method: str, qasper: float, trec: float | None, bpe: float = 3.0) -> dict:
    means = [v for v in (qasper, trec) if v is not None]
    return {"benchmark": "longbench_e", "model_label": "m", "method": method, "bits_per_element": bpe,
            "n_items": 4, "n_failed": 0, "run_dir": f"RUN-{method}",
            "subsets": {"qasper_e": {"mean": qasper}, "trec_e": {"mean": trec}},
            "average": sum(means) / len(means)}


# -- the comparison (pure) -------------------------------------------------------------------------------
def test_side_by_side_rows_and_differences_to_fp16():
    c = compare([_lb("oscar", 40.0, 60.0), _lb("fp16", 42.0, 61.0, 16.0), _lb("kivi", 30.0, None)])
    assert c["methods"] == ["oscar", "fp16", "kivi"] and c["reference"] == "fp16"
    rows = {r["row"]: r for r in c["rows"]}
    assert list(rows) == ["qasper_e", "trec_e", "Average"]  # the benchmark's rows, in its order
    assert rows["qasper_e"]["values"] == {"oscar": 40.0, "fp16": 42.0, "kivi": 30.0}
    assert rows["qasper_e"]["delta_vs_fp16"] == {"oscar": pytest.approx(-2.0), "kivi": pytest.approx(-12.0)}
    assert rows["trec_e"]["delta_vs_fp16"] == {"oscar": pytest.approx(-1.0), "kivi": None}  # no number: no delta
    assert rows["Average"]["delta_vs_fp16"]["oscar"] == pytest.approx(50.0 - 51.5)
    assert c["bits_per_element"] == {"oscar": 3.0, "fp16": 16.0, "kivi": 3.0}
    # Without fp16 there is nothing to subtract; the same method twice gets two columns.
    c = compare([_lb("oscar", 40.0, 60.0), _lb("oscar", 41.0, 60.0)])
    assert c["reference"] is None and c["methods"] == ["oscar", "oscar#2"]
    assert all("delta_vs_fp16" not in r for r in c["rows"])


def test_rows_of_each_benchmark_kind():
    niah = {"benchmark": "niah", "grid": {"1024": {"0": 100.0}}, "contexts": {"1024": 100.0, "2048": 50.0},
            "depths": {"0": 75.0}, "average": 75.0, "columns": {"Accuracy": 75.0}}
    assert summary_rows(niah) == {"1024 tokens": 100.0, "2048 tokens": 50.0, "Average": 75.0}
    ruler = {"benchmark": "ruler", "grid": {"4096": {"vt": 80.0}}, "tasks": {"vt": 80.0, "cwe": 20.0},
             "contexts": {"4096": 50.0}, "average": 50.0, "columns": {"vt": 80.0, "cwe": 20.0, "Average": 50.0}}
    assert summary_rows(ruler) == {"vt": 80.0, "cwe": 20.0, "4096 tokens": 50.0, "Average": 50.0}
    ocr = {"benchmark": "ocrbench", "subsets": {}, "columns": {"Text Recognition": 120, "Total": 500}}
    assert summary_rows(ocr) == {"Text Recognition": 120, "Total": 500}
    ppl = {"benchmark": "ppl", "ppl": 8.0, "ref_ppl": 7.5, "nll": 2.08, "kl": 0.1, "top1": 0.9,
           "cached": {"kl": 0.11}}
    assert summary_rows(ppl) == {"PPL": 8.0, "fp16 PPL": 7.5, "NLL": 2.08, "KL": 0.1, "top-1 %": 90.0,
                                 "KL cached": 0.11}


# -- through the command line ----------------------------------------------------------------------------
PPL = ["run", "ppl", "--method", "fp16", "--method", "kivi", "--limit", "1", "--prompt-tokens", "130",
       "--scored-tokens", "8", "--no-progress"]


def test_multi_method_run_prints_one_table_and_a_line_per_method_as_it_finishes(smoke_cache, capsys, tmp_path,
                                                                              monkeypatch):
    from oscar_eval import api

    seen = []
    real = api._run_method

    def spy(plan, run, reload):  # what the user has seen when each method starts
        seen.append((run.name, capsys.readouterr().err))
        return real(plan, run, reload)

    monkeypatch.setattr(api, "_run_method", spy)
    code, out, err = run_cli(capsys, *PPL, "--results", str(tmp_path))
    assert code == 0, err
    assert [name for name, _ in seen] == ["fp16", "kivi"]
    assert "fp16: PPL" in seen[1][1]  # fp16's line came before kivi started
    assert "kivi: PPL" in err and "kivi: PPL" not in seen[1][1]
    assert out.count("ppl | smoke-tiny-llama") == 1  # ONE table
    assert "kivi - fp16" in out and "fp16 PPL" in out and "bits/elem" in out
    (kivi,) = (tmp_path / "runs").glob("ppl-smoke-tiny-llama-kivi-*")
    assert f"kivi: {kivi / 'summary.json'}" in out


def test_output_json_is_alone_on_stdout_and_matches_summary_files(smoke_cache, capsys, tmp_path):
    code, out, err = run_cli(capsys, *PPL, "--results", str(tmp_path), "--output", "json")
    assert code == 0, err
    doc = json.loads(out)  # all of stdout is one JSON document
    assert doc["benchmark"] == "ppl" and doc["methods"] == ["fp16", "kivi"] and doc["reference"] == "fp16"
    rows = {r["row"]: r for r in doc["rows"]}
    fp16, kivi = doc["summaries"]
    assert rows["PPL"]["values"] == {"fp16": fp16["ppl"], "kivi": kivi["ppl"]}
    assert rows["KL"]["delta_vs_fp16"]["kivi"] == pytest.approx(kivi["kl"] - fp16["kl"])
    for s, run in zip(doc["summaries"], doc["runs"], strict=True):
        on_disk = json.loads(open(run["summary"]).read())
        assert run["summary"] == f"{s['run_dir']}/summary.json"
        assert on_disk == {k: v for k, v in s.items() if k != "run_dir"}
    assert "fp16: PPL" in err  # the per-method lines went to stderr


@pytest.mark.parametrize("argv, culprit", [
    (["run", "nosuch", "--contexts", "1k"], "unknown benchmark 'nosuch'"),
    (["run", "niah", "--method", "fp16", "--method", "nosuchmethod"], "nosuchmethod"),
    (["run", "niah", "--method", "kivi", "--set", "kivi.nonsense=3"], "nonsense"),
    (["run", "niah", "--method", "fp16", "--contexts", "1k,0.3k"], "--contexts: '0.3k'"),
    (["run", "ruler", "--method", "fp16", "--tasks", "nosuchtask"], "nosuchtask"),
])
def test_cheap_errors_come_before_the_banner_and_any_model_load(argv, culprit, smoke_cache, capsys, tmp_path,
                                                                 monkeypatch):
    from oscar_eval import models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before a cheap check")

    monkeypatch.setattr(models, "load_model", no_load)
    code, _, err = run_cli(capsys, *argv, "--results", str(tmp_path))
    assert code == 2 and culprit in error_line(err)
    assert "SMOKE CONFIGURATION" not in err and not (tmp_path / "runs").exists()


def test_existing_run_and_missing_data_are_named_before_banner_and_model(smoke_model, capsys, tmp_path,
                                                                         monkeypatch):
    from oscar_eval import models

    args = ["run", "niah", "--method", "fp16", "--contexts", "600", "--depths", "2", "--results", str(tmp_path),
            "--no-progress"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    # The banner says the grid that ran (the overrides), not the smoke defaults (512, 1024; 3 depths).
    (banner,) = [x for x in err.splitlines() if x.startswith("SMOKE CONFIGURATION")]
    assert "contexts 600 tokens, 2 depths (0, 100 %), 2 items" in banner and "512" not in banner
    (run_dir,) = (tmp_path / "runs").iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["contexts"] == {"tokens": [600], "k": 1024, "given": "600"}  # 1k = 1024, recorded

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "already exist" in error_line(err) and "SMOKE CONFIGURATION" not in err
    code, _, err = run_cli(capsys, "run", "longbench", "--model", str(smoke_model), "--method", "fp16",
                           "--data-dir", str(tmp_path / "nowhere"), "--results", str(tmp_path))
    assert code == 2 and str(tmp_path / "nowhere") in error_line(err) and "longbench_e:" not in err


# -- oscar-eval list --------------------------------------------------------------------------------------
def test_list_shows_every_method_parameter_with_type_and_default(capsys):
    import oscar_core as oc

    code, out, _ = run_cli(capsys, "list", "methods")
    assert code == 0
    blocks = {}  # method -> its lines
    for line in out.splitlines()[1:]:
        if not line.startswith(" " * 3):
            name = line.split()[0]
        blocks.setdefault(name, []).append(line)
    assert list(blocks) == oc.list_methods()
    for name in oc.list_methods():
        text = " ".join(" ".join(blocks[name]).split())
        spec = oc.get_method(name)
        for f in dataclasses.fields(spec):  # every --set parameter, from the spec dataclass
            assert f"{f.name}: " in text and f"= {getattr(spec, f.name)!r}" in text, (name, f.name)
    kivi = " ".join(" ".join(blocks["kivi"]).split())
    assert "value_flush: 'block' | 'token' = 'token'" in kivi and "residual_length: int = 128" in kivi
    assert "group_size: int | None = None" in " ".join(" ".join(blocks["quarot"]).split())


def test_list_shows_benchmark_subsets_tasks_options_and_models(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    flat = " ".join(out.split())
    assert "qasper_e, multifieldqa_en_e" in flat and "repobench-p_e" in flat  # LongBench-E subsets
    assert "niah_single_1" in flat and "default all but qa_1, qa_2" in flat  # RULER tasks
    assert "Regular Text Recognition" in flat and "open, instruction_following, closed" in flat
    assert "options: --contexts, --depths, --haystack" in flat and "1k = 1024" in flat
    assert "--set is for method parameters only" in flat
    assert "models (--model NAME" in out and "LlamaForCausalLM" in out
