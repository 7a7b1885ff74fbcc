"""MMAU-Pro scoring: instruction-following (AIF) rule checks, the open-ended judge prompt and parser,
a closed-ended string-match fallback, and the Table 8 column arithmetic.

The rules follow the MMAU-Pro evaluation code (``evaluate_aif_sample`` and friends, as found in public
copies of it; the same rules as in NeMo-Skills' ``mmau_pro`` evaluator): one check per ``task_identifier``, parameters from
``kwargs`` (``N``, ``N1``/``N2``, ``keyword(s)``, ``forbidden_words``, ``postscript_marker``,
``section_splitter``, ``start_phrase``, ``end_phrase``). They resemble IFEval's but are not IFEval's
(e.g. postscripts are matched on letters only, keyword frequency is an exact count), so they are
implemented here rather than borrowed from lm-eval's ``ifeval`` classes.

Sentences are counted with NLTK's Punkt sentence tokenizer and its English model, as the script's
``nltk.sent_tokenize`` does (see :func:`punkt_english`).

The judge's output is parsed as the official ``extract_scores_from_evaluation`` does
(:func:`parse_judgement`, ``parser="official"``, the default); a lenient parser that also reads
bold, bracketed and dashed layouts is a labelled option (``parser="lenient"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from oscar_eval.scoring.sentences import punkt_english

# --------------------------------------------------------------------------------------------------
# Sentence splitting (offline)
# --------------------------------------------------------------------------------------------------

def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` as ``nltk.sent_tokenize(text)`` splits them (see :func:`punkt_english`)."""
    return punkt_english()[0](text)


# --------------------------------------------------------------------------------------------------
# AIF (audio instruction following) checks
# --------------------------------------------------------------------------------------------------


class UnknownInstruction(ValueError):
    """A ``task_identifier`` this scorer does not know: the item is recorded as failed."""


def count_words(text: str) -> int:
    return len(text.split())


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def count_paragraphs(text: str) -> int:
    return len([p for p in text.split("***") if p.strip()])


def count_bullets(text: str) -> int:
    return len(re.findall(r"(?:^|\n)\s*\*\s+", text))


def count_highlights(text: str) -> int:
    return len(re.findall(r"\*([^*]+)\*", text))


def count_placeholders(text: str) -> int:
    return len(re.findall(r"\[[^\]]+\]", text))


def count_capital_words(text: str) -> int:
    return sum(1 for w in text.split() if w.isupper())


def count_keyword(text: str, keyword: str) -> int:
    return len(re.findall(r"\b" + re.escape(keyword.lower()) + r"\b", text.lower()))


def _letters(text: str, keep_space: bool = False) -> str:
    return re.sub(r"[^a-zA-Z ]" if keep_space else r"[^a-zA-Z]", "", text).lower()


def _words_list(value: Any) -> list[str]:
    """``"a, b"`` (the data's form) or a list -> ``["a", "b"]``."""
    if value is None:
        return [""]
    if isinstance(value, str):
        return value.split(", ")
    return [str(v) for v in value]


def _n(kwargs: Mapping[str, Any], key: str, default: float) -> float:
    value = kwargs.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"kwargs[{key!r}] = {value!r} is not a number") from None


def _count_check(counter: Callable[[str], int], mode: str) -> Callable[[str, Mapping[str, Any], str], bool]:
    def check(response: str, kw: Mapping[str, Any], prompt: str) -> bool:
        n = counter(response)
        if mode == "at least":
            return n >= _n(kw, "N", 0)
        if mode == "at most":
            return n <= _n(kw, "N", 0)
        if mode == "exactly":
            return n == _n(kw, "N", 0)
        return _n(kw, "N1", 0) <= n <= _n(kw, "N2", 999)

    return check


def _sections(response: str, kw: Mapping[str, Any], prompt: str) -> bool:
    splitter = str(kw.get("section_splitter") or "")
    parts = re.split(rf"\s*{re.escape(splitter)}\s*", response.strip())
    return len([p for p in parts if p.strip()]) == _n(kw, "N", 0)


def _two_responses(response: str, kw: Mapping[str, Any], prompt: str) -> bool:
    parts = response.split("******")
    return len(parts) == 2 and parts[0].lower().strip() != parts[1].lower().strip()


def _quoted(response: str, kw: Mapping[str, Any], prompt: str) -> bool:
    s = response.strip()
    return s.startswith('"') and s.endswith('"')


AIF_CHECKS: dict[str, Callable[[str, Mapping[str, Any], str], bool]] = {
    "Include Keywords": lambda r, kw, p: all(k.lower() in r.lower() for k in _words_list(kw.get("keywords", ""))),
    "Keyword Frequency": lambda r, kw, p: count_keyword(r, str(kw.get("keyword") or "")) == _n(kw, "N", 0),
    "Forbidden Words": lambda r, kw, p: not any(
        w.lower() in r.lower() for w in _words_list(kw.get("forbidden_words", ""))),
    "Number Paragraphs": _count_check(count_paragraphs, "exactly"),
    "Number Words (at least)": _count_check(count_words, "at least"),
    "Number Words (at most)": _count_check(count_words, "at most"),
    "Number Words (range)": _count_check(count_words, "range"),
    "Number Sentences (at least)": _count_check(count_sentences, "at least"),
    "Number Sentences (at most)": _count_check(count_sentences, "at most"),
    "Number Sentences (range)": _count_check(count_sentences, "range"),
    "Postscript": lambda r, kw, p: _letters(str(kw.get("postscript_marker") or "")) in _letters(r),
    "Number Placeholder": _count_check(count_placeholders, "at least"),
    "Number Bullets": _count_check(count_bullets, "exactly"),
    "Title": lambda r, kw, p: bool(re.search(r"<<[^>]+>>", r)),
    "Minimum Number Highlighted Section": _count_check(count_highlights, "at least"),
    "Multiple Sections": _sections,
    "Repeat Prompt": lambda r, kw, p: r.strip().lower().startswith((p or "").strip().lower()),
    "Two Responses": _two_responses,
    "All Uppercase": lambda r, kw, p: r.isupper(),
    "All Lowercase": lambda r, kw, p: r.islower(),
    "All-capital Words (at least)": _count_check(count_capital_words, "at least"),
    "All-capital Words (at most)": _count_check(count_capital_words, "at most"),
    "All-capital Words (range)": _count_check(count_capital_words, "range"),
    "Start Checker": lambda r, kw, p: _letters(r, True).startswith(_letters(str(kw.get("start_phrase") or ""), True)),
    "End Checker": lambda r, kw, p: _letters(r, True).endswith(_letters(str(kw.get("end_phrase") or ""), True)),
    "Quotation": _quoted,
    "No Commas": lambda r, kw, p: "," not in r,
}


def normalize_kwargs(kwargs: Any) -> dict[str, Any]:
    """The data's ``kwargs``: a dict, a JSON string, or a parquet struct with nulls for absent keys."""
    import json

    if kwargs is None:
        return {}
    if isinstance(kwargs, str):
        kwargs = kwargs.strip()
        if not kwargs:
            return {}
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError:
            raise ValueError(f"kwargs is not valid JSON: {kwargs[:80]!r}") from None
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"kwargs must be a mapping, got {type(kwargs).__name__}")
    return {str(k): v for k, v in kwargs.items() if v is not None}


def check_instruction(response: str, task_identifier: str, kwargs: Any, prompt: str = "") -> bool:
    """Whether ``response`` satisfies the instruction ``task_identifier`` with ``kwargs``.

    ``prompt`` is the question (used by "Repeat Prompt", as the official script does). An unknown
    identifier raises :class:`UnknownInstruction` (the runner records the item as failed).
    """
    check = AIF_CHECKS.get((task_identifier or "").strip())
    if check is None:
        raise UnknownInstruction(f"unknown AIF task_identifier {task_identifier!r}")
    return bool(check(response or "", normalize_kwargs(kwargs), prompt))


# --------------------------------------------------------------------------------------------------
# Open-ended: judge prompt and parser
# --------------------------------------------------------------------------------------------------

JUDGE_SYSTEM = "You are a helpful and objective evaluator."
CRITERIA = ("correctness", "relevance", "completeness", "clarity")

# The MMAU-Pro evaluation script's prompt for open-ended items (task type "open").
JUDGE_TEMPLATE = """You are an expert evaluator for general open-ended question answering tasks. Please evaluate the quality of a model's response to a question.

Question: {question}

Reference Answer: {reference}

Model Response: {response}

Please evaluate the model response on the following criteria and provide scores from 1-5 (where 5 is best):

1. **Correctness**: How factually accurate is the response compared to the reference?
2. **Relevance**: How well does the response address the specific question asked?
3. **Completeness**: Does the response cover all important aspects mentioned in the reference?
4. **Clarity**: How clear and well-structured is the response?

For each criterion, provide:
- A score from 1-5
- A brief justification (1-2 sentences)

Format your response as:

CORRECTNESS: [score] - [justification]
RELEVANCE: [score] - [justification]{trailing_space}
COMPLETENESS: [score] - [justification]
CLARITY: [score] - [justification]
OVERALL: [average score] - [overall assessment]"""


def judge_prompt(question: str, reference: str, response: str) -> str:
    # The official text has a trailing space after the RELEVANCE line; kept (byte-identical prompt).
    return JUDGE_TEMPLATE.format(question=question, reference=reference, response=response, trailing_space=" ")


def judge_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def _lenient_pattern(name: str) -> re.Pattern:
    # "CORRECTNESS: 4", "**Correctness**: [4]", "Correctness - 4/5", "OVERALL: 3.75"
    return re.compile(rf"{name}\W{{0,6}}?\s*[:\-=]\s*[\*\[\(\s]*(\d+(?:\.\d+)?)", re.IGNORECASE)


# The official script's patterns: the upper-case name, a colon, then digits (integers for the criteria).
_OFFICIAL = {**{name: re.compile(rf"{name.upper()}:\s*(\d+)", re.IGNORECASE) for name in CRITERIA},
             "overall": re.compile(r"OVERALL:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)}
_LENIENT = {name: _lenient_pattern(name) for name in (*CRITERIA, "overall")}
JUDGE_PARSERS = ("official", "lenient")


def parse_judgement(text: str | None, parser: str = "official") -> dict[str, float]:
    """Scores from a judge's output: the four criteria and ``overall``.

    ``official`` (default) is the MMAU-Pro script's ``extract_scores_from_evaluation``: the first
    ``NAME: <digits>`` (case-insensitive) per criterion, taken as it is; a criterion not found counts
    3; a missing OVERALL, or one that is exactly 3.0, becomes the mean of the four criteria.
    ``lenient`` also reads ``**Name**: [4]`` or ``Name - 4/5`` and treats a value outside 1-5 as
    missing; its scores are not the official ones and are labelled so in the summary.
    """
    if parser not in JUDGE_PARSERS:
        raise ValueError(f"unknown judge parser {parser!r} (choose from {', '.join(JUDGE_PARSERS)})")
    text = text or ""
    scores: dict[str, float] = {}
    found: dict[str, bool] = {}
    for name in (*CRITERIA, "overall"):
        value = None
        if parser == "official":
            m = _OFFICIAL[name].search(text)
            value = float(m.group(1)) if m else None
        else:
            for m in _LENIENT[name].finditer(text):
                if 1.0 <= float(m.group(1)) <= 5.0:
                    value = float(m.group(1))
                    break
        found[name] = value is not None
        scores[name] = 3.0 if value is None else value
    if not found["overall"] or scores["overall"] == 3.0:
        scores["overall"] = sum(scores[c] for c in CRITERIA) / len(CRITERIA)
    scores["parsed"] = float(sum(found.values()))  # how many of the five were found (diagnostic)
    return scores


def open_ended_columns(overalls: Iterable[float]) -> dict[str, float | None]:
    """``Open-ended`` = 100 * mean(OVERALL) / 5; ``Good Rate`` = 100 * share with OVERALL >= 4."""
    vals = [float(v) for v in overalls]
    if not vals:
        return {"Open-ended": None, "Good Rate": None}
    return {"Open-ended": 100.0 * (sum(vals) / len(vals)) / 5.0,
            "Good Rate": 100.0 * sum(1 for v in vals if v >= 4.0 - 1e-9) / len(vals)}


def aif_column(successes: Iterable[float | bool]) -> float | None:
    """``AIF`` = 100 * success rate."""
    vals = [float(v) for v in successes]
    return 100.0 * sum(vals) / len(vals) if vals else None


# --------------------------------------------------------------------------------------------------
# Closed-ended (optional): string-match FALLBACK, not the official NV-Embed matcher
# --------------------------------------------------------------------------------------------------


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def closed_string_match(prediction: str, answer: str, choices: list[str]) -> bool:
    """Fallback closed-ended scorer (the MMAU string-match rule, plus a bare option letter).

    The official MMAU-Pro scorer maps a free-form answer to the nearest choice with the NV-Embed-v2
    embedding model; this fallback instead requires every answer token in the prediction and no token
    that only a wrong choice has. A bare letter ("B", "(B)", "B.") selects the letter's choice.
    """
    pred = (prediction or "").strip()
    letter = re.fullmatch(r"\(?([A-Za-z])[\).:]?", pred)
    if letter and choices:
        i = ord(letter.group(1).upper()) - ord("A")
        if 0 <= i < len(choices):
            return choices[i].strip().lower() == (answer or "").strip().lower()
    p, a = _tokens(pred), _tokens(answer or "")
    if not p:
        return False
    wrong: set[str] = set()
    for c in choices:
        ct = _tokens(c)
        if ct != a:
            wrong |= ct - a
    return a.issubset(p) and p.isdisjoint(wrong)


def finite_mean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None
