"""`oscar-eval calibrate rotatekv --model PATH --text FILE`: offline calibration (a thin layer over
:func:`oscar_core.calibration.calibrate_rotatekv`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="calibrate a method that needs it (rotatekv) on a local text file",
        description="Compute RotateKV's per-layer key channel permutations from a text file you choose (never "
                    "evaluation data). The result is stored under the model's fingerprint and reused by every "
                    "later run of rotatekv on the same model.")
    p.add_argument("method", choices=["rotatekv"], help="method to calibrate")
    p.add_argument("--model", required=True, help="model folder or a repo id already in the local Hugging Face cache")
    p.add_argument("--text", required=True, help="UTF-8 text file to calibrate on")
    p.add_argument("--out", help="calibration folder (default: $OSCAR_EVAL_CALIBRATION_DIR or <results>/calibration)")
    p.add_argument("--results", default="results",
                   help="results store whose calibration/ folder `oscar-eval run --results` reads (default: results)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration chunk (default: 2048)")
    p.add_argument("--max-tokens", type=int, default=2048 * 64, help="calibration tokens in all (default: 131072)")
    p.add_argument("--head-group", type=int, default=4, help="KV heads per grouped Hadamard (default: 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32 (default: auto)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from oscar_eval.cli import UserError

    text = Path(args.text)
    if not text.is_file():
        raise UserError(f"--text {text}: no such file")
    if args.seq_len < 2 or args.max_tokens < 2:
        raise UserError("--seq-len and --max-tokens must be at least 2")
    from oscar_core.calibration import calibrate_rotatekv
    from oscar_core.methods import MethodConfigError
    from oscar_eval.commands import calibration_dir_of
    from oscar_eval.models import load_model

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    try:
        with calibration_dir_of(args.results):
            data = calibrate_rotatekv(loaded.model, loaded.tokenizer, text, seq_len=args.seq_len,
                                      max_tokens=args.max_tokens, head_group=args.head_group, out_dir=args.out)
    except MethodConfigError as exc:
        raise UserError(str(exc)) from None
    print(f"rotatekv calibration: {data['n_tokens']} tokens from {text}, {data['num_layers']} layers, "
          f"model fingerprint {data['model_fingerprint'][:12]}")
    print(f"written to {data['path']}")
    return 0
