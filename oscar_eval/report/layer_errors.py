"""Per-layer attention-output error of each method on a real model, each layer isolated: the files
``scripts/layer_attention_error.py`` writes (``<results>/analysis/layer_error_<model>.json``,
format: oscar_eval/analysis/layer_error.py). One table of means over layers per model, and one heatmap
per model (layers x methods)."""

from __future__ import annotations

import json
from pathlib import Path

from oscar_eval.report import plots
from oscar_eval.report.model import Cell, Figure, Row, Section, Table, slug
from oscar_eval.report.store import num

# (column header, key in the file): what each mean says about where the error comes from
COLUMNS = [("attention output", "output"), ("keys only", "output_keys_only"),
           ("values only", "output_values_only"), ("key reconstruction", "key"),
           ("value reconstruction", "value")]


def _load(path: Path, problems: list[str]) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("layers"), list) or not isinstance(data.get("mean_over_layers"), dict):
            raise ValueError("no 'layers' list or 'mean_over_layers'")
        return data
    except (OSError, ValueError, AttributeError) as exc:
        problems.append(f"{path}: not a layer-error file ({exc.__class__.__name__}: {exc}); skipped")
        return None


def _model_name(data: dict, path: Path) -> str:
    model = data.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    return str(name or path.stem.removeprefix("layer_error_"))


def _table(model: str, data: dict) -> Table:
    means = data["mean_over_layers"]
    layers = data["layers"]
    rows = []
    for label, values in means.items():
        if not isinstance(values, dict):
            continue
        below = [r for r in layers if isinstance(r.get("methods"), dict) and "kivi" in r["methods"]
                 and label in r["methods"]
                 and (a := num(r["methods"][label].get("output"))) is not None
                 and (b := num(r["methods"]["kivi"].get("output"))) is not None and a < b]
        cells = [Cell(num(values.get(key))) for _, key in COLUMNS]
        cells.append(Cell(float(len(below)) if "kivi" in means and label != "kivi" else None))
        rows.append(Row(label, label, cells))
    table = Table(slug("layer-error", model), f"{model}: attention-output error per layer (mean over "
                  f"{len(layers)} layers, each isolated)", [c for c, _ in COLUMNS] + ["layers below KIVI"], rows,
                  decimals=3, compare=False, show_bits=False, col_decimals=[3] * len(COLUMNS) + [0])
    prompt = data.get("prompt") if isinstance(data.get("prompt"), dict) else {}
    table.notes.append(
        "||o_method - o_fp|| / ||o_fp|| of the layer's attention output over "
        f"{prompt.get('steps', '?')} decode steps after a {prompt.get('prompt_tokens', '?')}-token prompt, the "
        "full-precision model's own Q/K/V, only that layer's K/V through the method's cache (errors never "
        "compound across layers). 'keys only' / 'values only' quantize one side; the reconstruction columns "
        "are the quantized keys' and values' relative errors. Lower is better.")
    return table


def _figure(grids: list[tuple[str, dict]]) -> Figure:
    vmax = max((v for _, g in grids for col in g.values() for v in col.values()), default=1.0)
    return plots.heatmaps("fig-layer-error", "Attention-output error per layer (each layer isolated)", grids,
                          "No layer-error file (results/analysis/layer_error_<model>.json), so there is no "
                          "per-layer heatmap.", "method", "layer", "relative attention-output error",
                          vmax=min(vmax, 1.5), cmap="viridis")


def layer_error_section(root: Path, problems: list[str]) -> Section | None:
    tables, grids = [], []
    for path in sorted(root.glob("analysis/layer_error_*.json")):
        data = _load(path, problems)
        if data is None:
            continue
        model = _model_name(data, path)
        tables.append(_table(model, data))
        grid: dict[str, dict[str, float]] = {}
        for row in data["layers"]:
            for label, values in (row.get("methods") or {}).items():
                if (v := num((values or {}).get("output"))) is not None:
                    grid.setdefault(label, {})[str(row.get("layer"))] = v
        if grid:
            grids.append((model, grid))
    if not tables:
        return None
    section = Section("layer-error", "Real checkpoints: attention-output error per layer", blocks=[*tables])
    section.intro.append("Where each method's error arises, layer by layer, on the real checkpoints "
                         "(docs/qwen25_rotation.md explains the Qwen2.5 result).")
    section.blocks.append(_figure(grids))
    return section
