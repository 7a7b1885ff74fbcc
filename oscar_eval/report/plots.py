"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot: no global state, no display).

Each function returns a ``Figure`` model holding a PNG and the same figure as SVG; with no data it
returns one with ``png=None`` and a note, and the report shows the note instead of an empty plot.
Readability rules (issue 17): at most five series per axes, each with its own colour *and* marker,
legends outside the data, units on the axes; speed lines never join points of different runs
(speed_plots.py).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator
from matplotlib.transforms import Bbox
from PIL import Image

from oscar_eval.report.model import Figure
from oscar_eval.report.paper import method_label
from oscar_eval.report.store import num

RC = {"text.usetex": False, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100,
      "svg.fonttype": "none", "svg.hashsalt": "oscar-eval"}  # SVG text stays text; stable ids
MAX_PANELS = 4


def safe(label: object) -> str:
    """Labels come from result files: a "$" must not start mathtext (a parse error would crash)."""
    return str(label).replace("$", r"\$")


def tokens(x: float, _pos: object = None) -> str:
    """4096 -> "4K", 131072 -> "128K", 48 -> "48"."""
    return f"{x / 1024:g}K" if x >= 1024 and x % 1024 == 0 else f"{x:g}"


def log2_ticks(ax, values: set[float]) -> None:
    """Ticks at the data's own x values, thinned so that labels never overlap."""
    kept: list[float] = []
    for v in sorted(v for v in values if v > 0):
        if not kept or math.log2(v / kept[-1]) >= 0.9:
            kept.append(v)
    ax.set_xscale("log", base=2)
    ax.set_xticks(kept)
    ax.xaxis.set_major_formatter(FuncFormatter(tokens))
    ax.xaxis.set_minor_locator(NullLocator())


def plain_log_y(ax) -> None:
    """A log y axis labelled 10, 20, 50 (not 2x10^1)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.10g}" if v >= 1 else f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def legend_below(ax, ncols: int = 2) -> None:
    """The legend under the axes: never over the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=ncols, fontsize=7, frameon=False)


def _png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    # A 256-colour palette keeps line plots sharp at about a third of the bytes (reports get committed).
    image = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _svg(fig: MplFigure) -> bytes:
    FigureCanvasSVG(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def draw_figure(fig_id: str, title: str, empty_note: str, ncols: int, draw: Callable[[list], None],
                height: float = 4.2) -> Figure:
    filename = f"{fig_id}.png"
    if ncols == 0:
        return Figure(fig_id, title, filename, None, empty_note)
    with matplotlib.rc_context(RC):
        fig = MplFigure(figsize=(6.4, height) if ncols == 1 else (min(5.0 * ncols, 11), height),
                        layout="constrained")
        FigureCanvasAgg(fig)  # a canvas from the start: label placement measures text in pixels
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        draw(list(axes))
        return Figure(fig_id, title, filename, _png(fig), svg=_svg(fig))


def _place_labels(ax, pts: list[tuple[float, float, str]]) -> None:
    """Point labels at the first nearby spot whose text box clears every marker and every label already
    placed (measured in pixels); a thin leader line joins a label pushed away from its point."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the limits, so display coordinates are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y, _ in pts]
    taken = [Bbox.from_extents(px - 5, py - 5, px + 5, py + 5) for px, py in markers]
    offsets = [(dx * r, dy * r) for r in (1, 2, 3, 4, 6) for dx, dy in
               ((1, 0.6), (1, -1), (-1, 0.6), (-1, -1), (0, 1.6), (0, -2))]
    for (x, y, label), _ in sorted(zip(pts, markers, strict=True), key=lambda p: -p[1][1]):
        ox, oy = offsets[0]
        for ox, oy in offsets:  # noqa: B007 (the spot found is used after the loop)
            box = _label(ax, x, y, label, ox, oy).get_window_extent(renderer).expanded(1.05, 1.15)
            ax.texts[-1].remove()
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(t) for t in taken):
                break
        else:
            ox, oy = offsets[0]  # nowhere free: the default spot
        _label(ax, x, y, label, ox, oy, leader=abs(ox) + abs(oy) > 3)
        taken.append(box)


def _label(ax, x: float, y: float, label: str, ox: float, oy: float, leader: bool = False):
    arrow = {"arrowstyle": "-", "lw": 0.5, "color": "#777777", "shrinkB": 3} if leader else None
    return ax.annotate(safe(label), (x, y), textcoords="offset pixels", xytext=(ox * 6, oy * 6), fontsize=7,
                       ha="left" if ox >= 0 else "right", va="center", arrowprops=arrow)


def accuracy_vs_bits(fig_id: str, title: str, panels: list[tuple[str, list[tuple[float, float, float | None, str]]]],
                     ylabel: str, empty_note: str) -> Figure:
    """One panel per model: ours (filled) and the paper's value (hollow, at our bits) per method."""
    panels = [(name, pts) for name, pts in panels if pts][:MAX_PANELS]

    def draw(axes: list) -> None:
        for ax, (name, pts) in zip(axes, panels, strict=True):
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="#0072B2", label="ours", zorder=3)
            paper = [(p[0], p[2]) for p in pts if p[2] is not None]
            if paper:
                ax.plot(*zip(*paper, strict=True), "s", mfc="none", mec="#D55E00", label="paper", zorder=2)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ys = [p[1] for p in pts if p[1] > 0]
            if ys and len(ys) == len(pts) and max(ys) / min(ys) > 4:  # one outlier must not squash the rest
                plain_log_y(ax)
            ax.set_xlabel("bits per element (log scale)")
            ax.set_ylabel(safe(ylabel))
            ax.set_title(safe(name), fontsize=9)
            ax.margins(x=0.15, y=0.12)
            _place_labels(ax, [(p[0], p[1], method_label(p[3])) for p in pts])
            legend_below(ax)

    return draw_figure(fig_id, title, empty_note, len(panels), draw)


def heatmaps(fig_id: str, title: str, grids: list[tuple[str, dict]], empty_note: str, xlabel: str, ylabel: str,
             colorbar: str, vmax: float = 100, cmap: str = "RdYlGn") -> Figure:
    """One heatmap per (label, {column: {row: value}}); at most MAX_PANELS, every number is in a table."""
    grids = grids[:MAX_PANELS]

    def order(keys) -> list:
        return sorted(keys, key=lambda k: (0, float(k)) if str(k).replace(".", "", 1).isdigit() else (1, str(k)))

    def draw(axes: list) -> None:
        image = None
        for ax, (label, grid) in zip(axes, grids, strict=True):
            cols = order(grid)
            rows = order({r for v in grid.values() for r in v})
            data = [[_num(grid[c].get(r)) for c in cols] for r in rows]
            image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0, vmax=vmax, origin="upper")
            ax.set_xticks(range(len(cols)), [safe(tokens(float(c)) if str(c).isdigit() else c) for c in cols],
                          rotation=45, fontsize=6)
            ax.set_yticks(range(len(rows)), [safe(r) for r in rows], fontsize=6)
            ax.set_xlabel(safe(xlabel))
            ax.set_ylabel(safe(ylabel))
            ax.set_title(safe(label), fontsize=8)
            ax.grid(False)
        axes[-1].figure.colorbar(image, ax=axes, shrink=0.8, label=colorbar)

    return draw_figure(fig_id, title, empty_note, len(grids), draw)


def _num(value: object) -> float:
    v = num(value)
    return float("nan") if v is None else v
