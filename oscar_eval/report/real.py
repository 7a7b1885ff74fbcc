"""Real checkpoints: per model whose manifest records ``model.source`` (and is not the smoke model), a
table of methods x benchmarks (RULER per context, NIAH, perplexity/KL/top-1) with each method's bits
per element. Complete runs only (partial ones are listed apart); the newest run fills a cell."""

from __future__ import annotations

from collections.abc import Callable

from oscar_eval.report import plots
from oscar_eval.report.labels import gguf_label, is_real, shown_as_sample
from oscar_eval.report.model import Cell, Figure, Row, Section, Table, slug
from oscar_eval.report.paper import method_label, method_sort_key
from oscar_eval.report.plots import tokens
from oscar_eval.report.store import Run, num
from oscar_eval.report.tables import caveats, decode_path_note, summary_value


def _columns(runs: list[Run]) -> list[tuple[str, int, Callable[[Run], float | None]]]:
    """(header, decimals, value of a run) for every benchmark some method of the model has."""
    cols = []
    ruler = [r for r in runs if r.benchmark == "ruler"]
    contexts = sorted({c for r in ruler for c in ((r.summary or {}).get("contexts") or {})}, key=lambda c: int(c))
    for c in contexts:
        cols.append((f"RULER {tokens(float(c))}", 1, lambda r, c=c: summary_value(r, "contexts", c)))
    if ruler:
        cols.append(("RULER avg", 1, lambda r: summary_value(r, "average")))
    if any(r.benchmark == "niah" for r in runs):
        cols.append(("NIAH", 1, lambda r: summary_value(r, "average")))
    if any(r.benchmark == "ppl" for r in runs):
        cols += [("PPL", 2, lambda r: summary_value(r, "ppl")), ("KL to fp16", 3, lambda r: summary_value(r, "kl")),
                 ("top-1 %", 1, lambda r: None if (v := summary_value(r, "top1")) is None else 100 * v)]
    return cols


def _benchmark_of(header: str) -> str:
    return "ruler" if header.startswith("RULER") else "niah" if header == "NIAH" else "ppl"


def model_table(model: str, runs: list[Run], refs: dict[str, str]) -> Table:
    newest: dict[tuple[str, str], Run] = {}
    for r in sorted(runs, key=lambda r: (r.created, r.run_id)):
        newest[(r.method, r.benchmark)] = r
    cols = _columns(list(newest.values()))
    rows = []
    for method in sorted({m for m, _ in newest}, key=method_sort_key):
        cells, bits = [], set()
        for header, _, value in cols:
            run = newest.get((method, _benchmark_of(header)))
            sample = [f"{n} samples/task"] if run is not None and (n := run.samples_per_task) else []
            cells.append(Cell() if run is None else Cell(value(run), ref=refs.get(run.run_id), flag=caveats(run),
                                                         labels=sample))
            if run is not None and run.bits is not None:
                bits.add(round(run.bits, 2))
        rows.append(Row(method, method_label(method), cells, bits_ours=" / ".join(f"{b:.2f}" for b in sorted(bits))
                        or None))
    table = Table(slug("real", model), f"{model}: methods x benchmarks", [c[0] for c in cols], rows, compare=False,
                  col_decimals=[c[1] for c in cols])
    ordered = sorted(newest.values(), key=lambda r: int(refs.get(r.run_id, "R0")[1:]))
    table.notes.append(decode_path_note(ordered, refs) or "Decode path: not recorded by these runs.")
    if any(r.samples_per_task for r in newest.values()):
        table.notes.append("RULER: the first N of each task's seeded samples at each context (N samples/task; "
                           "RULER's own default is 500), every one scored.")
    table.notes.append("PPL and KL: lower is better; KL is to the same model's full-precision forward. Bits per "
                       "element include the full-precision window at these lengths.")
    return table


def _ppl_figure(models: dict[str, list[Run]]) -> Figure:
    panels = []
    for model, runs in models.items():
        pts = {r.method: (r.bits, v, None, r.method) for r in sorted(runs, key=lambda r: r.created)
               if r.benchmark == "ppl" and r.bits is not None and (v := num((r.summary or {}).get("ppl")))}
        panels.append((model, list(pts.values())))
    return plots.accuracy_vs_bits("fig-real-ppl", "Perplexity vs bits (real checkpoints)", panels,
                                  "perplexity (lower is better)", "No real-checkpoint perplexity run has bits per "
                                  "element, so there is no perplexity-vs-bits plot.")


def real_section(runs: list[Run], refs: dict[str, str]) -> Section | None:
    models: dict[str, list[Run]] = {}
    for r in runs:
        if is_real(r) and r.summary is not None and (not r.partial or shown_as_sample(r)):
            models.setdefault(r.model_label, []).append(r)
    if not models:
        return None
    section = Section("real", "Real checkpoints")
    section.intro.append("Models loaded from real weights (the manifest records where they came from). Not the "
                         "paper's models: small checkpoints that fit this project's machines, run through every "
                         "method's cache.")
    for model in sorted(models):
        labels = sorted({g for r in models[model] if (g := gguf_label(r))})
        sub = Section(slug("real", model, "s"), f"{model}" + (f" — {', '.join(labels)}" if labels else ""))
        if labels:
            sub.intro.append(f"{', '.join(labels)}: the weights were dequantized from a GGUF file, so this is a "
                             "derivative of the original checkpoint, not the checkpoint itself.")
        sub.blocks.append(model_table(model, models[model], refs))
        section.subsections.append(sub)
    section.subsections.append(Section("real-figures", "Real checkpoints: accuracy vs bits",
                                       blocks=[_ppl_figure(models)]))
    return section
