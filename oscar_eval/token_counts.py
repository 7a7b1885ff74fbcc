"""Token counts on the command line (``--contexts 4k,8k``): one meaning of ``k`` in every command.

``k`` is 1024 tokens, RULER's convention (its official 4k context is 4096 tokens) and the one of
`oscar-eval speed`; NIAH used 1000 before, so an old NIAH ``--contexts 1k`` run (1000 tokens) and a new
one (1024 tokens) have different context lengths, item ids and therefore run ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from oscar_eval.errors import UserError

K = 1024
_COUNT = re.compile(r"(\d+(?:\.\d+)?)(k?)")


def parse_token_count(text: str | int, option: str = "--contexts") -> int:
    """``"4k"`` -> 4096, ``"1.5k"`` -> 1536, ``"3000"`` -> 3000; a count that is not a positive whole
    number of tokens (``"0"``, ``"0.3k"``, ``"4x"``) is an error naming ``option``."""
    shown = str(text).strip()
    m = _COUNT.fullmatch(shown.lower())
    if not m:
        raise UserError(f"{option}: {shown!r} is not a token count (e.g. 4096 or 4k, where 1k = {K})")
    value = float(m.group(1)) * (K if m.group(2) else 1)
    if value != int(value):
        raise UserError(f"{option}: {shown!r} is {value:g} tokens, not a whole number (1k = {K})")
    if value < 1:
        raise UserError(f"{option}: {shown!r} must be positive")
    return int(value)


def parse_contexts(value: str | int | Sequence[str | int], option: str = "--contexts") -> list[int]:
    """``"1k, 2k,3000"`` or ``[1024, "2k"]`` -> ``[1024, 2048, 3000]``: in the given order, duplicates
    dropped (``"1k,1024"`` is one context)."""
    parts = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    out: list[int] = []
    for part in parts:
        if not str(part).strip():
            continue
        n = parse_token_count(part, option)
        if n not in out:
            out.append(n)
    if not out:
        raise UserError(f"{option}: no context length given")
    return out
