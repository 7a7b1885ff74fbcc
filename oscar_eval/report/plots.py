"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot: no global state, no display).

Each function returns a ``Figure`` model; with no data it returns one with ``png=None`` and a note,
and the report shows the note instead of an empty plot.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter, NullLocator
from PIL import Image

from oscar_eval.report.efficiency import SpeedRow
from oscar_eval.report.model import Figure
from oscar_eval.report.paper import method_label, paper_value
from oscar_eval.report.store import num
from oscar_eval.report.tables import Selection, headline

RC = {"text.usetex": False, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100}


def _safe(label: object) -> str:
    """Labels come from result files: a "$" must not start mathtext (a parse error would crash)."""
    return str(label).replace("$", r"\$")


def _tokens(x: float, _pos: object = None) -> str:
    """4096 -> "4K", 131072 -> "128K", 48 -> "48"."""
    return f"{x / 1024:g}K" if x >= 1024 and x % 1024 == 0 else f"{x:g}"


def _log2_ticks(ax, values: set[float]) -> None:
    """Ticks at the data's own x values, thinned so that labels never overlap."""
    kept: list[float] = []
    for v in sorted(v for v in values if v > 0):
        if not kept or math.log2(v / kept[-1]) >= 0.25:
            kept.append(v)
    ax.set_xscale("log", base=2)
    ax.set_xticks(kept)
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens))
    ax.xaxis.set_minor_locator(NullLocator())


def _png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    # A 256-colour palette keeps line plots sharp at about a third of the bytes (reports get committed).
    image = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _draw(fig_id: str, title: str, filename: str, empty_note: str, ncols: int,
          draw: Callable[[list], None]) -> Figure:
    if ncols == 0:
        return Figure(fig_id, title, filename, None, empty_note)
    with matplotlib.rc_context(RC):
        fig = MplFigure(figsize=(6.4, 4) if ncols == 1 else (min(5.2 * ncols, 11), 3.8), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        draw(list(axes))
        return Figure(fig_id, title, filename, _png(fig))


def pareto(sel: Selection | None, benchmark: str = "longbench_e") -> Figure:
    """Accuracy vs effective bits per element (ours filled, the paper's value hollow at our bits)."""
    points: dict[str, list[tuple[float, float, float | None, str]]] = defaultdict(list)
    if sel is not None:
        for (column, method), run in sel.cells.items():
            value = headline(run)
            if run.bits is not None and value is not None:
                points[column].append((run.bits, value, paper_value(sel.benchmark, method, column), method))
    name = sel.benchmark if sel else benchmark

    def draw(axes: list) -> None:
        ax = axes[0]
        for i, (column, pts) in enumerate(sorted(points.items())):
            color = f"C{i % 10}"
            pts.sort()
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, label=_safe(f"{column} (ours)"), zorder=3)
            paper = [(p[0], p[2]) for p in pts if p[2] is not None]
            if paper:
                ax.scatter(*zip(*paper, strict=True), facecolors="none", edgecolors=color, label=_safe(f"{column} (paper)"))
            front, best = [], float("-inf")
            for bits, value, _, _ in pts:  # Pareto front: fewer bits, higher accuracy
                if value > best:
                    front.append((bits, value))
                    best = value
            ax.plot(*zip(*front, strict=True), color=color, alpha=0.5, drawstyle="steps-post")
            for bits, value, _, method in pts:
                ax.annotate(_safe(method_label(method)), (bits, value), textcoords="offset points", xytext=(4, 3),
                            fontsize=7)
        _log2_ticks(ax, {p[0] for pts in points.values() for p in pts})
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}"))
        ax.set_xlabel("effective bits per element (log scale)")
        ax.set_ylabel("score")
        ax.figure.legend(fontsize=7, loc="outside lower center", ncols=2)  # below: never over the points

    return _draw(f"fig-pareto-{name}", f"Accuracy vs bits ({name})", f"fig-pareto-{name}.png",
                 "No run has both a score and bits_per_element, so there is no accuracy-vs-bits plot.",
                 1 if points else 0, draw)


def _series(rows: list[SpeedRow], x: Callable[[SpeedRow], float], y: Callable[[SpeedRow], float | None]):
    """{level: {line label: [(x, y)]}}, one line per impl (and arch when several)."""
    archs = {r.arch for r in rows}
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = y(r)
        if value is not None:
            label = r.impl if len(archs) == 1 else f"{r.arch} {r.impl}"
            out[r.level][label].append((x(r), value))
    return out


def _lines(fig_id: str, title: str, empty_note: str, series: dict, xlabel: str, ylabel: str,
           logy: bool = True) -> Figure:
    levels = sorted(series)

    def draw(axes: list) -> None:
        for ax, level in zip(axes, levels, strict=True):
            for i, (label, pts) in enumerate(sorted(series[level].items())):
                pts.sort()
                style = "-" if label.lower().split(" ")[-1].startswith("oscar") else "--"
                ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, color=f"C{i % 10}", label=_safe(label))
            _log2_ticks(ax, {x for pts in series[level].values() for x, _ in pts})
            if logy:
                ax.set_yscale("log")
            ax.set_title(_safe(level), fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)

    return _draw(fig_id, title, f"{fig_id}.png", empty_note, len(levels), draw)


def latency_vs_context(rows: list[SpeedRow]) -> Figure:
    series = _series([r for r in rows if r.batch == 1], lambda r: r.context, lambda r: r.median_us)
    series = {f"level: {k}": v for k, v in series.items()}
    return _lines("fig-latency", "Decode latency vs context (batch 1)",
                  "No batch-1 speed rows, so there is no latency-vs-context plot.", series, "context (tokens)",
                  "median µs per call")


def throughput_vs_batch(rows: list[SpeedRow]) -> Figure:
    batched = [r for r in rows if r.batch > 1]
    contexts = [r.context for r in batched]
    context = 4096 if 4096 in contexts else max(set(contexts), key=contexts.count, default=None)
    chosen = [r for r in rows if r.context == context]
    series = _series(chosen, lambda r: r.batch, lambda r: r.tokens_per_s) if batched else {}
    series = {f"level: {k}": v for k, v in series.items()}
    return _lines("fig-throughput", f"Throughput vs batch (context {context})",
                  "No speed rows with batch > 1, so there is no throughput-vs-batch plot.", series, "batch",
                  "tokens/s (batch / step time)")


def memory(rows: list[SpeedRow]) -> Figure:
    one = [r for r in rows if r.batch == 1]
    kv = _series(one, lambda r: r.context, lambda r: r.kv_bytes and r.kv_bytes / 2**20)
    peak = _series(one, lambda r: r.context, lambda r: r.peak_mem_bytes and r.peak_mem_bytes / 2**20)
    series = {f"KV cache, level: {k}": v for k, v in kv.items()} | {f"peak memory, level: {k}": v for k, v in peak.items()}
    return _lines("fig-memory", "Memory vs context (batch 1, MiB)",
                  "No speed rows record kv_bytes or peak_mem_bytes, so there is no memory plot.", series,
                  "context (tokens)", "MiB")


def niah_heatmaps(sel: Selection | None) -> Figure:
    """One heatmap per (model, method) from the summary's ``grid``: {context: {depth: score}}."""
    grids = []
    for (column, method), run in sorted((sel.cells if sel else {}).items()):
        grid = (run.summary or {}).get("grid")
        if isinstance(grid, dict) and grid and all(isinstance(v, dict) for v in grid.values()):
            grids.append((f"{column}, {method_label(method)}", grid))
    grids = grids[:6]  # a readable figure; every number is still in the tables

    def draw(axes: list) -> None:
        for ax, (label, grid) in zip(axes, grids, strict=True):
            contexts = sorted(grid, key=lambda c: float(c) if str(c).replace(".", "").isdigit() else 0)
            depths = sorted({d for v in grid.values() for d in v},
                            key=lambda d: float(d) if str(d).replace(".", "").isdigit() else 0)
            data = [[_num(grid[c].get(d)) for c in contexts] for d in depths]
            image = ax.imshow(data, aspect="auto", cmap="RdYlGn", vmin=0, vmax=100, origin="upper")
            ax.set_xticks(range(len(contexts)), [_safe(c) for c in contexts], rotation=45, fontsize=6)
            ax.set_yticks(range(len(depths)), [_safe(d) for d in depths], fontsize=6)
            ax.set_xlabel("context length")
            ax.set_ylabel("needle depth (%)")
            ax.set_title(_safe(label), fontsize=8)
            ax.grid(False)
        axes[-1].figure.colorbar(image, ax=axes, shrink=0.8, label="retrieval accuracy (%)")

    return _draw("fig-niah", "Needle-in-a-haystack heatmaps", "fig-niah.png",
                 "No NIAH summary has a 'grid' ({context: {depth: score}}), so there is no heatmap.", len(grids),
                 draw)


def _num(value: object) -> float:
    v = num(value)
    return float("nan") if v is None else v
