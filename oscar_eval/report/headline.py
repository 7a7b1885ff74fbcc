"""The paper's three efficiency claims, and ours beside them: one row per claim and baseline style.

The paper (Qwen3-8B on an H20) claims a 3.0x decode speed-up at 128K tokens, batch 1 (92.9 -> 30.9
ms per token), 5.3x less KV memory and 4.1x the throughput at 4K, batch 48 (331 -> 1354 tokens/s),
against BF16 FlashDecoding on a dynamic cache grown in eager PyTorch. Ours, for each claim, against
(a) the paper's style of baseline (an impl with ``dynamic`` in its name) and (b) the strongest BF16
baseline (the fastest other baseline at that point), always within one speed run: the newest
complete run that has the point for the paper's model, end to end when measured (the paper's claims
are per generated token of the whole model), else at the kernel level. Our arm is the fastest OScaR
impl of that run at that point, named in the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from oscar_eval.report.efficiency import SpeedRow
from oscar_eval.report.model import TextTable
from oscar_eval.report.paper import load_paper, normalise_model

LEVEL_NAMES = {"e2e": "end to end", "kernel": "decode-attention kernel (one layer)"}
STYLES = {"paper": "the paper's style (dynamic cache, eager)", "strong": "strongest BF16 baseline"}


@dataclass(frozen=True)
class Claim:
    label: str
    batch: int
    context: int
    paper: float
    paper_detail: str
    ratio: Callable[[SpeedRow, SpeedRow], float | None]  # (baseline, ours) -> x
    show: Callable[[SpeedRow], str]  # the measured value behind the ratio


def _ms(r: SpeedRow) -> str:
    return f"{r.median_us / 1000:,.2f} ms" if r.median_us >= 1000 else f"{r.median_us:,.1f} µs"


def _kv(r: SpeedRow) -> str:
    return "—" if not r.kv_bytes else f"{r.kv_bytes / 2**30:,.2f} GiB"


def claims() -> list[Claim]:
    eff = load_paper()["efficiency"]
    head, lat, tput = eff["headline"], eff["decode_latency_ms_per_token_batch1"], eff[
        "throughput_tokens_per_s_batch48_ctx4096"]
    return [
        Claim("Decode speed-up, batch 1, 128K", 1, 131072, head["decode_speedup"],
              f"{lat['bf16'][0]} → {lat['oscar'][0]} ms per token", lambda b, o: b.median_us / o.median_us, _ms),
        Claim("KV memory reduction, batch 1, 128K", 1, 131072, head["kv_memory_reduction"], "KV cache bytes",
              lambda b, o: b.kv_bytes / o.kv_bytes if b.kv_bytes and o.kv_bytes else None, _kv),
        Claim("Throughput gain, batch 48, 4K", 48, 4096, head["throughput_gain"],
              f"{tput['bf16']} → {tput['oscar']} tokens/s", lambda b, o: b.median_us / o.median_us,
              lambda r: f"{r.tokens_per_s:,.0f} tokens/s"),
    ]


def paper_arch(rows: list[SpeedRow]) -> str | None:
    """The arch of our rows that is the paper's model (Qwen3-8B), else None."""
    want = normalise_model(load_paper()["efficiency"]["model"])
    return next((r.arch for r in rows if normalise_model(r.arch) == want), None)


def _baseline(at: list[SpeedRow], style: str) -> SpeedRow | None:
    pool = [r for r in at if r.is_baseline and r.is_paper_style == (style == "paper")]
    return min(pool, key=lambda r: r.median_us, default=None)


def find(rows: list[SpeedRow], claim: Claim, style: str) -> tuple[SpeedRow, SpeedRow, float] | None:
    """(baseline, ours, ratio) from the newest complete run that has the point, end to end first."""
    arch = paper_arch(rows)
    runs = sorted({(r.created, r.ref) for r in rows if r.complete}, reverse=True)
    for level in ("e2e", "kernel"):
        for _, ref in runs:
            at = [r for r in rows if (r.ref, r.level, r.arch, r.batch, r.context) ==
                  (ref, level, arch, claim.batch, claim.context)]
            ours = [r for r in at if r.impl.lower().startswith("oscar")]
            base = _baseline(at, style)
            if not ours or base is None:
                continue
            best = min(ours, key=lambda r: r.median_us)
            ratio = claim.ratio(base, best)
            if ratio is not None:
                return base, best, ratio
    return None


def headline_table(rows: list[SpeedRow]) -> TextTable:
    eff = load_paper()["efficiency"]
    out = []
    for claim in claims():
        for style, style_name in STYLES.items():
            found = find(rows, claim, style)
            paper = f"{claim.paper:.1f}x ({claim.paper_detail})"
            if found is None:
                out.append([claim.label, style_name, paper, "not measured", "—", "—", "—"])
                continue
            base, ours, ratio = found
            measured = f"{base.impl} {claim.show(base)} → {ours.impl} {claim.show(ours)}"
            out.append([claim.label, style_name, paper, f"{ratio:.2f}x", measured,
                        f"{LEVEL_NAMES.get(ours.level, ours.level)}, {ours.arch}", ours.ref])
    headers = ["paper's claim", "against", "paper", "ours", "measured (baseline → ours)", "level, model", "run"]
    table = TextTable("eff-headline", "The paper's efficiency claims, and ours", headers, out,
                      ref_column=len(headers) - 1, wrap=True)
    table.notes.append(f"The paper: {eff['model']} on an {eff['gpu']}, baseline {eff['baseline']}. Ours: on the "
                       "GPU of the run's provenance; each ratio compares two arms of one speed run, the newest "
                       "complete run that has the point.")
    return table
