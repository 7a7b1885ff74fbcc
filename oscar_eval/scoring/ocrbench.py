"""OCRBench scoring, as VLMEvalKit's ``OCRBench.evaluate`` (and the OCRBench authors' script) do it.

Per item (1 point at most; any reference answer counts):

- category "Handwritten Mathematical Expression Recognition": reference and prediction are stripped,
  newlines become spaces, then *all* spaces are removed; case is kept; the reference must be a substring
  of the prediction;
- every other category: lower-cased, stripped, newlines to spaces; substring test.

The ten categories roll up into the five groups of the paper's Table 6 (Text Recognition is the sum of
the six recognition categories, 50 items each); Total is the sum of the groups, out of 1000. A reference
that normalises to the empty string matches any prediction (as upstream: ``"" in s`` is true).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

HME = "Handwritten Mathematical Expression Recognition"

#: category -> group, in the order of the paper's table; group sizes of the full benchmark.
CATEGORY_GROUP: dict[str, str] = {
    "Regular Text Recognition": "Text Recognition",
    "Irregular Text Recognition": "Text Recognition",
    "Artistic Text Recognition": "Text Recognition",
    "Handwriting Recognition": "Text Recognition",
    "Digit String Recognition": "Text Recognition",
    "Non-Semantic Text Recognition": "Text Recognition",
    "Scene Text-centric VQA": "Scene Text-centric VQA",
    "Doc-oriented VQA": "Doc-oriented VQA",
    "Key Information Extraction": "Key Information Extraction",
    HME: HME,
}
CATEGORIES: list[str] = list(CATEGORY_GROUP)
GROUPS: list[str] = list(dict.fromkeys(CATEGORY_GROUP.values()))
GROUP_SIZE: dict[str, int] = {
    "Text Recognition": 300, "Scene Text-centric VQA": 200, "Doc-oriented VQA": 200,
    "Key Information Extraction": 200, HME: 100,
}
TOTAL = "Total"
FULL_SIZE = sum(GROUP_SIZE.values())  # 1000


def _norm_hme(s: str) -> str:
    return s.strip().replace("\n", " ").replace(" ", "")


def _norm_other(s: str) -> str:
    return s.lower().strip().replace("\n", " ")


def score(category: str, prediction: str, references: Sequence[str]) -> float:
    """1.0 if any reference, normalised for ``category``, is a substring of the normalised prediction."""
    norm = _norm_hme if category == HME else _norm_other
    pred = norm(str(prediction))
    return 1.0 if any(norm(str(ref)) in pred for ref in references) else 0.0


def aggregate(scored: Iterable[tuple[str, float]]) -> dict:
    """``(category, score)`` pairs -> points per category, per group and in total (unscaled points).

    Returns ``{"columns": {group: points, ..., "Total": points}, "groups": {group: {"score", "n",
    "expected"}}, "categories": {category: {"score", "n"}}}``; ``n`` counts scored items.
    """
    cats = {c: {"score": 0.0, "n": 0} for c in CATEGORIES}
    for category, value in scored:
        entry = cats.setdefault(category, {"score": 0.0, "n": 0})
        entry["score"] += float(value)
        entry["n"] += 1
    groups = {g: {"score": 0.0, "n": 0, "expected": GROUP_SIZE[g]} for g in GROUPS}
    for category, entry in cats.items():
        group = CATEGORY_GROUP.get(category)
        if group is None:  # an unknown category counts towards Total only (reported under categories)
            continue
        groups[group]["score"] += entry["score"]
        groups[group]["n"] += entry["n"]
    columns = {g: groups[g]["score"] for g in GROUPS}
    columns[TOTAL] = sum(e["score"] for e in cats.values())
    return {"columns": columns, "groups": groups,
            "categories": {c: e for c, e in cats.items() if e["n"] or c in CATEGORY_GROUP}}
