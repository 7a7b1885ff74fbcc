"""Accuracy tables: Table 1 (LongBench-E), Table 6 (OCRBench), Table 8 (MMAU-Pro), NIAH, others.

Partial runs (a ``--limit``, subsets left out: ``Run.partial``) never fill a cell; the report lists
them apart with their coverage.

Which run fills a cell: runs are grouped by (benchmark, protocol, paper column or model label,
method); when several runs share a cell (e.g. different settings), the newest ``created`` wins and
the others are listed as superseded in the provenance section. Runs under a protocol other than
"paper" (e.g. "lm-eval") only ever appear in their own tables, without the paper's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from oscar_eval.report.labels import decode_path, run_labels
from oscar_eval.report.model import Cell, Row, Table, slug
from oscar_eval.report.paper import (
    PAPER_MODEL,
    load_paper,
    match_model,
    method_label,
    method_sort_key,
    paper_bits_label,
    paper_value,
)
from oscar_eval.report.store import Run, num

BENCHMARK_ORDER = ["longbench_e", "ocrbench", "mmau_pro", "niah"]
LONGBENCH_SUBSETS = [
    "qasper_e", "multifieldqa_en_e", "hotpotqa_e", "2wikimqa_e", "gov_report_e", "multi_news_e", "trec_e",
    "triviaqa_e", "samsum_e", "passage_count_e", "passage_retrieval_en_e", "lcc_e", "repobench-p_e",
]  # fmt: skip
BUCKETS = ["0-4k", "4-8k", "8k+"]
OCR_GROUPS = [
    "Text Recognition", "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition", "Total",
]  # fmt: skip
DECIMALS = {"longbench_e": 2, "ocrbench": 0, "mmau_pro": 1, "niah": 1}


def ordered(names: list[str], preferred: list[str]) -> list[str]:
    """``names`` in ``preferred`` order, unknown ones after (sorted)."""
    known = [n for n in preferred if n in names]
    return known + sorted(n for n in set(names) if n not in preferred)


def benchmark_key(name: str) -> tuple[int, str]:
    return (BENCHMARK_ORDER.index(name), "") if name in BENCHMARK_ORDER else (len(BENCHMARK_ORDER), name)


def paper_columns(benchmark: str) -> list[str]:
    """The paper's *model* columns for a benchmark (MMAU-Pro's columns are metrics)."""
    if benchmark in PAPER_MODEL:
        return [PAPER_MODEL[benchmark]]
    spec = load_paper()["tables"].get(benchmark)
    return list(spec["columns"]) if spec else []


@dataclass
class Selection:
    """The runs shown for one (benchmark, protocol): ``cells[(column, method)]``."""

    benchmark: str
    protocol: str
    columns: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], Run]
    superseded: list[tuple[Run, Run]] = field(default_factory=list)  # (hidden, shown instead)

    def run(self, column: str, method: str) -> Run | None:
        return self.cells.get((column, method))


def select(runs: list[Run], benchmark: str, protocol: str, aliases: dict[str, str] | None) -> Selection:
    pcols = paper_columns(benchmark)
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.benchmark != benchmark or run.protocol != protocol or run.summary is None:
            continue
        if run.partial:  # not the whole data set: listed apart (build.partial_section), never in a table
            continue
        column = match_model(run.model_label, pcols, aliases) or run.model_label
        groups.setdefault((column, run.method), []).append(run)
    cells, superseded = {}, []
    for key, group in groups.items():
        group.sort(key=lambda r: (r.created, r.run_id))
        cells[key] = group[-1]
        superseded += [(r, group[-1]) for r in group[:-1]]
    extra = sorted({c for c, _ in cells} - set(pcols))
    # Paper-protocol tables mirror the paper: all its columns and rows, even where we have no run.
    columns = (pcols if protocol == "paper" else [c for c in pcols if any(k[0] == c for k in cells)]) + extra
    methods = sorted({m for _, m in cells}, key=method_sort_key)
    spec = load_paper()["tables"].get(benchmark)
    if protocol == "paper" and spec:
        methods = sorted(set(methods) | set(spec["rows"]), key=method_sort_key)
    return Selection(benchmark, protocol, columns, methods, cells, superseded)


def summary_value(run: Run, *path: str) -> float | None:
    node = run.summary
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return num(node)


def _mapping(run: Run, key: str) -> dict:
    value = (run.summary or {}).get(key)
    return value if isinstance(value, dict) else {}


def headline(run: Run) -> float | None:
    """The number a benchmark's main table shows for one run."""
    if run.benchmark == "ocrbench":
        return summary_value(run, "columns", "Total")
    value = summary_value(run, "average")
    if value is None and _mapping(run, "columns"):
        # A benchmark with only "columns" (e.g. NIAH's "Accuracy"): its first column is the headline.
        value = summary_value(run, "columns", next(iter(_mapping(run, "columns"))))
    return value


def caveats(run: Run) -> str | None:
    """Why a run's number is not quite the paper's quantity: failed items, datasets missing."""
    out = []
    n_failed = num((run.summary or {}).get("n_failed")) or 0
    if n_failed:
        out.append(f"{int(n_failed)} failed item{'s' if n_failed != 1 else ''}")
    if run.benchmark == "longbench_e":
        done = [s for s in LONGBENCH_SUBSETS if summary_value(run, "subsets", s, "mean") is not None]
        if len(done) < len(LONGBENCH_SUBSETS):
            out.append(f"average over {len(done)} of {len(LONGBENCH_SUBSETS)} datasets")
    return "; ".join(out) or None


def _cell(run: Run | None, refs: dict[str, str], value: Callable[[Run], float | None]) -> Cell:
    if run is None:
        return Cell()
    return Cell(ours=value(run), ref=refs.get(run.run_id), flag=caveats(run), labels=run_labels(run, False))


def decode_path_note(runs: list[Run], refs: dict[str, str]) -> str | None:
    """"Decode path: kernel (R1, R2); reference (R3)." for the runs of a table that record one."""
    paths: dict[str, list[str]] = {}
    for run in runs:
        if path := decode_path(run):
            paths.setdefault(path, []).append(refs.get(run.run_id, "?"))
    if not paths:
        return None
    return "Decode path: " + "; ".join(f"{p} ({', '.join(v)})" for p, v in sorted(paths.items())) + "."


def _bits(runs: list[Run]) -> str | None:
    values = sorted({round(b, 2) for b in (r.bits for r in runs) if b is not None})
    return " / ".join(f"{v:.2f}" for v in values) or None


def main_table(sel: Selection, refs: dict[str, str], table_id: str, title: str) -> Table:
    """Methods x models, one headline number per cell, the paper's value beside it."""
    compare = sel.protocol == "paper" and sel.benchmark in load_paper()["tables"]
    rows = []
    for method in sel.methods:
        cells = []
        for column in sel.columns:
            cell = _cell(sel.run(column, method), refs, headline)
            if compare:
                cell.paper = paper_value(sel.benchmark, method, column)
            cells.append(cell)
        runs = [r for c in sel.columns if (r := sel.run(c, method))]
        rows.append(Row(method, method_label(method), cells, paper_bits_label(method) if compare else None, _bits(runs)))
    table = Table(table_id, title, sel.columns, rows, DECIMALS.get(sel.benchmark, 2), compare=compare)
    if note := decode_path_note(list(sel.cells.values()), refs):
        table.notes.append(note)
    return table


def mmau_tables(sel: Selection, refs: dict[str, str]) -> list[Table]:
    """Table 8: per model, methods x (Open-ended, Good Rate, AIF)."""
    metrics = list(load_paper()["tables"]["mmau_pro"]["columns"])
    compare = sel.protocol == "paper"
    tables = []
    for column in sel.columns:
        rows = []
        is_paper_model = compare and column == PAPER_MODEL["mmau_pro"]
        for method in sel.methods:
            run = sel.run(column, method)
            cells = []
            for metric in metrics:
                cell = _cell(run, refs, lambda r, m=metric: summary_value(r, "columns", m))
                cell.paper = paper_value("mmau_pro", method, metric) if is_paper_model else None
                cells.append(cell)
            rows.append(Row(method, method_label(method), cells, paper_bits_label(method) if compare else None,
                            _bits([run] if run else [])))
        table = Table(slug("mmau", sel.protocol, column), f"MMAU-Pro, {column}", metrics, rows, 1, compare=compare)
        if compare and not is_paper_model:
            table.notes.append(f"The paper reports MMAU-Pro for {PAPER_MODEL['mmau_pro']} only.")
        tables.append(table)
    return tables


def detail_table(sel: Selection, refs: dict[str, str], column: str, table_id: str, title: str,
                 rows_spec: list[tuple[str, tuple]], subcolumns: list[tuple[str, str]], decimals: int) -> Table:
    """Ours only. Rows are (label, summary path prefix); one column group per method run for ``column``,
    with one sub-column per (header, last path element) in ``subcolumns`` ("" = the prefix itself)."""
    methods = [m for m in sel.methods if sel.run(column, m)]
    rows = []
    for label, path in rows_spec:
        cells = []
        for m in methods:
            for _, leaf in subcolumns:
                full = (*path, leaf) if leaf else path
                cell = _cell(sel.run(column, m), refs, lambda r, p=full: summary_value(r, *p))
                cell.flag, cell.labels = None, []  # shown once, in the main table
                cells.append(cell)
        rows.append(Row(label, label, cells))
    headers = [h for _ in methods for h, _ in subcolumns]
    groups = [(method_label(m), len(subcolumns), refs.get(sel.run(column, m).run_id)) for m in methods]
    return Table(table_id, title, headers, rows, decimals, compare=False, show_bits=False, row_header="",
                 groups=groups)


def longbench_details(sel: Selection, refs: dict[str, str]) -> list[Table]:
    """Per model: datasets x (method x (0-4k, 4-8k, 8k+, mean)), then the average."""
    tables = []
    for column in sel.columns:
        runs = [sel.run(column, m) for m in sel.methods if sel.run(column, m)]
        if not runs:
            continue
        names = sorted({s for r in runs for s in _mapping(r, "subsets")})
        spec = [(s, ("subsets", s)) for s in ordered(names, LONGBENCH_SUBSETS)]
        sub = [(b, b) for b in BUCKETS] + [("mean", "mean")]
        tid = slug("lb-details", sel.protocol, column)
        title = f"{column}: per dataset and length bucket" + ("" if sel.protocol == "paper" else f" ({sel.protocol})")
        table = detail_table(sel, refs, column, tid, title, spec, sub, 2)
        # The Average row: the summary's average under "mean"; per-bucket averages are not in the store.
        cells = []
        for run in runs:
            cells += [Cell() for _ in BUCKETS] + [Cell(summary_value(run, "average"), ref=refs.get(run.run_id))]
        table.rows.append(Row("average", "Average (of dataset means)", cells))
        tables.append(table)
    return tables


def columns_details(sel: Selection, refs: dict[str, str], preferred: list[str], decimals: int, what: str) -> list[Table]:
    """Per model: the summary's ``columns`` (e.g. OCRBench's five groups and Total) x methods."""
    tables = []
    for column in sel.columns:
        runs = [sel.run(column, m) for m in sel.methods if sel.run(column, m)]
        names = sorted({c for r in runs for c in _mapping(r, "columns")})
        if not names:
            continue
        spec = [(c, ("columns", c)) for c in ordered(names, preferred)]
        tid = slug(what, sel.protocol, column)
        title = f"{column}: per column" + ("" if sel.protocol == "paper" else f" ({sel.protocol})")
        tables.append(detail_table(sel, refs, column, tid, title, spec, [("score", "")], decimals))
    return tables
