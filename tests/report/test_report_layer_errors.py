"""The per-layer attention-error files of scripts/layer_attention_error.py become one table per model (means
over layers, how many layers each method is below KIVI) and a heatmap; a damaged file is skipped and named."""

from __future__ import annotations

import json
from pathlib import Path

from report_helpers import StoreWriter, md_row

from oscar_eval.report import render_report

KEYS = ("output", "output_keys_only", "output_values_only", "key", "value")


def _file(path: Path, model: str, per_layer: dict[str, list[float]]) -> None:
    layers = [{"layer": i, "methods": {m: {k: v[i] for k in KEYS} for m, v in per_layer.items()}}
              for i in range(len(next(iter(per_layer.values()))))]
    means = {m: {k: sum(v) / len(v) for k in KEYS} for m, v in per_layer.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": {"name": model}, "prompt": {"prompt_tokens": 1920, "steps": 64},
                                "layers": layers, "mean_over_layers": means}), encoding="utf-8")


def test_layer_error_table_and_figure(tmp_path: Path):
    root = tmp_path / "results"
    StoreWriter(root)
    _file(root / "analysis/layer_error_tiny.json", "tiny-model",
          {"kivi": [0.3, 0.2, 0.4], "oscar": [1.2, 0.1, 0.2], "quarot": [0.9, 0.9, 0.9]})
    (root / "analysis/layer_error_broken.json").write_text("{not json", encoding="utf-8")
    done = render_report(root, tmp_path / "report", title="t", generated="2026-12-04 08:00 UTC")
    md = done.markdown.read_text(encoding="utf-8")
    title = "tiny-model: attention-output error per layer (mean over 3 layers, each isolated)"
    oscar = md_row(md, title, "oscar")
    assert oscar[1] == "0.500" and oscar[-1] == "2"  # mean of 1.2, 0.1, 0.2; below KIVI in layers 1 and 2
    assert md_row(md, title, "quarot")[-1] == "0"
    assert md_row(md, title, "kivi")[-1] == "—"
    assert (done.html.parent / "fig-layer-error.png").is_file()
    assert r"layer\_error\_broken.json: not a layer-error file" in md
