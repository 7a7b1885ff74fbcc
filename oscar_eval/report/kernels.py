"""Kernel-level figures from ``kernels/*.json`` (scripts/bench_kernels.py): for each shape, the rows of
the newest file that measured it (files are dated by ``env.date``), so a superseded measurement
never contradicts a newer one; every row names its file (K1, K2... in the provenance)."""

from __future__ import annotations

from oscar_eval.report.model import TextTable
from oscar_eval.report.store import KernelFile, num, text

SHAPE_KEYS = ("arch", "batch", "context", "num_q_heads", "num_kv_heads", "head_dim")


def _is_bf16(impl: str) -> bool:
    return "bf16" in impl.lower() and not impl.lower().startswith(("oscar", "kivi"))


def newest_per_shape(files: list[KernelFile]) -> dict[tuple, tuple[KernelFile, list[dict]]]:
    """{shape: (file, its rows at that shape)}, the newest file winning each shape."""
    out: dict[tuple, tuple[KernelFile, list[dict]]] = {}
    for f in sorted(files, key=lambda f: (f.date, f.name)):  # later files overwrite earlier ones
        shapes: dict[tuple, list[dict]] = {}
        for r in f.rows:
            if num(r.get("median_us")) and num(r.get("batch")) and num(r.get("context")):
                shapes.setdefault(tuple(r.get(k) for k in SHAPE_KEYS), []).append(r)
        for shape, rows in shapes.items():
            out[shape] = (f, rows)
    return out


def _us(r: dict | None) -> str:
    return "—" if r is None else f"{num(r['median_us']):,.1f}"


def decode_table(files: list[KernelFile], refs: dict[str, str]) -> TextTable | None:
    chosen = newest_per_shape(files)
    if not chosen:
        return None
    out = []
    for shape in sorted(chosen, key=lambda s: (text(s[0]), s[1], s[2], text(s[3:]))):
        f, rows = chosen[shape]
        by_impl = {text(r.get("impl")): r for r in rows}
        oscar, kivi = by_impl.get("oscar-int2"), by_impl.get("kivi-int2")
        bf16 = min((r for i, r in by_impl.items() if _is_bf16(i)), key=lambda r: num(r["median_us"]), default=None)
        speedup = f"{num(bf16['median_us']) / num(oscar['median_us']):.2f}x" if oscar and bf16 else "—"
        bw = num(oscar.get("roofline_fraction")) if oscar else None
        arch, batch, context, hq, hkv, d = shape
        out.append([text(arch), str(batch), str(context), f"{hq}/{hkv}, {d}", _us(oscar), _us(kivi),
                    f"{_us(bf16)} ({text(bf16.get('impl'))})" if bf16 else "—", speedup,
                    "—" if bw is None else f"{100 * bw:.0f}%", refs[f"kernels/{f.name}"]])
    headers = ["arch", "batch", "context", "heads q/kv, D", "OScaR INT2 µs", "KIVI INT2 µs",
               "fastest BF16 µs", "OScaR vs BF16", "OScaR of copy BW", "file"]
    table = TextTable("kernel-decode", "Decode attention kernel, one layer (median µs per call)", headers, out,
                      ref_column=len(headers) - 1)
    table.notes.append("Each shape from the newest kernels/*.json that measured it; \"of copy BW\": the bytes the "
                       "kernel must read over the time, as a fraction of the measured device-to-device copy bandwidth.")
    return table


def provenance_table(files: list[KernelFile], refs: dict[str, str]) -> TextTable | None:
    if not files:
        return None
    rows, anchors = [], []
    for f in sorted(files, key=lambda f: int(refs[f"kernels/{f.name}"][1:])):
        env, ref = f.env, refs[f"kernels/{f.name}"]
        rows.append([ref, f"kernels/{f.name}.json", f.date or "—", text(env.get("gpu"), "—"),
                     text(env.get("git_commit"), "—"), text(env.get("kernel_defines")) or "—",
                     "—" if f.peak_bandwidth_gbps is None else f"{f.peak_bandwidth_gbps:.0f}", str(len(f.rows)),
                     f.note or "—"])
        anchors.append(f"prov-{ref.lower()}")
    headers = ["ref", "file", "date", "GPU", "git commit", "kernel defines", "copy GB/s", "rows", "note"]
    return TextTable("prov-kernels", "Kernel runs (kernels/*.json)", headers, rows, anchors)
