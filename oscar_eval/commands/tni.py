"""`oscar-eval tni`: Token Norm Imbalance of a model on a text (oscar_core.diagnostics)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from oscar_eval.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tni", help="token-norm-imbalance diagnostics of a model's keys")
    p.add_argument("--model", help="the model, as `oscar-eval run --model` takes it (default: the smoke model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", type=Path, help="a UTF-8 text file to run through the model")
    src.add_argument("--prompt", help="the text itself")
    p.add_argument("--max-tokens", type=int, default=1024, help="tokens of the text to use (default 1024)")
    p.add_argument("--method", action="append", dest="methods",
                   help="methods whose key error to measure (repeatable; default kivi and oscar)")
    p.add_argument("--low-ratio", type=float, default=0.25, help="'low-norm' = below this x the median norm")
    p.add_argument("--out", type=Path, help="folder for tni.json and tni_heatmap.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.set_defaults(func=main)


def run_tni(model: str | None, text: str, max_tokens: int = 1024, methods: list[str] | None = None,
            low_ratio: float = 0.25, out: Path | None = None, device: str = "auto", dtype: str = "auto") -> dict:
    """Python API of `oscar-eval tni`; returns the JSON-able summary."""
    from oscar_core.diagnostics import analyze_keys, collect_keys, norm_ratio_heatmap
    from oscar_eval.models import load_model
    from oscar_eval.smoke import smoke_model_path

    loaded = load_model(model or smoke_model_path(), device=device, dtype=dtype)
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens].to(loaded.model.device)
    if ids.shape[1] < 2:
        raise UserError("the text is too short: it needs at least 2 tokens")
    layers = analyze_keys(collect_keys(loaded.model, ids), methods or ["kivi", "oscar"], low_ratio)
    summary = {
        "model": str(loaded.path),
        "tokens": int(ids.shape[1]),
        "low_ratio": low_ratio,
        "layers": [
            {"layer": lt.layer, "median_norm": lt.median, "min_ratio": lt.min_ratio,
             "low_tokens": lt.low_tokens, "errors": lt.errors}
            for lt in layers
        ],
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tni.json").write_text(json.dumps(summary, indent=1))
        norm_ratio_heatmap(layers, str(out / "tni_heatmap.png"))
    return summary


def main(args: argparse.Namespace) -> int:
    if args.text is not None:
        if not args.text.is_file():
            raise UserError(f"--text {args.text}: no such file")
        text = args.text.read_text(encoding="utf-8", errors="replace")
    elif args.prompt:
        text = args.prompt
    else:
        raise UserError("give the text to analyse with --text FILE or --prompt TEXT")
    summary = run_tni(args.model, text, args.max_tokens, args.methods, args.low_ratio, args.out,
                      args.device, args.dtype)
    methods = sorted({m for layer in summary["layers"] for m in layer["errors"]})
    head = f"{'layer':>5} {'low tok':>7} {'min/med':>7}" + "".join(f" {m + ' low':>12} {m + ' rest':>12}" for m in methods)
    print(f"{summary['tokens']} tokens of {summary['model']}")
    print(head)
    for layer in summary["layers"]:
        row = f"{layer['layer']:>5} {len(layer['low_tokens']):>7} {layer['min_ratio']:>7.3f}"
        for m in methods:
            e = layer["errors"].get(m, {})
            row += f" {e.get('low', float('nan')):>12.3f} {e.get('rest', float('nan')):>12.3f}"
        print(row)
    if args.out:
        print(f"wrote {args.out / 'tni.json'} and {args.out / 'tni_heatmap.png'}")
    return 0
