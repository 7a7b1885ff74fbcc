"""`oscar-eval run` / `oscar-eval list`: one-line user errors naming the culprit, listings."""

from __future__ import annotations

import json

from .conftest import SMOKE_DATA, error_line, run_cli


def test_unknown_method(capsys, tmp_path, smoke_cache):
    code, _, err = run_cli(capsys, "run", "longbench", "--method", "nosuchmethod", "--results", str(tmp_path))
    assert code == 2 and "nosuchmethod" in error_line(err)
    assert not (tmp_path / "runs").exists()


def test_unknown_subset(capsys, tmp_path, smoke_cache):
    code, _, err = run_cli(capsys, "run", "longbench", "--method", "fp16", "--subsets", "qasper_e", "bogus_e",
                        "--results", str(tmp_path))
    assert code == 2 and "bogus_e" in error_line(err)


def test_missing_data_dir(capsys, tmp_path, smoke_model):
    code, _, err = run_cli(capsys, "run", "longbench", "--model", str(smoke_model), "--method", "fp16",
                        "--data-dir", str(tmp_path / "nowhere"), "--results", str(tmp_path))
    assert code == 2 and str(tmp_path / "nowhere") in error_line(err)


def test_malformed_jsonl_line_is_a_failed_record_and_the_run_goes_on(capsys, tmp_path, smoke_model):
    data = tmp_path / "data"
    data.mkdir()
    good = (SMOKE_DATA / "trec_e.jsonl").read_text().splitlines()
    (data / "trec_e.jsonl").write_text(good[0] + "\n" + good[1] + "\n" + good[2][:40] + "\n")
    code, _, err = run_cli(capsys, "run", "longbench", "--model", str(smoke_model), "--method", "fp16",
                           "--data-dir", str(data), "--subsets", "trec_e", "--results", str(tmp_path / "res"))
    assert code == 1 and "1 item(s) failed" in err  # failures make the exit status non-zero
    (run,) = (tmp_path / "res" / "runs").iterdir()
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "failed"]
    assert f"{data / 'trec_e.jsonl'}:3" in records[2]["error"]


def test_model_without_data_dir(capsys, tmp_path, smoke_model):
    code, _, err = run_cli(capsys, "run", "longbench", "--model", str(smoke_model), "--method", "fp16")
    assert code == 2 and "--data-dir" in error_line(err)


def test_bad_override(capsys, tmp_path, smoke_cache):
    code, _, err = run_cli(capsys, "run", "longbench", "--method", "kivi", "--set", "nonsense=3",
                        "--results", str(tmp_path))
    assert code == 2 and "nonsense" in error_line(err)


def test_existing_run_needs_resume_or_overwrite(capsys, tmp_path, smoke_cache):
    args = ["run", "longbench", "--method", "fp16", "--subsets", "trec_e", "--limit", "1", "--results",
            str(tmp_path), "--no-progress"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "SMOKE CONFIGURATION" in err and "Average" in out
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--resume" in error_line(err)
    assert run_cli(capsys, *args, "--resume")[0] == 0
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len((run_dir / "records.jsonl").read_text().splitlines()) == 1


def test_manifest_has_full_provenance(capsys, tmp_path, smoke_cache):
    code, _, _ = run_cli(capsys, "run", "longbench", "--method", "fp16", "--set", "fp16.residual_length=0",
                      "--subsets", "lcc_e", "--limit", "1", "--results", str(tmp_path), "--no-progress")
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["schema"] == 1 and m["run_id"] == run_dir.name and m["configuration"] == "smoke"
    assert m["benchmark"] == "longbench_e" and m["subsets"] == ["lcc_e"]
    assert m["model"]["architecture"] == "LlamaForCausalLM" and m["model"]["revision"].startswith("sha256:")
    assert m["method"]["name"] == "fp16" and isinstance(m["method"]["params"], dict)
    assert m["settings"]["seed"] == 42 and m["settings"]["greedy"] is True
    assert len(m["data"]["files"]["lcc_e.jsonl"]) == 64
    for key in ("oscar_eval", "git_commit", "python", "torch", "transformers", "cuda", "gpu"):
        assert key in m["env"]
    assert m["created"].endswith("+00:00")
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["n_items"] == 1 and set(s["subsets"]["lcc_e"]) == {"0-4k", "4-8k", "8k+", "mean", "n"}
    assert s["protocol"] == "paper" and s["method"] == "fp16"


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "methods (--method NAME" in out and "oscar" in out and "kivi" in out and "fp16" in out
    assert "longbench_e" in out and "LlamaForCausalLM" in out
