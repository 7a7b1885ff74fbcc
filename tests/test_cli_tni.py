"""`oscar-eval tni` end to end on the built-in smoke model."""

from __future__ import annotations

import json

from oscar_eval.cli import main


def test_tni_command_writes_summary_and_heatmap(tmp_path, capsys):
    text = " ".join(["the quick brown fox jumps over the lazy dog."] * 12)
    assert main(["tni", "--prompt", text, "--max-tokens", "96", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "tni.json").read_text())
    assert summary["tokens"] == 96
    assert [layer["layer"] for layer in summary["layers"]] == [0, 1]
    assert set(summary["layers"][0]["errors"]) == {"kivi", "oscar"}
    assert (tmp_path / "tni_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "kivi low" in capsys.readouterr().out


def test_tni_command_names_a_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert main(["tni", "--text", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
