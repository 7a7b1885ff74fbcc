"""`oscar-eval report` on the command line, and the paper data shipped with the package."""

from __future__ import annotations

import json

from report_helpers import html_tables

from oscar_eval.cli import main
from oscar_eval.report.paper import load_paper, match_model, normalise_model, paper_value


def test_cli_writes_both_reports(store, tmp_path, capsys):
    out = tmp_path / "reports" / "x"
    assert main(["report", "--results", str(store), "--out", str(out), "--title", "My <title>"]) == 0
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "<title>My &lt;title&gt;</title>" in html
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# My &lt;title&gt;\n")


def test_cli_alias_maps_a_label_to_a_paper_column(writer, tmp_path):
    writer.run("longbench_e", "my-finetune", "oscar", average=41.0)
    out = tmp_path / "r"
    assert main(["report", "--results", str(writer.root), "--out", str(out), "--alias", "my-finetune=llama-3.1-8b"]) == 0
    table = html_tables((out / "index.html").read_text(encoding="utf-8"))["table1-main"]
    assert table[0][3:] == ["Llama-3.1-8B", "Qwen3-8B"]
    assert next(r for r in table if r[0] == "OScaR")[3:6] == ["41.00", "41.75", "-0.75"]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("oscar-eval: error: results folder") and "does not exist" in err
    (tmp_path / "results" / "runs").mkdir(parents=True)
    assert main(["report", "--results", str(tmp_path / "results"), "--alias", "no-equals-sign"]) == 2
    assert "--alias expects LABEL=COLUMN" in capsys.readouterr().err


def test_cli_prints_store_problems_as_warnings(writer, tmp_path, capsys):
    (writer.root / "runs" / "broken").mkdir()
    assert main(["report", "--results", str(writer.root), "--out", str(tmp_path / "r")]) == 0
    assert "oscar-eval report: warning:" in capsys.readouterr().err


def test_paper_results_ship_with_the_package():
    paper = load_paper()
    assert paper["tables"]["longbench_e"]["rows"]["oscar"] == [41.75, 48.74]
    assert paper_value("ocrbench", "kivi", "Qwen3-VL-4B") == 813
    assert paper_value("mmau_pro", "quarot", "AIF") is None  # the paper has no QuaRot row there
    assert paper_value("longbench_e", "oscar", "Not-A-Model") is None
    json.dumps(paper)  # plain data


def test_model_matching_rule():
    cols = ["Llama-3.1-8B", "Qwen3-8B", "LLaVA-v1.6-7B", "Qwen3-VL-8B", "Qwen3-VL-4B"]
    assert match_model("meta-llama/Meta-Llama-3.1-8B-Instruct", cols) == "Llama-3.1-8B"
    assert match_model("llama-3.1-8b", cols) == "Llama-3.1-8B"
    assert match_model("Qwen/Qwen3-8B", cols) == "Qwen3-8B"
    assert match_model("llava-hf/llava-v1.6-vicuna-7b-hf", cols) == "LLaVA-v1.6-7B"
    assert match_model("Qwen3-VL-8B-Instruct", cols) == "Qwen3-VL-8B"
    assert match_model("Qwen3-VL-8B", ["Qwen3-8B"]) is None  # never a looser match
    assert match_model("Llama-3.1-70B", cols) is None
    assert match_model("x", cols, {"x": "qwen3-8b"}) == "Qwen3-8B"
    assert normalise_model("Meta-Llama-3.1-8B-Instruct") == normalise_model("llama3.1_8b") == "llama318b"


def test_registering_the_command_does_not_load_matplotlib():
    import subprocess
    import sys

    code = ("import argparse, sys; from oscar_eval.commands import report; "
            "report.register(argparse.ArgumentParser().add_subparsers()); print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
