"""Every method through ``make_cache`` inside ``model.generate`` on a real checkpoint (short name or folder).

    python scripts/real_model_generate_check.py --model gemma-3-270m --out results/real/gemma3_270m_generate.json

Greedy, a ~800-token prompt ending in a question, 10 new tokens; records each method's continuation,
whether it equals transformers' default cache, and the cache's per-layer policy. RotateKV runs with
``calibration="identity"`` (no calibration text needed; the permutation does not change what runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROMPT = ("The Python standard library offers modules for files, networking and text. " * 60
          + "Question: What is the capital of France? Answer:")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import torch
    from transformers import DynamicCache

    import oscar_core as oc
    from oscar_eval import provenance
    from oscar_eval.models import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    ids = tok(PROMPT, return_tensors="pt")

    def generate(cache):
        with torch.no_grad():
            out = model.generate(**ids, past_key_values=cache, max_new_tokens=10, do_sample=False)
        return out[0, ids.input_ids.shape[1]:]

    ref = generate(DynamicCache(config=model.config))
    result = {"model": args.model, "path": str(loaded.path), "source": provenance.model_source(loaded.path),
              "prompt_tokens": int(ids.input_ids.shape[1]),
              "default_cache": tok.decode(ref), "methods": {}}
    for name in oc.list_methods():
        start = time.time()
        cache = oc.make_cache(model, name, **({"calibration": "identity"} if name == "rotatekv" else {}))
        got = generate(cache)
        result["methods"][name] = {"text": tok.decode(got), "identical_to_default_cache": bool(torch.equal(got, ref)),
                                   "layer_policy": sorted(set(getattr(cache, "layer_policy", ["full_precision"]))),
                                   "seconds": round(time.time() - start, 1)}
        print(f"{name:<12} {result['methods'][name]['identical_to_default_cache']!s:<6} {tok.decode(got)!r}")
    result.update(env=provenance.environment(), date=provenance.now())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
