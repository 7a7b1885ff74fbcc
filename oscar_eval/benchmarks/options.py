"""How a benchmark declares its own options: ``oscar-eval run`` turns them into flags and passes them through.

A benchmark class lists them in its ``options`` attribute; each is a keyword of its constructor. The
command line builds ``--name`` (``_`` spelled ``-``) from the declaration and hands the values the user
gave, by name, to :func:`oscar_eval.api.run_benchmark` (``benchmark_options``). Two benchmarks may
declare the same name (``--contexts`` for NIAH and RULER); they must then agree on how it is parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One benchmark option.

    Args:
        name: the constructor keyword; on the command line ``--name`` with ``-`` for ``_``.
        help: what it does, for ``--help`` and ``oscar-eval list`` (without the default).
        default: what applies when it is not given, as said to the user. Only given values are passed:
            the benchmark applies its own default (task config, smoke configuration).
        type: converts one command-line value (``int``: ``--depths 5`` arrives as 5).
        metavar: the value's name in ``--help``.
        nargs: ``"+"`` for one or more values (they arrive as a list).
        in_results: when not given, the API passes this folder of the run's results store instead (a
            cache that belongs with the results, e.g. MMAU-Pro's judge outputs).
    """

    name: str
    help: str
    default: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    nargs: str | None = None
    in_results: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"benchmark option name {self.name!r} is not a Python keyword name")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def text(self) -> str:
        """The help with its default: ``N needle depths ... (default: 15)``."""
        return f"{self.help} (default: {self.default})"

    def parsing(self) -> tuple:
        """What must agree between two benchmarks that declare the same flag."""
        return self.type, self.metavar, self.nargs
