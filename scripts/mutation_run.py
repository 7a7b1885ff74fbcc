"""Mutation run: apply plausible bugs one at a time to a clean copy of the tree and ask the test suite.

Each mutation replaces one exact snippet in one file (it must occur exactly once) and runs the test
paths named with it; the mutation is *caught* when pytest fails. The copy is made fresh for every
mutation from the working tree (tracked and untracked files, not ignored ones), so mutations never
touch the checkout.

    python scripts/mutation_run.py --out results/mutation/run.json          # all
    python scripts/mutation_run.py --only flush-newest,unpack-order         # some

Exit status 0 when every mutation was caught.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    why: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("flush-newest", "block flush quantizes the newest R window tokens instead of the oldest",
             "oscar_core/cache/layer.py", "chunk = s.buf[rows_t, :, : s.unit]", "chunk = s.buf[rows_t, :, -s.unit :]",
             ("tests/cache/test_flush_timing.py",)),
    Mutation("flush-early", "a block is flushed one step early (window limit R - 1)",
             "oscar_core/cache/policy.py", "if (unit == 1 and window > 0) else window\n",
             "if (unit == 1 and window > 0) else window - 1\n", ("tests/cache/test_flush_timing.py",)),
    Mutation("kivi-window-r", "KIVI's value window attends R values (official: R + 1)",
             "oscar_core/cache/policy.py", "return window + 1 if", "return window if",
             ("tests/cache/test_flush_timing.py",)),
    Mutation("unpack-order-cache", "the decode path unpacks the 2-bit codes of a byte in reverse order",
             "oscar_core/cache/blockwise.py", "torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)",
             "torch.arange(8 - bits, -1, -bits, dtype=torch.uint8, device=packed.device)",
             ("tests/cache/test_blockwise_decode.py",)),
    Mutation("unpack-order-quant", "the quantizer unpacks the codes of a byte in reverse order",
             "oscar_core/quant.py", "    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)\n"
             "    mask = (1 << bits) - 1",
             "    shifts = torch.arange(8 - bits, -1, -bits, dtype=torch.uint8, device=packed.device)\n"
             "    mask = (1 << bits) - 1", ("tests/core/test_core_quant.py",)),
    Mutation("softmax-scale-2pct", "the decode path's softmax scale is 2% off",
             "oscar_core/cache/blockwise.py", "scores = scores * (scaling if scaling is not None else dim**-0.5)",
             "scores = scores * 1.02 * (scaling if scaling is not None else dim**-0.5)",
             ("tests/cache/test_blockwise_decode.py",)),
    Mutation("decode-drops-norm", "the decode path drops OScaR's token norm",
             "oscar_core/cache/blockwise.py", 'sc = sc * block["norm"].float().reshape(batch, 1, 1, -1)', "sc = sc",
             ("tests/cache/test_blockwise_decode.py",)),
    Mutation("method-drops-norm", "OScaR's key decode drops the token norm",
             "oscar_core/methods/oscar.py", 'k = _saturating_mul(k, block["norm"][:, None, :, None])', "k = k",
             ("tests/core", "tests/methods")),
    Mutation("padding-in-groups", "left padding is ignored when the prompt is quantized (pads enter groups)",
             "oscar_core/cache/layer.py", "self.pad = list(pad)", "self.pad = [0] * len(pad)",
             ("tests/cache/test_cache_generate.py", "tests/cache/test_flush_timing.py")),
    Mutation("unicode-punctuation", "the LongBench normaliser also strips Unicode punctuation",
             "oscar_eval/scoring/longbench.py", 'text = "".join(ch for ch in text.lower() if ch not in _PUNCT)',
             'import unicodedata\n    text = "".join(ch for ch in text.lower() if ch not in _PUNCT and '
             'not unicodedata.category(ch).startswith("P"))',
             ("tests/eval/test_lm_eval_metric_agreement.py", "tests/eval/test_longbench_scoring.py")),
    Mutation("judge-parser-lenient", "MMAU-Pro's judge output is parsed leniently by default",
             "oscar_eval/scoring/mmau_pro.py", 'def parse_judgement(text: str | None, parser: str = "official")',
             'def parse_judgement(text: str | None, parser: str = "lenient")', ("tests/eval/test_mmau_pro.py",)),
    Mutation("rope-one-type", "RotateKV undoes the full-attention RoPE on every layer of a hybrid model",
             "oscar_core/methods/rotatekv.py", 'prefix = f"{layer_types[i]}_" if per_type else ""',
             'prefix = "full_attention_" if per_type else ""', ("tests/cache/test_hybrid.py",)),
    Mutation("kivi-fp32-scale", "KIVI's fp16 option computes the scale in fp32 (as the default does)",
             "oscar_core/quant.py", "s16 = ((mx16 - mn16).float() / float(qmax)).half()",
             "s16 = ((mx16.float() - mn16.float()) / float(qmax)).half()", ("tests/core/test_core_quant.py",)),
    Mutation("failed-counts-done", "--resume counts failed items as done (never retried)",
             "oscar_eval/store/results.py", 'if r.get("status") == "ok"}', 'if r.get("status") in ("ok", "failed")}',
             ("tests/eval/test_run_identity.py", "tests/eval/test_results_store.py")),
]


def copy_tree(dest: Path) -> None:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_one(m: Mutation, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="oscar-mut-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        target = tree / m.path
        text = target.read_text(encoding="utf-8")
        if text.count(m.old) != 1:
            return {"name": m.name, "verdict": "not applied", "detail": f"snippet occurs {text.count(m.old)}x"}
        target.write_text(text.replace(m.old, m.new), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(tree), "OSCAR_EVAL_TASKS": str(tree / "tasks")}
        start = time.time()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                                  cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
            caught = proc.returncode != 0
            tail = (proc.stdout.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            caught, tail = False, f"timed out after {timeout} s"
        return {"name": m.name, "why": m.why, "file": m.path, "tests": list(m.tests),
                "verdict": "caught" if caught else "SURVIVED", "pytest": tail, "seconds": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated mutation names")
    p.add_argument("--timeout", type=int, default=900, help="seconds per mutation (default 900)")
    p.add_argument("--out", type=Path, help="write the verdicts here as JSON")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    results = []
    for m in chosen:
        r = run_one(m, args.timeout)
        results.append(r)
        print(f"{r['verdict']:<12} {m.name:<22} {r.get('pytest', r.get('detail', ''))}", flush=True)
    if args.out:
        from oscar_eval import provenance

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"mutations": results, "env": provenance.environment(),
                                        "date": provenance.now()}, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["verdict"] == "caught" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
