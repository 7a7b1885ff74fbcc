"""Speed and memory: the rows of speed/*.json, speed-ups, and the paper's efficiency claims.

Which implementation is a baseline: an ``impl`` whose name does not start with a quantization
method's name (``oscar``, ``kivi``, ``quarot``, ``rotatekv``, ``ott``, ``turboquant``) is a
full-precision baseline (``bf16-cudnn``, ``sdpa-flash``, ``flashinfer``, ...). Rows are compared
only at identical (speed run, level, arch, batch, context). A speed-up is baseline time / our time; the paper's
speed-ups (3.0x decode at 128K, 4.1x throughput at batch 48, 4K; 5.3x KV memory) were measured on an
H20 against an eager dynamic-cache baseline, so ours are shown against *each* baseline we measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oscar_eval.report.model import Cell, Row, Table, TextTable
from oscar_eval.report.paper import load_paper
from oscar_eval.report.store import SpeedFile, num, text

QUANT_PREFIXES = ("oscar", "kivi", "quarot", "rotatekv", "ott", "turboquant")
UNITS = {"median_us": lambda v: f"{v:,.1f} µs", "tokens_per_s": lambda v: f"{v:,.0f} tokens/s",
         "kv_bytes": lambda v: f"{v / 2**20:,.1f} MiB"}


@dataclass(frozen=True)
class SpeedRow:
    ref: str  # provenance reference of the speed file ("S1")
    level: str
    arch: str
    impl: str
    batch: int
    context: int
    median_us: float
    gbps: float | None
    roofline: float | None
    kv_bytes: float | None
    peak_mem_bytes: float | None

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        # Only rows of one speed run are compared: another run may have other layers or settings.
        return (self.ref, self.level, self.arch, self.batch, self.context)

    @property
    def is_baseline(self) -> bool:
        return not self.impl.lower().startswith(QUANT_PREFIXES)

    @property
    def tokens_per_s(self) -> float:
        # One decode step produces one token per sequence in the batch.
        return self.batch * 1e6 / self.median_us


def speed_rows(files: list[SpeedFile], refs: dict[str, str], problems: list[str],
               skipped: list[list[str]] | None = None) -> list[SpeedRow]:
    """The measured rows; rows the profiler marked ``skip`` (out of memory, time limit, ...) go to
    ``skipped`` as (level, arch, impl, batch, context, reason, source)."""
    rows = []
    for f in files:
        for i, r in enumerate(f.rows):
            batch, context, median = num(r.get("batch")), num(r.get("context")), num(r.get("median_us"))
            if r.get("skip"):
                if skipped is not None:
                    skipped.append([text(r.get(k), "?") for k in ("level", "arch", "impl", "batch", "context", "skip")]
                                   + [refs[f.name]])
                continue
            if batch is None or context is None or median is None or median <= 0:
                problems.append(f"speed/{f.name}.json row {i}: no batch/context/median_us; skipped")
                continue

            def positive(key: str, r: dict[str, Any] = r) -> float | None:
                value = num(r.get(key))
                return value if value and value > 0 else None  # 0 means "not measured"

            rows.append(SpeedRow(refs[f.name], text(r.get("level"), "?"), text(r.get("arch"), "?"),
                                 text(r.get("impl"), "?"), int(batch), int(context), median, positive("gbps"),
                                 positive("roofline_fraction"), positive("kv_bytes"), positive("peak_mem_bytes")))
    return rows


def fastest_baselines(rows: list[SpeedRow]) -> dict[tuple, SpeedRow]:
    best: dict[tuple, SpeedRow] = {}
    for r in rows:
        if r.is_baseline and (r.key not in best or r.median_us < best[r.key].median_us):
            best[r.key] = r
    return best


def rows_table(rows: list[SpeedRow]) -> TextTable:
    best = fastest_baselines(rows)
    out = []
    for r in sorted(rows, key=lambda r: (r.level, r.arch, r.batch, r.context, r.impl)):
        base = best.get(r.key)
        speedup = f"{base.median_us / r.median_us:.2f}x" if base and not r.is_baseline else ""
        out.append([r.level, r.arch, r.impl, str(r.batch), str(r.context), f"{r.median_us:.1f}",
                    f"{r.gbps:.0f}" if r.gbps else "—", f"{100 * r.roofline:.0f}%" if r.roofline else "—",
                    f"{r.kv_bytes / 2**20:.1f}" if r.kv_bytes else "—",
                    f"{r.peak_mem_bytes / 2**20:.0f}" if r.peak_mem_bytes else "—", speedup, r.ref])
    headers = ["level", "arch", "impl", "batch", "context", "median µs", "GB/s", "of peak", "KV MiB",
               "peak MiB", "vs fastest baseline", "source"]
    return TextTable("speed-rows", "All speed and memory measurements", headers, out)


def _pairs(rows: list[SpeedRow], batch: int, context: int | None) -> list[tuple[SpeedRow, SpeedRow]]:
    """(baseline, oscar) pairs at one setting; context None = the largest with both arms."""
    chosen = [r for r in rows if r.batch == batch]
    if context is None:
        both = {r.context for r in chosen if r.impl.lower().startswith("oscar")} & {
            r.context for r in chosen if r.is_baseline}
        if not both:
            return []
        context = max(both)
    at = [r for r in chosen if r.context == context]
    ours = [r for r in at if r.impl.lower().startswith("oscar")]
    return [(b, o) for o in ours for b in at if b.is_baseline and b.key == o.key]


def paper_comparison(rows: list[SpeedRow]) -> tuple[Table, TextTable]:
    """Our speed-ups next to the paper's headline ones, one row per (baseline, level, arch)."""
    eff = load_paper()["efficiency"]["headline"]
    claims = [
        ("Decode speed-up, batch 1, 128K", eff["decode_speedup"], _pairs(rows, 1, 131072),
         lambda b, o: b.median_us / o.median_us, "median_us"),
        ("Throughput gain, batch 48, 4K", eff["throughput_gain"], _pairs(rows, 48, 4096),
         lambda b, o: o.tokens_per_s / b.tokens_per_s, "tokens_per_s"),
        ("KV memory reduction, batch 1, longest context", eff["kv_memory_reduction"],
         [(b, o) for b, o in _pairs(rows, 1, None) if b.kv_bytes and o.kv_bytes],
         lambda b, o: b.kv_bytes / o.kv_bytes, "kv_bytes"),
    ]
    table_rows, detail = [], []
    for label, paper, pairs, ratio, field in claims:
        if not pairs:
            table_rows.append(Row(label, label, [Cell(paper=paper)]))
            continue
        for b, o in pairs:
            name = f"{label} ({o.level}, {o.arch}, {o.impl} vs {b.impl})"
            table_rows.append(Row(name, name, [Cell(ours=ratio(b, o), paper=paper, ref=o.ref)]))
            show = UNITS[field]
            detail.append([label, f"{o.level}, {o.arch}, batch {o.batch}, context {o.context}", b.impl,
                           show(getattr(b, field)), o.impl, show(getattr(o, field)),
                           o.ref if o.ref == b.ref else f"{o.ref}, {b.ref}"])
    table = Table("eff-paper", "Efficiency against the paper's headline ratios (x)", ["ratio (x)"], table_rows,
                  decimals=2, show_bits=False, row_header="Measure")
    gpu = load_paper()["efficiency"]["gpu"]
    table.notes.append(f"The paper's ratios were measured on an {gpu} against an eager dynamic-cache BF16 "
                       "baseline; ours are shown against each baseline measured, on the GPU in the provenance.")
    headers = ["measure", "setting", "baseline", "baseline value", "ours", "our value", "source"]
    return table, TextTable("eff-abs", "The measurements behind those ratios", headers, detail)
