"""The `oscar-eval` command: a thin layer over the Python API.

Each sub-command lives in its own module under :mod:`oscar_eval.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from oscar_eval.errors import UserError  # noqa: F401 - re-exported: `from oscar_eval.cli import UserError`

# Order here is the order shown by `oscar-eval --help`.
COMMAND_MODULES = ["run", "merge", "list", "speed", "report", "tni", "calibrate"]




def build_parser() -> argparse.ArgumentParser:
    from oscar_eval import __version__

    parser = argparse.ArgumentParser(
        prog="oscar-eval",
        description="Evaluate extreme KV-cache quantization (OScaR and baselines): accuracy, speed, memory, reports.",
    )
    parser.add_argument("--version", action="version", version=f"oscar-eval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"oscar_eval.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"oscar_eval.commands.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"oscar-eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oscar-eval: interrupted (results written so far are kept; rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run through the package module so that UserError is the class the commands raise.
    from oscar_eval.cli import main as _main

    sys.exit(_main())
