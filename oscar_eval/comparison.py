"""Side by side: the summaries of one benchmark x model for several methods, as rows x methods.

The rows are each benchmark's own summary rows (LongBench-E: a dataset's mean, then ``Average``; NIAH:
each context's mean; RULER: each task's and each context's mean; OCRBench / MMAU-Pro: their table
columns; ppl: PPL, KL, top-1...). Where ``fp16`` is one of the methods, every other method also gets
its difference to it, ``method - fp16`` in the row's own unit (for PPL and KL lower is better).
This is what `oscar-eval run` prints at the end and what ``--output json`` writes (docs/results.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REFERENCE = "fp16"
# The first column's header: what a row is, per benchmark.
ROW_HEADER = {"longbench_e": "subset", "niah": "context", "ruler": "task / context", "ppl": "metric"}


def summary_rows(s: dict) -> dict[str, float | None]:
    """One summary's rows in its own order: label -> value (x100 scores; ppl in its own units)."""
    if s.get("benchmark") == "ppl":
        top1 = s.get("top1")
        return {"PPL": s.get("ppl"), "fp16 PPL": s.get("ref_ppl"), "NLL": s.get("nll"), "KL": s.get("kl"),
                "top-1 %": None if top1 is None else 100 * top1, "KL cached": (s.get("cached") or {}).get("kl")}
    rows: dict[str, float | None] = {}
    if isinstance(s.get("grid"), dict):  # niah (contexts x depths), ruler (contexts x tasks)
        rows.update(s.get("tasks") or {})
        rows.update({f"{c} tokens": v for c, v in (s.get("contexts") or {}).items()})
        rows["Average"] = s.get("average")
    elif isinstance(s.get("subsets"), dict) and s["subsets"]:  # longbench_e: each dataset's mean
        rows.update({name: e.get("mean") for name, e in s["subsets"].items()})
        rows["Average"] = s.get("average")
    elif isinstance(s.get("columns"), dict):  # ocrbench, mmau_pro: their table's columns
        rows.update(s["columns"])
    else:
        rows["Average"] = s.get("average")
    return rows


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _column_names(summaries: list[dict]) -> list[str]:
    """The methods' names; the same method twice (e.g. other --set values) gets #2, #3..."""
    names: list[str] = []
    for s in summaries:
        name, n = str(s.get("method")), 2
        while name in names:
            name, n = f"{s.get('method')}#{n}", n + 1
        names.append(name)
    return names


def summary_file(s: dict) -> str | None:
    """The run folder's summary.json, once it is written (a shard not merged yet has none)."""
    run_dir = s.get("run_dir")
    if not run_dir:
        return None
    path = Path(run_dir) / "summary.json"
    return str(path) if path.is_file() else None


def compare(summaries: list[dict]) -> dict:
    """The side-by-side table as JSON-ready data: ``methods`` (the columns), ``reference`` (``"fp16"`` or
    None), ``rows`` = ``[{"row", "values": {method: v}, "delta_vs_fp16": {method: v - fp16}}]`` (no
    ``delta_vs_fp16`` without fp16), ``runs`` (per method: run folder, summary.json, items, failed)."""
    named = dict(zip(_column_names(summaries), summaries, strict=True))
    per_method = {n: summary_rows(s) for n, s in named.items()}
    labels = list(dict.fromkeys(label for rows in per_method.values() for label in rows))
    ref = next((n for n, s in named.items() if str(s.get("method")).lower() == REFERENCE), None)
    rows = []
    for label in labels:
        values = {n: method_rows.get(label) for n, method_rows in per_method.items()}
        row: dict[str, Any] = {"row": label, "values": values}
        if ref is not None:
            base = values[ref]
            row["delta_vs_fp16"] = {n: (v - base if _number(v) and _number(base) else None)
                                    for n, v in values.items() if n != ref}
        rows.append(row)
    first = summaries[0] if summaries else {}
    return {
        "benchmark": first.get("benchmark"), "model_label": first.get("model_label"),
        "configuration": first.get("configuration"), "row_header": ROW_HEADER.get(first.get("benchmark"), "column"),
        "methods": list(named), "reference": ref,
        "bits_per_element": {n: s.get("bits_per_element") for n, s in named.items()},
        "rows": rows,
        "runs": [{"method": n, "run_id": s.get("run_id"), "run_dir": s.get("run_dir"), "summary": summary_file(s),
                  "n_items": s.get("n_items"), "n_failed": s.get("n_failed"), "coverage": s.get("coverage")}
                 for n, s in named.items()],
    }


def headline(s: dict) -> str:
    """A method's result in a few words, for the line printed as it finishes."""
    rows = summary_rows(s)
    if s.get("benchmark") == "ppl":
        picked = {k: rows[k] for k in ("PPL", "KL", "top-1 %")}
    elif "Average" in rows:
        picked = {"average": rows["Average"]}
    else:
        picked = rows
    return ", ".join(f"{k} {'-' if v is None else format(v, '.4g' if k == 'KL' else '.2f')}"
                     for k, v in picked.items())
