"""`oscar-eval list [methods|benchmarks|architectures]`: what this installation can run."""

from __future__ import annotations

import argparse

# Decoder families the cache backend targets (DESIGN.md); the check is the model's config class.
ARCHITECTURES = {
    "LlamaForCausalLM": "Llama-3.x (paper Table 1)",
    "Qwen3ForCausalLM": "Qwen3 (paper Table 1, NIAH)",
    "Qwen3VLForConditionalGeneration": "Qwen3-VL (OCRBench)",
    "LlavaNextForConditionalGeneration": "LLaVA-NeXT (OCRBench)",
    "Qwen3OmniMoeForConditionalGeneration": "Qwen3-Omni thinker (MMAU-Pro)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list methods, benchmarks and supported architectures")
    p.add_argument("what", nargs="?", choices=["methods", "benchmarks", "architectures", "all"], default="all")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("methods", "all"):
        print("methods:")
        try:
            import oscar_core as oc

            for name in oc.list_methods():
                spec = oc.get_method(name)
                desc = getattr(spec, "description", "") or ""
                print(f"  {name:<14} {desc}".rstrip())
        except ImportError as exc:
            print(f"  (oscar_core not importable: {exc})")
    if what in ("benchmarks", "all"):
        from oscar_eval.benchmarks import list_benchmarks

        print("benchmarks:")
        for name, (desc, status) in list_benchmarks().items():
            print(f"  {name:<14} {desc}" + ("" if status == "available" else f"  [{status}]"))
    if what in ("architectures", "all"):
        print("architectures:")
        for arch, desc in ARCHITECTURES.items():
            print(f"  {arch:<38} {desc}")
    return 0
