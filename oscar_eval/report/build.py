"""Assemble the report model from a loaded store: sections in the paper's order, real checkpoints,
efficiency, smoke / partial runs, failed items, provenance and problems."""

from __future__ import annotations

import json
from typing import Any

from oscar_eval.report import figures, kernels, speed_plots
from oscar_eval.report.efficiency import rows_table, speed_rows
from oscar_eval.report.headline import headline_table
from oscar_eval.report.labels import RANDOM_WEIGHTS, all_labels, is_real, is_smoke, shown_as_sample
from oscar_eval.report.layer_errors import layer_error_section
from oscar_eval.report.model import Report, Section, TextTable, slug
from oscar_eval.report.paper import load_paper, method_sort_key
from oscar_eval.report.real import real_section
from oscar_eval.report.store import Run, Store, text
from oscar_eval.report.tables import (
    OCR_GROUPS,
    benchmark_key,
    columns_details,
    longbench_details,
    main_table,
    mmau_tables,
    select,
)

PAPER_SECTIONS = {  # benchmark: (section id, title)
    "longbench_e": ("table1", "Table 1: LongBench-E average (text)"),
    "ocrbench": ("table6", "Table 6: OCRBench (vision)"),
    "mmau_pro": ("table8", "Table 8: MMAU-Pro (omni-modal)"),
    "niah": ("niah", "Needle-in-a-haystack"),
}


def assign_refs(store: Store) -> dict[str, str]:
    """Short, stable provenance references: R1.. for runs, S1.. for speed files."""
    runs = sorted(store.runs, key=lambda r: (benchmark_key(r.benchmark), r.protocol != "paper", r.protocol,
                                             r.model_label.lower(), method_sort_key(r.method), r.created, r.run_id))
    refs = {r.run_id: f"R{i}" for i, r in enumerate(runs, 1)}
    refs |= {f.name: f"S{i}" for i, f in enumerate(store.speed, 1)}
    kernel_files = sorted(store.kernels, key=lambda f: (f.date, f.name))
    refs |= {f"kernels/{f.name}": f"K{i}" for i, f in enumerate(kernel_files, 1)}
    return refs


def _compact(value: Any) -> str:
    """``{"bits": 2, "group_size": 32}`` -> ``bits=2, group_size=32`` (nested values as JSON)."""
    if not isinstance(value, dict):
        return "—" if value in (None, [], "") else json.dumps(value)
    parts = [f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}" for k, v in sorted(value.items())]
    return ", ".join(parts) or "—"


def _get(d: Any, *path: str) -> str:
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return "—" if d in (None, "") else text(d)


def benchmark_section(runs: list[Run], refs: dict[str, str], benchmark: str, protocol: str,
                      aliases: dict[str, str] | None, section_id: str, title: str) -> Section:
    sel = select(runs, benchmark, protocol, aliases)
    spec = load_paper()["tables"].get(benchmark)
    section = Section(section_id, title)
    if protocol == "paper" and spec:
        section.intro.append(f"Metric: {spec['metric']}. Each model column shows ours, the paper's value and "
                             "ours minus the paper's; \"—\" means no result (never estimated).")
        if spec.get("note"):
            section.intro.append(f"Paper values: {spec['note']}.")
    if not sel.cells:
        section.intro.append("No completed run in the results store yet.")
    if benchmark == "mmau_pro":
        section.blocks += mmau_tables(sel, refs)
    else:
        caption = spec["metric"][:1].upper() + spec["metric"][1:] if spec and protocol == "paper" else (
            f"Headline score per model ({protocol} protocol)")
        section.blocks.append(main_table(sel, refs, slug(section_id, "main"), caption))
    if benchmark in ("longbench_e", "ocrbench") and protocol == "paper":
        section.blocks.append(figures.pareto(sel if sel.cells else None, benchmark))
    if benchmark == "niah":
        section.blocks.append(figures.niah_heatmaps(sel))
    details = (longbench_details(sel, refs) if benchmark == "longbench_e"
               else columns_details(sel, refs, OCR_GROUPS, 0, slug(section_id, "cols")) if benchmark == "ocrbench"
               else columns_details(sel, refs, [], 1, slug(section_id, "cols")) if benchmark != "mmau_pro" else [])
    if details:
        what = "dataset and length bucket" if benchmark == "longbench_e" else "column"
        section.subsections.append(Section(slug(section_id, "details"), f"{title}: per {what}", blocks=details))
    return section


def efficiency_section(store: Store, refs: dict[str, str], problems: list[str]) -> Section:
    skipped: list[list[str]] = []
    rows = speed_rows(store.speed, refs, problems, skipped)
    kernel_rows = speed_plots.kernel_rows(store.kernels, refs)
    section = Section("efficiency", "Efficiency: latency, throughput, memory")
    section.intro.append("The paper makes three efficiency claims; the first table sets ours beside each, against "
                         "the paper's style of baseline and against the strongest BF16 baseline we measured.")
    section.blocks.append(headline_table(rows))
    if not rows:
        section.intro.append("No speed results (results/speed/*.json) yet.")
    section.blocks += [speed_plots.latency_vs_context(rows, kernel_rows),
                       speed_plots.throughput_vs_batch(rows, kernel_rows), speed_plots.memory_vs_context(rows)]
    # Pack timings are not shown: the JSON files hold superseded pack kernels (their notes say so).
    if decode := kernels.decode_table(store.kernels, refs):
        section.subsections.append(Section("eff-kernels", "Kernel-level figures (results/kernels/)", blocks=[decode]))
    details = []
    if rows:
        details.append(rows_table(rows))
    if skipped:
        details.append(TextTable("speed-skipped", f"Points not measured, as recorded by the profiler ({len(skipped)})",
                                 ["level", "arch", "impl", "batch", "context", "reason", "source"], skipped,
                                 ref_column=6, folded=True))
    if details:
        section.subsections.append(Section("eff-all", "Every speed measurement (speed/*.json)", blocks=details))
    return section


def smoke_section(store: Store, refs: dict[str, str]) -> Section | None:
    """Runs of the built-in smoke configuration: they check the pipeline, they measure nothing."""
    runs = sorted((r for r in store.runs if is_smoke(r)), key=lambda r: int(refs[r.run_id][1:]))
    if not runs:
        return None
    rows = [[refs[r.run_id], RANDOM_WEIGHTS, r.benchmark, r.model_label, r.method, all_labels(r)] for r in runs]
    table = TextTable("smoke-runs", "Smoke runs (random weights: not results)",
                      ["run", "weights", "benchmark", "model", "method", "labels"], rows, ref_column=0)
    shown = "also fill the tables above, labelled" if store.include_smoke else "are in no table (--include-smoke shows them)"
    return Section("smoke", "Smoke runs", intro=[f"The smoke configuration (tiny random model) runs a benchmark "
                                                 f"end to end on fixture data; its numbers {shown}."],
                   blocks=[table])


def failures_section(store: Store, refs: dict[str, str]) -> Section | None:
    rows = [[refs[r.run_id], r.model_label, r.method, f.subset, f.item_id, f.error]
            for r in store.runs for f in r.failed]
    if not rows:
        return None
    rows.sort(key=lambda row: int(row[0][1:]))
    table = TextTable("failed-items", "Failed items (a sample: at most 3 per run and subset)",
                      ["run", "model", "method", "subset", "item", "error"], rows)
    return Section("failed", "Failed items", blocks=[table])


def partial_section(store: Store, refs: dict[str, str]) -> Section | None:
    """Runs that did not cover their whole data set: kept out of every table, listed here."""
    runs = sorted((r for r in store.runs if r.partial and not shown_as_sample(r)), key=lambda r: int(refs[r.run_id][1:]))
    if not runs:
        return None
    rows = [[refs[r.run_id], r.benchmark, r.model_label, r.method, r.coverage_text, all_labels(r)] for r in runs]
    table = TextTable("partial-runs", "Partial runs (not in any table)",
                      ["run", "benchmark", "model", "method", "coverage", "labels"], rows, ref_column=0)
    return Section("partial", "Partial runs", intro=["These runs did not cover their whole data set (a --limit, "
                                                     "or subsets left out); their numbers are not shown."],
                   blocks=[table])


def provenance_section(store: Store, refs: dict[str, str], superseded: list[tuple[Run, Run]]) -> Section:
    runs = sorted(store.runs, key=lambda r: int(refs[r.run_id][1:]))
    rows, anchors = [], []
    for r in runs:
        m, env = r.manifest, r.manifest.get("env")
        model = f"{r.model_label} ({_get(m, 'model', 'path')}, rev {_get(m, 'model', 'revision')}, " \
                f"{_get(m, 'model', 'dtype')})"
        method = m.get("method") if isinstance(m.get("method"), dict) else {}
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        files = data.get("files") if isinstance(data.get("files"), dict) else {}
        files = ", ".join(f"{k}: {text(v)[:12]}" for k, v in sorted(files.items())) or "—"
        versions = ", ".join(f"{k} {_get(env, k)}" for k in ("oscar_eval", "git_commit", "python", "torch",
                                                            "transformers", "cuda"))
        summary = r.summary or {}
        items = "no summary" if r.summary is None else f"{_get(summary, 'n_items')} ({_get(summary, 'n_failed')} failed)"
        rows.append([refs[r.run_id], r.run_id, r.benchmark, r.protocol, model, r.method,
                     _compact(method.get("params")), "—" if r.bits is None else f"{r.bits:.2f}",
                     _compact(m.get("settings")), files, versions, _get(env, "gpu"), _get(env, "platform"),
                     r.created or "—", items, all_labels(r)])
        anchors.append(slug("prov", refs[r.run_id]))
    headers = ["ref", "run id", "benchmark", "protocol", "model (path, revision, dtype)", "method", "parameters",
               "bits/elt", "settings", "data files (sha256)", "versions", "GPU", "platform", "created", "items", "labels"]
    section = Section("provenance", "Provenance")
    section.intro.append("Every number in the tables links (HTML) or refers (Markdown, \"(R3)\") to one row here.")
    section.blocks.append(TextTable("prov-runs", "Accuracy runs (runs/<run_id>/)", headers, rows, anchors))
    if superseded:
        section.blocks.append(TextTable(
            "prov-superseded", "Runs not shown (a newer run fills the same cell)",
            ["ref", "run id", "shown instead"],
            [[refs[a.run_id], a.run_id, refs[b.run_id]] for a, b in superseded]))
    speed_rows_, speed_anchors = [], []
    for f in store.speed:
        env = f.env
        clocks = env.get("clocks") if isinstance(env.get("clocks"), dict) else {}
        speed_rows_.append([refs[f.name], f"speed/{f.name}.json", _get(env, "gpu"), _get(env, "driver"),
                            _compact(clocks), ", ".join(f"{k} {_get(env, k)}" for k in
                                                        ("cuda", "torch", "transformers", "oscar_eval", "git_commit")),
                            "—" if f.peak_bandwidth_gbps is None else f"{f.peak_bandwidth_gbps:.0f}", str(len(f.rows)),
                            f.note or "—"])
        speed_anchors.append(slug("prov", refs[f.name]))
    if speed_rows_:
        section.blocks.append(TextTable("prov-speed", "Speed runs (speed/*.json)",
                                        ["ref", "file", "GPU", "driver", "clocks (MHz)", "versions",
                                         "peak GB/s", "rows", "note"], speed_rows_, speed_anchors))
    if kernel_prov := kernels.provenance_table(store.kernels, refs):
        section.blocks.append(kernel_prov)
    return section


def build(store: Store, title: str, generated: str, aliases: dict[str, str] | None = None) -> Report:
    refs = assign_refs(store)
    problems = list(store.problems)
    shown = [r for r in store.runs if store.include_smoke or not is_smoke(r)]
    sections, superseded = [], []
    for benchmark, (sid, stitle) in PAPER_SECTIONS.items():
        sections.append(benchmark_section(shown, refs, benchmark, "paper", aliases, sid, stitle))
        superseded += select(shown, benchmark, "paper", aliases).superseded
    # Real-checkpoint runs of benchmarks outside the paper have their own section (real.py).
    others_runs = [r for r in shown if not is_real(r)]
    others = sorted({(r.benchmark, r.protocol) for r in others_runs} - {(b, "paper") for b in PAPER_SECTIONS},
                    key=lambda bp: (bp[1] != "paper", bp[1], benchmark_key(bp[0])))
    for benchmark, protocol in others:
        sid = slug(benchmark, protocol)
        if protocol == "paper":
            stitle = f"{benchmark} (not in the paper)"
        else:
            stitle = f"{benchmark} under the {protocol} protocol (not comparable with the paper's numbers)"
        sections.append(benchmark_section(others_runs, refs, benchmark, protocol, aliases, sid, stitle))
        superseded += select(others_runs, benchmark, protocol, aliases).superseded
    if real := real_section(shown, refs):
        sections.append(real)
    if layers := layer_error_section(store.root, problems):
        sections.append(layers)
    sections.append(efficiency_section(store, refs, problems))
    extra = [figures.tni_heatmaps(store.root, problems)]
    if extra[0].png is not None:
        sections.append(Section("tni", "Token norm imbalance", blocks=extra))
    for optional in (smoke_section(store, refs), partial_section(store, refs), failures_section(store, refs)):
        if optional:
            sections.append(optional)
    sections.append(provenance_section(store, refs, superseded))
    return Report(title, generated, str(store.root), sections, problems)
