"""Run the VLMEvalKit adapter inside the real VLMEvalKit on the OCRBench fixture, beside `oscar-eval run`.

VLMEvalKit is not on the package registry: install it from a checkout (``pip install --no-deps -e
VLMEvalKit`` plus the modules its imports ask for). This script

1. points VLMEvalKit's data root (``LMUData``) at a temporary folder holding our ``OCRBench.tsv``
   fixture (VLMEvalKit's own TSV format) and accepts it without the official file's MD5 (it is a
   fixture, not the official 1000-question file: VLMEvalKit would otherwise try to download that);
2. runs VLMEvalKit's own inference loop (``vlmeval.inference.infer_data_job``) with
   :class:`oscar_eval.adapters.vlmevalkit.OscarVLM` on the smoke model (tiny random Qwen3-VL), and
   scores the predictions with VLMEvalKit's ``OCRBench.evaluate``;
3. runs ``oscar_eval.api.run_benchmark("ocrbench")`` on the same fixture and model, and
4. compares the predictions item by item and the scores column by column.

    python scripts/vlmevalkit_ocrbench_check.py --method oscar --out results/vlmevalkit/check.json

Exit status 0 only when every prediction and every score agree. The model has random weights: the
scores mean nothing, the agreement is what is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="oscar")
    p.add_argument("--out", type=Path, help="write the comparison here as JSON")
    args = p.parse_args(argv)

    import vlmeval
    from vlmeval.dataset import OCRBench as VLMEvalOCRBench
    from vlmeval.inference import infer_data_job

    from oscar_eval import provenance
    from oscar_eval.adapters.vlmevalkit import VLMEVAL_KEYS, OscarVLM
    from oscar_eval.api import run_benchmark
    from oscar_eval.models import vision

    work = Path(tempfile.mkdtemp(prefix="oscar-vlmeval-"))
    lmu = work / "LMUData"
    lmu.mkdir()
    shutil.copy(vision.SMOKE_OCRBENCH_DATA / "OCRBench.tsv", lmu / "OCRBench.tsv")
    os.environ["LMUData"] = str(lmu)
    VLMEvalOCRBench.DATASET_MD5 = {}  # a fixture: accept the local file as it is (no download)
    dataset = VLMEvalOCRBench("OCRBench")

    model_path = vision.smoke_model_path()
    model = OscarVLM(model_path, method=args.method, device="cpu", dtype="float32")
    model_name = f"oscar-smoke-{args.method}"
    infer_data_job(model, work_dir=str(work), model_name=model_name, dataset=dataset)
    pred_files = sorted(work.glob(f"{model_name}_OCRBench.*"))
    pred_file = next(f for f in pred_files if f.suffix in (".xlsx", ".tsv", ".json", ".pkl") and "PREV" not in f.name)
    theirs_scores = {VLMEVAL_KEYS[k]: float(v) for k, v in dict(dataset.evaluate(str(pred_file))).items()
                     if k in VLMEVAL_KEYS}
    from vlmeval.smp import load

    theirs_preds = {str(i): str(p) for i, p in zip(load(str(pred_file))["index"], load(str(pred_file))["prediction"],
                                                   strict=True)}

    summaries = run_benchmark("ocrbench", methods=[args.method], results=str(work / "ours"), progress=False,
                              device="cpu", dtype="float32")
    run_dir = Path(summaries[0]["run_dir"])
    ours_scores = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["columns"]
    ours_preds = {}
    for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        ours_preds[str(rec["item_id"]).removeprefix("ocrbench/")] = rec.get("prediction") or ""

    differing = sorted(i for i in theirs_preds if theirs_preds[i] != ours_preds.get(i))
    scorer = _compare_scorers(dataset, work)
    score_diff = {k: (float(ours_scores.get(k, 0.0)), v) for k, v in theirs_scores.items()
                  if abs(float(ours_scores.get(k, 0.0)) - v) > 1e-9}
    result = {
        "what": "OscarVLM inside VLMEvalKit (infer_data_job + OCRBench.evaluate) vs oscar-eval run ocrbench, "
                "same OCRBench fixture and tiny random Qwen3-VL (scores meaningless; agreement checked)",
        "method": args.method,
        "vlmevalkit": {"version": getattr(vlmeval, "__version__", None), "path": str(Path(vlmeval.__file__).parent)},
        "items": len(theirs_preds),
        "predictions_differing": differing,
        "scores_vlmevalkit": theirs_scores,
        "scores_oscar_eval": {k: ours_scores.get(k) for k in theirs_scores},
        "scores_differing": score_diff,
        "scorer_check": scorer,
        "agree": (not differing and not score_diff and len(theirs_preds) == len(ours_preds)
                  and not scorer["differing"]),
        "env": provenance.environment(),
        "date": provenance.now(),
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if result["agree"] else 1


def _compare_scorers(dataset, work: Path) -> dict:
    """Random weights score 0 everywhere, so also score constructed predictions with both scorers:
    the reference (re-cased, padded with spaces and extra words) for every other item, a wrong answer
    for the rest."""
    import ast

    import pandas as pd
    from vlmeval.smp import dump

    from oscar_eval.adapters.vlmevalkit import VLMEVAL_KEYS
    from oscar_eval.scoring import ocrbench as ocr

    rows, ours = [], []
    for n, (_, line) in enumerate(dataset.data.iterrows()):
        refs = [str(a) for a in ast.literal_eval(str(line["answer"]))]
        variants = [refs[0], f"  {refs[0].upper()} ", f"The answer is {refs[0]}."]
        pred = variants[n % 3] if n % 2 == 0 else "definitely not it"
        rows.append({"index": line["index"], "question": line["question"], "answer": line["answer"],
                     "category": line["category"], "prediction": pred})
        ours.append((line["category"], ocr.score(line["category"], pred, refs)))
    pred_file = work / "constructed_OCRBench.tsv"
    dump(pd.DataFrame(rows), str(pred_file))
    theirs = {VLMEVAL_KEYS[k]: float(v) for k, v in dict(dataset.evaluate(str(pred_file))).items()
              if k in VLMEVAL_KEYS}
    mine = ocr.aggregate(ours)["columns"]
    differing = {k: (mine.get(k), v) for k, v in theirs.items() if abs(float(mine.get(k) or 0.0) - v) > 1e-9}
    return {"items": len(rows), "vlmevalkit": theirs, "oscar_eval": {k: mine.get(k) for k in theirs},
            "differing": differing}


if __name__ == "__main__":
    sys.exit(main())
