"""Per-layer, per-method attention-output error on a real model, each layer isolated (issue 13).

Text: the first document of the perplexity benchmark's standard-library docstrings (tasks/ppl.yaml),
its first ``--prompt-tokens + --steps`` tokens. See oscar_eval/analysis/layer_error.py for what is
measured. Writes one JSON with provenance (model package, GGUF sha256, versions, git commit, text).

    OSCAR_EVAL_HOME=/tmp/oeh OMP_NUM_THREADS=2 python scripts/layer_attention_error.py \
        --model qwen2.5-coder-0.5b-instruct --out results/analysis/layer_error_qwen.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from oscar_core.methods import get_method
from oscar_core.model import inspect_model
from oscar_eval.analysis.layer_error import analyze_layers, capture_layer_inputs
from oscar_eval.benchmarks.ppl import load_config, stdlib_documents
from oscar_eval.models import load_model
from oscar_eval.provenance import environment, model_source, now, sha256_file

#: label -> (method, parameters); the oscar rows are its ablations (rotation / token scaling switches)
DEFAULT_METHODS = {
    "kivi": ("kivi", {}),
    "kivi_block_values": ("kivi", {"value_flush": "block"}),  # KIVI's quantizer under OScaR's value window
    "oscar": ("oscar", {}),
    "oscar_rotation_only": ("oscar", {"token_scaling": False}),
    "oscar_scaling_only": ("oscar", {"rotation": False}),
    "oscar_neither": ("oscar", {"rotation": False, "token_scaling": False}),
    "oscar_auto": ("oscar", {"key_basis": "auto"}),  # the key basis chosen per layer at prefill
    "quarot": ("quarot", {}),
    "ott": ("ott", {}),
    "turboquant+": ("turboquant+", {}),
    "turboquant": ("turboquant", {}),
}


def parse_method(text: str) -> tuple[str, tuple[str, dict]]:
    """``label=name:key=value,key=value`` (values as JSON where they parse, else strings)."""
    label, _, rest = text.partition("=") if "=" in text.split(":")[0] else (text.split(":")[0], "", text)
    name, _, params = rest.partition(":")
    out = {}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--method {text!r}: parameter {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return label, (name, out)


def code_provenance() -> dict:
    """sha256 of the two files whose code made these numbers (the environment's ``git_commit`` and
    ``source_sha256`` identify the whole tree; outside a git checkout the commit is ``$GIT_COMMIT``)."""
    import oscar_core.methods.oscar as oscar_method
    import oscar_eval.analysis.layer_error as layer_error

    return {"sha256": {Path(m.__file__).name: sha256_file(m.__file__) for m in (layer_error, oscar_method)}}


def prompt_text() -> tuple[str, dict]:
    cfg = load_config()["stdlib"]
    names, text = stdlib_documents(cfg["modules"], int(cfg["min_chars"]))[0]
    return text, {"source": "python-stdlib-docstrings (first document of tasks/ppl.yaml's stdlib list)",
                  "modules": names, "python": platform.python_version(),
                  "text_sha256": hashlib.sha256(text.encode()).hexdigest()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-tokens", type=int, default=1920, help="committed as the prompt (default 1920)")
    p.add_argument("--steps", type=int, default=64, help="decode steps measured after it (default 64)")
    p.add_argument("--method", action="append", dest="methods", metavar="LABEL=NAME:K=V,...",
                   help="repeatable; default: kivi, oscar, its ablations and key_basis=auto, quarot, ott, "
                        "turboquant+, turboquant")
    p.add_argument("--rotatekv-calibration", type=Path, help="add rotatekv with this calibration file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tni-out", type=Path, help="also write `oscar-eval tni` (tni.json + heatmap) on the same "
                   "tokens into this folder, with this run's provenance")
    p.add_argument("--skip-layer-error", action="store_true", help="only the TNI diagnostics")
    args = p.parse_args(argv)
    methods = dict(parse_method(m) for m in args.methods) if args.methods else dict(DEFAULT_METHODS)
    if args.rotatekv_calibration:
        methods["rotatekv"] = ("rotatekv", {"calibration": str(args.rotatekv_calibration)})
    torch.manual_seed(0)
    loaded = load_model(args.model, device="cpu", dtype="float32")
    text, prompt = prompt_text()
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[:, : args.prompt_tokens + args.steps]
    if ids.shape[1] < args.prompt_tokens + args.steps:
        raise SystemExit(f"the text has only {ids.shape[1]} tokens")
    info = inspect_model(loaded.model)
    specs = {label: get_method(name, **params).resolve_for_model(info.num_kv_heads, info.head_dim)
             for label, (name, params) in methods.items()}
    shared = {label: spec.init_layer_states(loaded.model, info) for label, spec in specs.items()}
    provenance = {
        "created": now(),
        "model": {"name": args.model, "path": str(loaded.path), "source": model_source(loaded.path),
                  "dtype": "float32", "device": "cpu"},
        "environment": environment(),
        "code": code_provenance(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "prompt": {**prompt, "tokens": int(ids.shape[1]), "prompt_tokens": args.prompt_tokens, "steps": args.steps},
    }
    if args.tni_out:
        from oscar_eval.commands.tni import run_tni

        summary = run_tni(args.model, text, int(ids.shape[1]), ["kivi", "oscar"], out=args.tni_out,
                          device="cpu", dtype="float32")
        summary["provenance"] = provenance
        (args.tni_out / "tni.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        print(f"wrote {args.tni_out / 'tni.json'}")
    if args.skip_layer_error:
        return 0
    start = time.time()
    inputs = capture_layer_inputs(loaded.model, ids)
    rows = analyze_layers(inputs, specs, shared, steps=args.steps, prompt_tokens=args.prompt_tokens,
                          progress=lambda layer: print(f"layer {layer} done ({time.time() - start:.0f} s)", flush=True))
    result = {
        "what": "per-layer attention-output relative error ||o_q - o_fp|| / ||o_fp||, each layer isolated "
                "(fp model's own Q/K/V; only that layer's K/V through the method's cache layer), over the "
                f"last {args.steps} query positions decoded one by one after a {args.prompt_tokens}-token "
                "committed prompt; plus key statistics (oscar_eval/analysis/layer_error.py)",
        **provenance,
        "methods": {label: spec.to_dict() for label, spec in specs.items()},
        "layers": rows,
        "mean_over_layers": {
            label: {key: sum(r["methods"][label][key] for r in rows) / len(rows)
                    for key in ("output", "output_keys_only", "output_values_only", "key", "value")}
            for label in specs
        },
        "seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    head = f"{'layer':>5} {'sink':>6} {'bias/|k|':>8} {'top4':>5} {'top4H':>5}" + "".join(
        f" {label[:14]:>14}" for label in specs)
    print(head)
    for r in rows:
        print(f"{r['layer']:>5} {r['sink_ratio']:>6.2f} {r.get('k_bias_over_mean_key_norm', float('nan')):>8.2f} "
              f"{r['top4_channel_energy']:>5.2f} {r['top4_channel_energy_rotated']:>5.2f}"
              + "".join(f" {r['methods'][label]['output']:>14.4f}" for label in specs))
    print("mean " + " ".join(f"{label}={v['output']:.4f}" for label, v in result["mean_over_layers"].items()))
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
