"""Collect the summaries of `oscar-eval run ppl` run stores into one compact JSON with their provenance.

    python scripts/collect_ppl_runs.py /tmp/analysis_runs/ppl/runs/ppl-* --out results/analysis/ppl_key_basis.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEEP = ("n_documents", "n_tokens", "ppl", "kl", "top1", "ref_ppl", "cached", "bits_per_element", "measurement")


def collect(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    return {"run_id": summary["run_id"], "model": manifest["model"], "method": manifest["method"],
            "settings": manifest["settings"], "env": manifest.get("env"), "created": manifest.get("created"),
            **{k: summary[k] for k in KEEP if k in summary}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (holding summary.json and manifest.json)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        raise SystemExit(f"no summary.json in: {', '.join(missing)}")
    runs = [collect(r) for r in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"what": "oscar-eval run ppl summaries (run stores not committed)", "runs": runs},
                                   indent=1) + "\n")
    for r in runs:
        print(f"{r['run_id']:60s} ppl {r['ppl']:.3f}  kl {r['kl']:.4f}  top1 {r['top1']:.3f}  ref {r['ref_ppl']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
