"""Latency vs context, throughput vs batch, memory vs context: one panel per level (end to end from
speed/*.json; the decode-attention kernel from kernels/*.json when there are any), four roles per
panel (strongest BF16, the paper's style of BF16, OScaR, KIVI), each role one line from ONE run: the
newest complete run that has at least two points of it, its impl fastest at the largest x."""

from __future__ import annotations

from collections.abc import Callable

from oscar_eval.report.efficiency import SpeedRow
from oscar_eval.report.headline import paper_arch
from oscar_eval.report.model import Figure
from oscar_eval.report.plots import MAX_PANELS, draw_figure, legend_below, log2_ticks, plain_log_y, safe
from oscar_eval.report.store import KernelFile, num, text

# role: (legend name, colour, marker, line style); Okabe-Ito colours, each role its own marker too.
ROLES = {
    "strong": ("BF16, strongest", "#000000", "s", "-"),
    "paper": ("BF16, paper's style", "#999999", "^", ":"),
    "oscar": ("OScaR", "#0072B2", "o", "-"),
    "kivi": ("KIVI", "#E69F00", "D", "--"),
}
LEVEL_TITLES = {"e2e": "end to end (whole model, per decode step)", "kernel": "decode-attention kernel (one layer)"}


def role(r: SpeedRow) -> str | None:
    if r.is_baseline:
        return "paper" if r.is_paper_style else "strong"
    impl = r.impl.lower()
    return "oscar" if impl.startswith("oscar") else "kivi" if impl.startswith("kivi") else None


def kernel_rows(files: list[KernelFile], refs: dict[str, str]) -> list[SpeedRow]:
    """kernels/*.json rows as speed rows (level "kernel"), so one set of plot code draws both."""
    out = []
    for f in files:
        for r in f.rows:
            batch, context, median = num(r.get("batch")), num(r.get("context")), num(r.get("median_us"))
            if batch and context and median:
                out.append(SpeedRow(refs[f"kernels/{f.name}"], "kernel", text(r.get("arch"), "?"),
                                    text(r.get("impl"), "?"), int(batch), int(context), median, num(r.get("gbps")),
                                    num(r.get("roofline_fraction")), None, None, f.date, True))
    return out


def lines(rows: list[SpeedRow], x: Callable[[SpeedRow], float], y: Callable[[SpeedRow], float | None]
          ) -> list[tuple[str, str, list[tuple[float, float]]]]:
    """[(role, legend label, points)]: per role, one (run, impl) line."""
    out = []
    for name in ROLES:
        groups: dict[tuple[str, str, str], list[SpeedRow]] = {}
        for r in rows:
            if role(r) == name and r.complete and y(r) is not None:
                groups.setdefault((r.created, r.ref, r.impl), []).append(r)
        groups = {k: g for k, g in groups.items() if len({x(r) for r in g}) >= 2}
        if not groups:
            continue
        newest = max(k[:2] for k in groups)
        mine = {k: g for k, g in groups.items() if k[:2] == newest}
        top = max(x(r) for g in mine.values() for r in g)

        def at_top(g: list[SpeedRow], top: float = top) -> float:
            return min((r.median_us for r in g if x(r) == top), default=float("inf"))

        key = min(mine, key=lambda k: (at_top(mine[k]), k[2]))
        pts = sorted({x(r): y(r) for r in mine[key]}.items())
        out.append((name, f"{ROLES[name][0]}: {key[2]} ({key[1]})", pts))
    return out


def _panels(rows: list[SpeedRow], kernels: list[SpeedRow], pick: Callable[[SpeedRow], bool]) -> list[tuple[str, list]]:
    """[(level, rows)]: end to end from speed runs, the kernel from kernels/ (else the speed runs' kernel rows)."""
    arch = paper_arch(rows + kernels) or next((r.arch for r in rows + kernels), None)
    out = []
    for level in ("e2e", "kernel"):
        pool = kernels if level == "kernel" and kernels else [r for r in rows if r.level == level]
        pool = [r for r in pool if r.arch == arch and pick(r)]
        if pool:
            out.append((level, pool))
    return out[:MAX_PANELS]


def _axes(ax, found: list, title: str, xlabel: str, ylabel: str, logy: bool = True) -> None:
    for name, label, pts in found:
        _, colour, marker, style = ROLES[name]
        ax.plot(*zip(*pts, strict=True), linestyle=style, marker=marker, ms=5, color=colour, label=safe(label),
                mfc="white" if name == "paper" else colour)
    log2_ticks(ax, {p for _, _, pts in found for p, _ in pts})
    if logy:
        plain_log_y(ax)
    ax.set_title(safe(title), fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    legend_below(ax, ncols=1)


def _figure(fig_id: str, title: str, empty: str, panels: list[tuple[str, list]], x, y, xlabel: str,
            ylabel: Callable[[str], str], logy: bool = True) -> Figure:
    drawn = [(level, found) for level, pool in panels if (found := lines(pool, x, y(level)))]

    def draw(axes: list) -> None:
        for ax, (level, found) in zip(axes, drawn, strict=True):
            _axes(ax, found, LEVEL_TITLES.get(level, level), xlabel, ylabel(level), logy)

    return draw_figure(fig_id, title, empty, len(drawn), draw, height=4.6)


def _time_unit(level: str) -> tuple[float, str]:
    return (1000.0, "ms") if level == "e2e" else (1.0, "µs")


def latency_vs_context(rows: list[SpeedRow], kernels: list[SpeedRow]) -> Figure:
    def y(level: str):
        scale, _ = _time_unit(level)
        return lambda r: r.median_us / scale
    return _figure("fig-latency", "Decode latency vs context (batch 1)",
                   "No batch-1 context sweep (two contexts or more), so there is no latency-vs-context plot.",
                   _panels(rows, kernels, lambda r: r.batch == 1), lambda r: r.context, y, "context (tokens)",
                   lambda level: f"{_time_unit(level)[1]} per decode step" if level == "e2e" else "µs per call")


def throughput_vs_batch(rows: list[SpeedRow], kernels: list[SpeedRow]) -> Figure:
    return _figure("fig-throughput", "Throughput vs batch (context 4K)",
                   "No batch sweep at 4K context (two batch sizes or more), so there is no throughput-vs-batch plot.",
                   _panels(rows, kernels, lambda r: r.context == 4096), lambda r: r.batch,
                   lambda level: lambda r: r.tokens_per_s, "batch (sequences)",
                   lambda level: "tokens/s (whole model)" if level == "e2e" else "tokens/s (one layer)")


def memory_vs_context(rows: list[SpeedRow]) -> Figure:
    """KV cache bytes and peak memory (GiB) at batch 1: end to end, else the kernel level's own buffers."""
    arch = paper_arch(rows) or next((r.arch for r in rows), None)
    ones = [r for r in rows if r.batch == 1 and r.arch == arch and (r.kv_bytes or r.peak_mem_bytes)]
    level = "e2e" if any(r.level == "e2e" for r in ones) else "kernel"
    pool = [r for r in ones if r.level == level]
    panels = [("KV cache", lambda r: r.kv_bytes and r.kv_bytes / 2**30),
              ("peak GPU memory", lambda r: r.peak_mem_bytes and r.peak_mem_bytes / 2**30)]
    drawn = [(name, found) for name, y in panels if (found := lines(pool, lambda r: r.context, y))]
    where = "end to end" if level == "e2e" else "one layer"

    def draw(axes: list) -> None:
        for ax, (name, found) in zip(axes, drawn, strict=True):
            _axes(ax, found, f"{name}, {where}, {arch}", "context (tokens)", "GiB")

    return draw_figure("fig-memory", "Memory vs context (batch 1)",
                       "No batch-1 rows record kv_bytes or peak_mem_bytes, so there is no memory plot.",
                       len(drawn), draw, height=4.6)
