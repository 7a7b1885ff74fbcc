"""LongBench / LongBench-E metrics, following the official definitions.

The official scorer (THUDM/LongBench ``metrics.py`` + ``eval.py``) is the reference; the numbers in the
OScaR paper come from it. Every function here reproduces its arithmetic, including its quirks:

* ``qa_f1``: SQuAD-style normalisation (lower-case, drop ASCII punctuation, drop a/an/the, collapse
  whitespace), whitespace tokens, bag-of-tokens F1.
* ``rouge``: ROUGE-L F from the ``rouge`` package (pltrdy), the one the official code uses (summary-level
  union-LCS over sentences split on ``"."``, word sets as denominators); any error there (an empty
  hypothesis, or Python's recursion limit on sentences of ~1000+ words) scores 0, as officially.
* ``classification``: classes of ``all_classes`` found as substrings of the prediction; a match that is
  a proper substring of the answer is dropped (the official loop mutates the list while iterating; we
  reproduce its result exactly); score = 1/len(matches) when the answer is among them.
* ``count`` / ``retrieval``: share of the numbers in the prediction equal to the answer (retrieval: the
  paragraph id parsed from ``"Paragraph N"``).
* ``code_sim``: the first line (after leading newlines are stripped) containing none of ``` ` ```,
  ``#``, ``//``; then fuzzywuzzy's ``fuzz.ratio`` semantics: 100 when equal, 0 when either side is
  empty, else the rounded Levenshtein (InDel) ratio -- computed with ``rapidfuzz``.

The first-line rule (trec, triviaqa, samsum, lsht) is ``prediction.lstrip("\\n").split("\\n")[0]`` and
is applied by :func:`score` before the metric; the maximum over the reference answers is taken.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = [
    "BUCKETS",
    "FIRST_LINE_DATASETS",
    "METRICS",
    "aggregate",
    "bucket_of",
    "canonical",
    "classification_score",
    "code_sim_score",
    "count_score",
    "first_line",
    "normalize_answer",
    "qa_f1_score",
    "retrieval_score",
    "rouge_score",
    "score",
]

BUCKETS = ("0-4k", "4-8k", "8k+")
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DIGITS = re.compile(r"\d+")
_PARAGRAPH = re.compile(r"Paragraph (\d+)")


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, then articles, then collapse whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_: object) -> float:
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _number_share(prediction: str, target: str) -> float:
    numbers = _DIGITS.findall(prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == target) / len(numbers)


def count_score(prediction: str, ground_truth: str, **_: object) -> float:
    return _number_share(prediction, str(ground_truth))


def retrieval_score(prediction: str, ground_truth: str, **_: object) -> float:
    match = _PARAGRAPH.search(ground_truth)
    if match is None:  # the official code would raise here: the answer is malformed
        raise ValueError(f"retrieval answer {ground_truth!r} has no 'Paragraph N'")
    return _number_share(prediction, match.group(1))


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str] | None = None,
                         **_: object) -> float:
    if not all_classes:
        raise ValueError("classification needs all_classes")
    matches = [c for c in all_classes if c in prediction]
    # The official code removes items from the list it is iterating over, which skips the element
    # right after each removed one; replay that walk so the result is identical.
    i = 0
    while i < len(matches):
        term = matches[i]
        if term in ground_truth and term != ground_truth:
            del matches[i]
            i += 1  # the element that slid into position i is skipped, as in the original
        else:
            i += 1
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def rouge_score(prediction: str, ground_truth: str, **_: object) -> float:
    """ROUGE-L F from the ``rouge`` package, exactly as the official scorer calls it; errors score 0."""
    from rouge import Rouge

    try:
        return float(Rouge().get_scores([prediction], [ground_truth], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError):  # empty hypothesis/reference, or very long sentences
        return 0.0


def code_sim_score(prediction: str, ground_truth: str, **_: object) -> float:
    from rapidfuzz import fuzz

    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    if line == ground_truth:
        return 1.0
    if not line or not ground_truth:
        return 0.0
    return round(fuzz.ratio(line, ground_truth)) / 100


METRICS = {
    "qa_f1": qa_f1_score,
    "rouge": rouge_score,
    "classification": classification_score,
    "count": count_score,
    "retrieval": retrieval_score,
    "code_sim": code_sim_score,
}

DATASET_METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "hotpotqa": "qa_f1",
    "2wikimqa": "qa_f1", "musique": "qa_f1", "gov_report": "rouge", "qmsum": "rouge",
    "multi_news": "rouge", "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge",
    "passage_count": "count", "passage_retrieval_en": "retrieval", "lcc": "code_sim",
    "repobench-p": "code_sim",
}


def canonical(subset: str) -> str:
    """Dataset name without the LongBench-E suffix: ``qasper_e`` -> ``qasper``."""
    return subset[:-2] if subset.endswith("_e") else subset


def first_line(prediction: str) -> str:
    return prediction.lstrip("\n").split("\n")[0]


def score(subset: str, prediction: str, answers: Sequence[str] | str,
          all_classes: Sequence[str] | None = None) -> float:
    """Official per-item LongBench score in [0, 1]: first-line rule, metric, max over answers."""
    name = canonical(subset)
    if name not in DATASET_METRIC:
        raise ValueError(f"unknown LongBench subset {subset!r} (known: {', '.join(sorted(DATASET_METRIC))})")
    if isinstance(answers, str):
        answers = [answers]
    if name in FIRST_LINE_DATASETS:
        prediction = first_line(prediction)
    metric = METRICS[DATASET_METRIC[name]]
    best = 0.0
    for answer in answers:
        best = max(best, float(metric(prediction, answer, all_classes=all_classes)))
    return best


def bucket_of(length: int) -> str:
    """LongBench-E length bucket as the official eval.py assigns it (4000 -> 4-8k, 8000 -> 8k+)."""
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(rows: Iterable[tuple[str, int, float]]) -> dict:
    """Summarise (subset, length, score in [0,1]) rows the LongBench-E way, scores x100.

    Per subset: each bucket's mean (None when the bucket is empty), ``mean`` = mean of the non-empty
    buckets, ``n``. ``average`` = mean over subsets of their ``mean``. Nothing is rounded here.
    """
    per: dict[str, dict[str, list[float]]] = {}
    for subset, length, value in rows:
        per.setdefault(subset, {b: [] for b in BUCKETS})[bucket_of(int(length))].append(float(value))
    subsets: dict[str, dict] = {}
    for subset, buckets in per.items():
        entry: dict = {}
        for b in BUCKETS:
            m = _mean(buckets[b])
            entry[b] = None if m is None else 100.0 * m
        filled = [entry[b] for b in BUCKETS if entry[b] is not None]
        entry["mean"] = _mean(filled)
        entry["n"] = sum(len(v) for v in buckets.values())
        subsets[subset] = entry
    means = [e["mean"] for e in subsets.values() if e["mean"] is not None]
    average = _mean(means)
    return {"subsets": subsets, "average": average if average is None or math.isfinite(average) else None}
