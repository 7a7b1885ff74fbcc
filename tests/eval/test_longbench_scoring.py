"""The official LongBench metrics on hand-made cases, plus first-line rule, buckets and averages."""

from __future__ import annotations

import math

import pytest

from oscar_eval.scoring import longbench as lb


def approx(x: float):
    return pytest.approx(x, abs=1e-6)


# -- qa_f1 ------------------------------------------------------------------------------------
def test_qa_f1_normalises_case_punctuation_articles():
    # "The cat sat." -> "cat sat"; "a cat sat on the mat" -> "cat sat on mat": P=1, R=1/2.
    assert lb.qa_f1_score("The cat sat.", "a cat sat on the mat") == approx(2 / 3)
    assert lb.qa_f1_score("PARIS!", "paris") == 1.0
    assert lb.qa_f1_score("London", "Paris") == 0.0
    assert lb.qa_f1_score("", "Paris") == 0.0
    # repeated tokens count as a multiset: pred "a b b" vs "b b c" -> 2 common / 3 / 3 (a is an article)
    assert lb.qa_f1_score("x b b", "b b c") == approx(2 / 3)


def test_score_takes_max_over_answers():
    assert lb.score("qasper_e", "BiLSTM baseline", ["a transformer", "BiLSTM baseline"]) == 1.0
    assert lb.score("hotpotqa", "Henry Ford", "Henry Ford") == 1.0


# -- rouge-L (official `rouge` package semantics) ----------------------------------------------
def test_rouge_identical_and_disjoint():
    assert lb.rouge_score("the cat sat on the mat", "the cat sat on the mat") == approx(1.0)
    assert lb.rouge_score("dogs bark", "cats meow") == 0.0


def test_rouge_uses_word_sets_and_lcs():
    # one sentence each; LCS(a c d, a b c) = a c; |set(ref)| = |set(hyp)| = 3 -> P = R = 2/3
    assert lb.rouge_score("a b c", "a c d") == approx(2 / 3)
    # duplicates count once in the denominators (exclusive=True): ref {a}, hyp {a}
    assert lb.rouge_score("a a a", "a") == approx(1.0)


def test_rouge_summary_level_union_over_sentences():
    # ref one sentence "w1 w2 w3 w4 w5"; hyp sentences "w1 w2 w6" and "w1 w3 w5":
    # union LCS = {w1, w2, w3, w5} = 4; R = 4/5, P = 4/|{w1,w2,w6,w3,w5}| = 4/5
    assert lb.rouge_score("w1 w2 w6. w1 w3 w5", "w1 w2 w3 w4 w5") == approx(0.8)


def test_rouge_empty_hypothesis_scores_zero():
    assert lb.rouge_score("", "a reference") == 0.0
    assert lb.rouge_score("...", "a reference") == 0.0


# -- classification ----------------------------------------------------------------------------
CLASSES = ["Individual", "City", "Date", "Other location", "location"]


def test_classification_basic():
    assert lb.classification_score("City", "City", all_classes=CLASSES) == 1.0
    assert lb.classification_score("City or Date", "City", all_classes=CLASSES) == 0.5
    assert lb.classification_score("Mountain", "City", all_classes=CLASSES) == 0.0


def test_classification_drops_matches_that_are_part_of_the_answer():
    # "location" is inside the answer "Other location" and is dropped -> only the answer remains
    assert lb.classification_score("Other location", "Other location", all_classes=CLASSES) == 1.0


def test_classification_reproduces_official_list_mutation_quirk():
    # The official loop removes while iterating, so the element after a removed one is not checked:
    # ["loc", "location", "Other location"] -> "loc" removed, "location" skipped -> 2 matches -> 1/2.
    classes = ["loc", "location", "Other location"]
    assert lb.classification_score("Other location", "Other location", all_classes=classes) == 0.5


def test_classification_needs_classes():
    with pytest.raises(ValueError):
        lb.classification_score("City", "City", all_classes=None)


# -- count / retrieval -------------------------------------------------------------------------
def test_count_and_retrieval_share_of_numbers():
    assert lb.count_score("There are 3 unique paragraphs, not 4", "3") == 0.5
    assert lb.count_score("3", "3") == 1.0
    assert lb.count_score("no idea", "3") == 0.0
    assert lb.count_score("13", "3") == 0.0  # whole numbers, not digits
    assert lb.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert lb.retrieval_score("Paragraph 1 or Paragraph 12", "Paragraph 12") == 0.5
    assert lb.retrieval_score("none", "Paragraph 12") == 0.0


# -- code edit similarity ----------------------------------------------------------------------
@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    # the first line that is not a comment is compared
    pytest.param("\n# explain\n    return x\n", "    return x", 1.0, id="hash-comment-skipped"),
    pytest.param("```python\nfoo()\n```", "foo()", 1.0, id="code-fence-skipped"),
    pytest.param("// c-style\nint x;", "int x;", 1.0, id="slash-comment-skipped"),
    # fuzz ratio rounded to a percent: InDel distance 2 over 8 characters -> 75
    pytest.param("abcd", "abce", 0.75, id="ratio-75"),
    # 100 * (1 - 1/7) = 85.71 -> 86 (fuzzywuzzy rounds to an integer percentage)
    pytest.param("abcd", "abc", 0.86, id="ratio-rounded"),
    pytest.param("", "foo()", 0.0, id="empty-prediction"),
    pytest.param("# only a comment", "foo()", 0.0, id="only-a-comment"),
    # Official rule: a blank line after a comment *is* the chosen line (lm-eval skips blank lines).
    pytest.param("x = 1  # c\n\nfoo()", "foo()", 0.0, id="blank-line-after-comment"),
])
def test_code_sim(prediction, reference, expected):
    assert lb.code_sim_score(prediction, reference) == expected


# -- first-line rule ---------------------------------------------------------------------------
def test_first_line_rule_applies_to_trec_triviaqa_samsum_only():
    pred = "\n\nAnna is late.\nBen: fine, see you"
    assert lb.first_line(pred) == "Anna is late."
    assert lb.score("samsum_e", pred, ["Anna is late."]) == approx(1.0)
    assert lb.score("triviaqa_e", "\nParis\nQuestion: next", ["Paris"]) == 1.0
    assert lb.score("trec", "City\nDate", ["City"], all_classes=["City", "Date"]) == 1.0
    # no first-line rule for qa tasks: the second line still counts against precision
    assert lb.score("hotpotqa_e", "Paris\nLondon", ["Paris"]) == approx(2 / 3)


def test_score_accepts_names_with_or_without_suffix_and_rejects_unknown():
    assert lb.score("passage_count_e", "2", ["2"]) == lb.score("passage_count", "2", ["2"]) == 1.0
    assert lb.score("repobench-p_e", "foo()", ["foo()"]) == 1.0
    with pytest.raises(ValueError, match="nope"):
        lb.score("nope", "x", ["x"])


def test_every_subset_scores_within_unit_interval():
    for subset in ["qasper_e", "multifieldqa_en_e", "hotpotqa_e", "2wikimqa_e", "gov_report_e",
                   "multi_news_e", "trec_e", "triviaqa_e", "samsum_e", "passage_count_e",
                   "passage_retrieval_en_e", "lcc_e", "repobench-p_e"]:
        answers = ["Paragraph 3"] if "retrieval" in subset else ["City"]
        value = lb.score(subset, "City. Paragraph 3 City", answers, all_classes=["City", "Date"])
        assert 0.0 <= value <= 1.0 and math.isfinite(value)


# -- buckets and averages ----------------------------------------------------------------------
def test_bucket_edges_follow_official_eval():
    assert lb.bucket_of(0) == "0-4k"
    assert lb.bucket_of(3999) == "0-4k"
    assert lb.bucket_of(4000) == "4-8k"
    assert lb.bucket_of(7999) == "4-8k"
    assert lb.bucket_of(8000) == "8k+"
    assert lb.bucket_of(20000) == "8k+"


def test_aggregate_bucket_means_dataset_mean_and_average():
    rows = [
        ("qasper_e", 100, 1.0), ("qasper_e", 3999, 0.0),      # 0-4k: 50
        ("qasper_e", 4000, 0.5),                               # 4-8k: 50
        ("qasper_e", 9000, 0.2), ("qasper_e", 8000, 0.4),      # 8k+: 30
        ("trec_e", 10, 1.0),                                   # only 0-4k: 100
    ]
    out = lb.aggregate(rows)
    q = out["subsets"]["qasper_e"]
    assert q["0-4k"] == approx(50.0) and q["4-8k"] == approx(50.0) and q["8k+"] == approx(30.0)
    assert q["mean"] == approx((50 + 50 + 30) / 3) and q["n"] == 5
    t = out["subsets"]["trec_e"]
    assert t["4-8k"] is None and t["8k+"] is None and t["mean"] == approx(100.0)
    # average = mean over datasets of each dataset's bucket mean (not over items)
    assert out["average"] == approx(((50 + 50 + 30) / 3 + 100) / 2)


def test_aggregate_empty():
    assert lb.aggregate([]) == {"subsets": {}, "average": None}
