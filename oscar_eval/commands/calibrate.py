"""`oscar-eval calibrate rotatekv --model PATH --text FILE`: offline calibration (a thin layer over
:func:`oscar_core.calibration.calibrate_rotatekv`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from oscar_eval.errors import UserError
from oscar_eval.paths import RESULTS_DEFAULT, results_root


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="calibrate a method that needs it (rotatekv) on a local text file",
        description="Compute RotateKV's per-layer key channel permutations from a text file you choose (never "
                    "evaluation data). The result is stored under the model's fingerprint and reused by every "
                    "later run of rotatekv on the same model.")
    p.add_argument("method", choices=["rotatekv"], help="method to calibrate")
    p.add_argument("--model", required=True, help="the model, as `oscar-eval run --model` takes it")
    p.add_argument("--text", required=True, help="UTF-8 text file to calibrate on")
    p.add_argument("--out", help="calibration folder (default: $OSCAR_EVAL_CALIBRATION_DIR or <results>/calibration)")
    p.add_argument("--results", default=str(results_root()),
                   help="results store whose calibration/ folder `oscar-eval run --results` reads "
                        f"(default: {RESULTS_DEFAULT})")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration chunk (default: 2048)")
    p.add_argument("--max-tokens", type=int, default=2048 * 64, help="calibration tokens in all (default: 131072)")
    p.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE", default=[],
                   help="rotatekv parameter, as `run --set` (head_group=2 or rotatekv.head_group=2); default: "
                        "chosen for the model as `run` chooses it (head_group: the largest of 4, 2, 1 that "
                        "divides the KV heads)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32 (default: auto)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    text = Path(args.text)
    if not text.is_file():
        raise UserError(f"--text {text}: no such file")
    if args.seq_len < 2 or args.max_tokens < 2:
        raise UserError("--seq-len and --max-tokens must be at least 2")
    from oscar_core.calibration import calibrate_rotatekv
    from oscar_core.methods import MethodConfigError
    from oscar_eval.api import method_spec, overrides_for, parse_overrides
    from oscar_eval.commands import calibration_dir_of
    from oscar_eval.models import load_model

    # The whole spec is checked (a typo'd or invalid parameter is an error before the model loads), but
    # only head_group enters the permutation: sorting channel sums ignores the quantization groups.
    spec = method_spec("rotatekv", overrides_for("rotatekv", parse_overrides(args.overrides)))
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    heads, head_dim = loaded.kv_shape()
    try:
        spec = spec.resolve_for_model(heads, head_dim)
        spec.check_model(heads, head_dim)
        with calibration_dir_of(args.results):
            data = calibrate_rotatekv(loaded.model, loaded.tokenizer, text, seq_len=args.seq_len,
                                      max_tokens=args.max_tokens, head_group=spec.head_group, out_dir=args.out)
    except MethodConfigError as exc:
        raise UserError(str(exc)) from None
    print(f"rotatekv calibration: {data['n_tokens']} tokens from {text}, {data['num_layers']} layers, "
          f"{heads} KV heads of head_dim {head_dim}, head_group={data['head_group']}, "
          f"model fingerprint {data['model_fingerprint'][:12]}")
    print(f"written to {data['path']}")
    return 0
