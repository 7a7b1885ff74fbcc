"""Per-step CPU decode time of each method's packed cache vs fp16: the blockwise path vs the timeline path.

For each method: one prefill of ``--context`` tokens, then ``--steps`` decode steps in which the fp16
cache, the packed cache through the blockwise path (:mod:`oscar_core.cache.blockwise`) and the same packed
cache through the timeline path take one step each in turn (interleaved, so a load change on a shared
machine hits all three alike). The fp16 cache is cropped back to the prompt after each method. Reported:
the median step time of each, and each packed median over the fp16 median of the same method's run.

    python scripts/cpu_decode_step.py --model /tmp/smollm2_d --out results/cpu/decode_step_smollm2_2k.json

``--model``: a Hugging Face folder, or a ``.gguf`` file (dequantized once through transformers' GGUF
loader into ``--converted``, then loaded from there). RotateKV runs with ``calibration="identity"``
(the calibration changes the permutation, not the work per step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import oscar_core as oc  # noqa: E402
from oscar_eval.provenance import environment, sha256_files  # noqa: E402
from oscar_eval.speed.timing import host_call_us  # noqa: E402

METHODS = ["oscar", "kivi", "quarot", "ott", "rotatekv", "turboquant+", "turboquant"]
OVERRIDES = {"rotatekv": {"calibration": "identity"}}


def load_model(path: Path, converted: Path):
    from transformers import AutoModelForCausalLM

    if path.suffix == ".gguf":
        if not (converted / "config.json").exists():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            config = model.config
            if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained
                del config.quantization_config
            plain = type(model)(config)
            plain.load_state_dict(model.state_dict())
            plain.save_pretrained(converted)
        path = converted
    if not (path / "config.json").exists():
        raise SystemExit(f"--model {path}: not a Hugging Face folder (no config.json) nor a .gguf file")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def step(model, cache, token: torch.Tensor, length: int) -> tuple[float, torch.Tensor]:
    """One decode step: (seconds on the host clock, oscar_eval.speed.timing.host_call_us; next token)."""
    mask = torch.ones(1, length + 1, dtype=torch.long)
    us, out = host_call_us(lambda: model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True))
    return us * 1e-6, out.logits[:, -1:].argmax(-1)


def set_blockwise(cache, on: bool) -> None:
    for layer in cache.layers:
        if hasattr(layer, "blockwise_decode"):
            layer.blockwise_decode = on


def prefill(model, cache, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True)
    return out.logits[:, -1:].argmax(-1)


def provenance(args, model_path: Path) -> dict:
    """The one collector's environment (oscar_eval.provenance) plus this run's model and settings."""
    weights = sorted(model_path.glob("*.safetensors")) if model_path.is_dir() else [model_path]
    return {
        **environment(), "model": str(args.model), "weights_sha256": sha256_files(weights), "dtype": "float32",
        "context": args.context, "steps": args.steps, "seed": args.seed,
        "note": "2 CPU cores shared with other work: timings are noisy; medians of interleaved steps",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--converted", type=Path, default=Path("/tmp/smollm2_d"))
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.converted)
    model_path = args.converted if args.model.suffix == ".gguf" else args.model
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (1, args.context), generator=g)

    fp16 = oc.make_cache(model, "fp16")
    tok_ref = prefill(model, fp16, ids)
    rows = {}
    with torch.no_grad():
        for method in args.methods:
            cache = oc.make_cache(model, method, **OVERRIDES.get(method, {}))
            tok = prefill(model, cache, ids)
            times = {"fp16": [], "blockwise": [], "timeline": []}
            length, ref = args.context, tok_ref
            for _ in range(args.steps):
                dt, ref = step(model, fp16, ref, length)
                times["fp16"].append(dt)
                for path in ("blockwise", "timeline"):
                    set_blockwise(cache, path == "blockwise")
                    dt, tok = step(model, cache, tok, cache.get_seq_length())
                    times[path].append(dt)
                length += 1
            med = {k: statistics.median(v) for k, v in times.items()}
            rows[method] = {
                "median_s": med,
                "vs_fp16": {p: med[p] / med["fp16"] for p in ("blockwise", "timeline")},
                "steps_s": times,
            }
            print(f"{method:12s} fp16 {med['fp16'] * 1e3:7.1f} ms  blockwise {med['blockwise'] * 1e3:7.1f} ms "
                  f"({rows[method]['vs_fp16']['blockwise']:.2f}x)  timeline {med['timeline'] * 1e3:7.1f} ms "
                  f"({rows[method]['vs_fp16']['timeline']:.2f}x)", flush=True)
            fp16.crop(-args.steps)  # back to the prompt for the next method
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"provenance": provenance(args, model_path), "methods": rows}, indent=1))


if __name__ == "__main__":
    main()
