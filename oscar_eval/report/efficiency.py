"""Speed and memory: the rows of speed/*.json and the table of every measurement.

Which implementation is a baseline: an ``impl`` whose name does not start with a quantization
method's name (``oscar``, ``kivi``, ``quarot``, ``rotatekv``, ``ott``, ``turboquant``) is a
full-precision baseline (``bf16-sdpa-cudnn``, ``bf16-static-graph``, ``flashinfer``, ...); one with
``dynamic`` in its name is the paper's style of baseline (a dynamic cache grown by ``torch.cat``,
eager). Rows are compared only at identical (speed run, level, arch, batch, context). The paper's
three claims against these rows: headline.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oscar_eval.report.model import TextTable
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
    created: str = ""  # of the speed run: newer runs win the headline
    complete: bool = True  # the speed run was not cut short

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        # Only rows of one speed run are compared: another run may have other layers or settings.
        return (self.ref, self.level, self.arch, self.batch, self.context)

    @property
    def is_baseline(self) -> bool:
        return not self.impl.lower().startswith(QUANT_PREFIXES)

    @property
    def is_paper_style(self) -> bool:
        return self.is_baseline and "dynamic" in self.impl.lower()

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
                                 positive("roofline_fraction"), positive("kv_bytes"), positive("peak_mem_bytes"),
                                 f.created, not f.partial))
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
    return TextTable("speed-rows", f"All speed and memory measurements ({len(out)} rows)", headers, out,
                     ref_column=len(headers) - 1, folded=True)
