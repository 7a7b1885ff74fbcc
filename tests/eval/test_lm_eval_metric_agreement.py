"""Our LongBench metrics agree with lm-eval's LongBench metric functions (THUDM's, via `rouge` and
`fuzzywuzzy`) on the same predictions. Skipped when lm-eval's longbench extras are not installed."""

from __future__ import annotations

import random

import pytest

from oscar_eval.scoring import longbench as lb

pytest.importorskip("jieba")
pytest.importorskip("rouge")
pytest.importorskip("fuzzywuzzy")
pytest.importorskip("Levenshtein")  # fuzzywuzzy's exact (non-difflib) ratio, as official runs use
ref = pytest.importorskip("lm_eval.tasks.longbench.metrics")

WORDS = ["the", "a", "cat", "Cat", "sat", "on", "mat", "dog", "ran", "far", "away", "it", "is", "3", "12",
         "Paragraph", "City", "Date", ",", "!", "?", "'s", "  ", "\n", ".", "...", "An", "apple"]


def _text(rng: random.Random, lo: int = 0, hi: int = 30) -> str:
    n = rng.randint(lo, hi)
    out = []
    for _ in range(n):
        w = rng.choice(WORDS)
        out.append(w + rng.choice(["", " ", " ", ". ", ".", "  "]))
    return "".join(out)


def _pairs(seed: int, n: int, lo: int = 0, hi: int = 30) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(_text(rng, lo, hi), _text(rng, 1, hi)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_qa_f1_agrees(seed):
    for pred, gold in _pairs(seed, 300):
        assert lb.qa_f1_score(pred, gold) == pytest.approx(ref.qa_f1_score(pred, gold), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_rouge_agrees_with_rouge_package(seed):
    for pred, gold in _pairs(100 + seed, 300):
        assert lb.rouge_score(pred, gold) == pytest.approx(ref.rouge_score(pred, gold), abs=1e-12), (pred, gold)


def test_rouge_agrees_on_summaries():
    pred = ("The report finds that the agency lacks a plan. It recommends a new plan.\n"
            "The agency agreed. GAO reviewed documents and interviewed officials.")
    gold = ("GAO found that the agency does not have a plan. GAO recommends that the agency develop a plan. "
            "The agency concurred with the recommendation.")
    assert lb.rouge_score(pred, gold) == pytest.approx(ref.rouge_score(pred, gold), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_count_and_retrieval_agree(seed):
    rng = random.Random(200 + seed)
    for _ in range(300):
        pred = _text(rng)
        k = str(rng.choice([3, 12, 1]))
        assert lb.count_score(pred, k) == ref.count_score(pred, k)
        assert lb.retrieval_score(pred, f"Paragraph {k}") == ref.retrieval_score(pred, f"Paragraph {k}")


def test_classification_agrees():
    classes = ["Individual", "City", "Date", "Other location", "location", "loc", "Number", "Other number"]
    rng = random.Random(7)
    for _ in range(500):
        pred = " ".join(rng.choice(classes + ["x", "the"]) for _ in range(rng.randint(0, 4)))
        gold = rng.choice(classes)
        assert lb.classification_score(pred, gold, all_classes=classes) == \
            ref.classification_score(pred, gold, all_classes=classes), (pred, gold)


def test_code_sim_agrees_without_blank_lines():
    # lm-eval skips blank lines when looking for the first code line; THUDM (and we) do not. On
    # predictions without blank or whitespace-only lines the two definitions coincide.
    rng = random.Random(11)
    lines = ["    return x", "foo(bar)", "# note", "// c", "```python", "x = y + 1", "int x = 0;", "abc"]
    for _ in range(400):
        pred = "\n".join(rng.choice(lines) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3:
            pred = "\n" + pred
        gold = rng.choice(lines)
        assert lb.code_sim_score(pred, gold) == ref.code_sim_score(pred, gold), (pred, gold)


def test_code_sim_blank_line_is_the_known_difference():
    pred = "x = 1  # c\n\nfoo()"
    assert lb.code_sim_score(pred, "foo()") == 0.0       # THUDM: the blank line is the first code line
    assert ref.code_sim_score(pred, "foo()") == 1.0      # lm-eval: blank lines skipped


def test_per_item_wrappers_agree_with_lm_eval_process_results():
    # lm-eval's process_results take max over doc["answers"] after .strip(), as our score() does.
    doc = {"answers": ["Paris", "paris france"], "all_classes": ["City", "Date"]}
    for pred in ["Paris", " the paris ", "Lyon", "paris, France!"]:
        assert lb.score("hotpotqa_e", pred, doc["answers"]) == pytest.approx(
            ref.get_qa_f1_score(doc, [pred])["qa_f1_score"])
    doc = {"answers": ["City"], "all_classes": ["City", "Date"]}
    for pred in ["City", "Date or City", "nothing"]:
        assert lb.score("trec_e", pred, doc["answers"], doc["all_classes"]) == \
            ref.get_classification_score(doc, [pred])["classification_score"]


# Unicode punctuation and letters: the official normaliser drops only ASCII punctuation
# (string.punctuation), so "“Paris”" keeps its curly quotes and never equals "Paris".
UNICODE_WORDS = ["“Paris”", "Paris", "«Rome»", "Rome", "café", "naïve", "—", "–", "…", "¿Qué?", "，", "。",
                 "’s", "it’s", "it's", "Straße", "ÉCOLE", "école", "½", "①"]


def _unicode_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return "".join(rng.choice(UNICODE_WORDS + WORDS) + rng.choice(["", " ", ". "])
                       for _ in range(rng.randint(lo, hi)))

    return [(text(0, 20), text(1, 20)) for _ in range(n)]


def test_unicode_punctuation_is_kept_as_the_official_normaliser_keeps_it():
    assert lb.normalize_answer("“Paris”") == ref.normalize_answer("“Paris”") == "“paris”"
    assert lb.qa_f1_score("“Paris”", "Paris") == ref.qa_f1_score("“Paris”", "Paris") == 0.0
    for pred, gold in _unicode_pairs(7, 400):
        assert lb.normalize_answer(pred) == ref.normalize_answer(pred), pred
        assert lb.qa_f1_score(pred, gold) == pytest.approx(ref.qa_f1_score(pred, gold), abs=1e-12), (pred, gold)
        assert lb.rouge_score(pred, gold) == pytest.approx(ref.rouge_score(pred, gold), abs=1e-12), (pred, gold)
