"""Accuracy figures built from table selections: accuracy vs bits, NIAH heatmaps, TNI heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

from oscar_eval.report import plots
from oscar_eval.report.model import Figure
from oscar_eval.report.paper import method_label, paper_value
from oscar_eval.report.store import num
from oscar_eval.report.tables import Selection, headline

YLABELS = {"longbench_e": "LongBench-E average score", "ocrbench": "OCRBench score (of 1000)"}


def pareto(sel: Selection | None, benchmark: str) -> Figure:
    """Accuracy vs effective bits per element, one panel per model (ours filled, the paper's hollow)."""
    panels: dict[str, list] = {}
    for (column, method), run in sorted((sel.cells if sel else {}).items()):
        value = headline(run)
        if run.bits is not None and value is not None:
            panels.setdefault(column, []).append((run.bits, value, paper_value(benchmark, method, column), method))
    return plots.accuracy_vs_bits(f"fig-pareto-{benchmark}", f"Accuracy vs bits ({benchmark})",
                                  list(panels.items()), YLABELS.get(benchmark, "score"),
                                  "No run has both a score and bits_per_element, so there is no accuracy-vs-bits plot.")


def niah_heatmaps(sel: Selection | None) -> Figure:
    """One heatmap per (model, method) from the summary's ``grid``: {context: {depth: score}}."""
    grids = []
    for (column, method), run in sorted((sel.cells if sel else {}).items()):
        grid = (run.summary or {}).get("grid")
        if isinstance(grid, dict) and grid and all(isinstance(v, dict) for v in grid.values()):
            grids.append((f"{column}, {method_label(method)}", grid))
    return plots.heatmaps("fig-niah", "Needle-in-a-haystack heatmaps", grids,
                          "No NIAH summary has a 'grid' ({context: {depth: score}}), so there is no heatmap.",
                          "context length (tokens)", "needle depth (%)", "retrieval accuracy (%)")


def tni_heatmaps(root: Path, problems: list[str]) -> Figure:
    """Relative key error per layer (rows) and method x token group (columns), from the
    ``tni.json`` files ``oscar-eval tni --out <results>/tni/<name>`` writes (and those of the
    per-layer analysis, ``<results>/analysis/tni_<model>/``)."""
    grids = []
    for path in sorted([*root.glob("tni/**/tni.json"), *root.glob("analysis/tni_*/tni.json")]):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            layers = data["layers"]
            grid: dict[str, dict[str, float]] = {}
            for layer in layers:
                for method, errs in layer["errors"].items():
                    for part in ("all", "low", "rest"):
                        if num(errs.get(part)) is not None:
                            grid.setdefault(f"{method} {part}", {})[str(layer["layer"])] = 100 * errs[part]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{path}: not a tni.json ({exc.__class__.__name__}); skipped")
            continue
        if grid:
            grids.append((f"{Path(str(data.get('model', path.parent.name))).name}, {data.get('tokens')} tokens", grid))
    vmax = max((v for _, g in grids for col in g.values() for v in col.values()), default=100)
    return plots.heatmaps("fig-tni", "Token norm imbalance: relative key error per layer", grids,
                          "No TNI results (<results>/tni/<name>/tni.json from `oscar-eval tni --out`), so there is "
                          "no TNI heatmap.", "method, tokens (all / low-norm / rest)", "layer",
                          "relative key error (%)", vmax=vmax, cmap="viridis")
