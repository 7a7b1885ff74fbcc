"""Number formatting shared by the HTML and Markdown renderers (so both show the same digits)."""

from __future__ import annotations

MISSING = "—"


def value(v: float | None, decimals: int) -> str:
    return MISSING if v is None else f"{v:.{decimals}f}"


def diff(d: float | None, decimals: int) -> str:
    if d is None:
        return MISSING
    d = round(d, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0: no "-0.00"
    return f"{d:+.{decimals}f}"


def diff_class(d: float | None, decimals: int) -> str:
    if d is None or round(d, decimals) == 0:
        return "zero"
    return "pos" if d > 0 else "neg"
