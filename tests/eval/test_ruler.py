"""RULER: every task against hand-checked examples of NVIDIA/RULER @ c3f5e3b (templates, needles, answers,
answer prefixes, generation lengths, metrics), the scorer, length fitting in the model's tokens,
determinism, the smoke run through the CLI, and one-line errors."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from oscar_eval.benchmarks import ruler_tasks as rt
from oscar_eval.benchmarks.ruler import SMOKE_DATA, Ruler, load_config, parse_contexts
from oscar_eval.cli import UserError, main
from oscar_eval.scoring.ruler import postprocess, string_match_all, string_match_part, summarize_records

CFG = load_config()
FAM = CFG["families"]
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
WORD_KEY = re.compile(r"[A-Za-z'.]+(?:[ -][A-Za-z'.]+)*-[A-Za-z'.]+")


@pytest.fixture(scope="module")
def tok():
    from oscar_eval.smoke import build_tokenizer

    return build_tokenizer()  # one token per byte (+ BOS): token counts are checkable by hand


def _bench(tok, contexts=(3584,), tasks=None, haystack="haystack.txt", num_samples=3, **kw) -> Ruler:
    b = Ruler(data_dir=SMOKE_DATA, contexts=list(contexts), tasks=tasks, haystack=haystack,
              num_samples=num_samples, **kw)
    b.use_tokenizer("smoke-tokenizer", max_input_len=8192, tokenizer=tok)
    return b


def _item(b: Ruler, task: str, context: int = 3584, index: int = 0):
    return [it for it in b.items(f"{task}/{context}", index + 1)][index]


def _args(task: str) -> dict:
    return CFG["tasks"][task]["args"]


# -- the official facts in tasks/ruler.yaml --------------------------------------------------------------
def test_config_is_the_official_one():
    assert CFG["source"]["commit"] == "c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a"
    gen = {f: FAM[f]["tokens_to_generate"] for f in FAM}
    assert gen == {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
                   "freq_words_extraction": 50, "qa": 32}
    assert {f: FAM[f]["metric"] for f in FAM} == {
        "niah": "string_match_all", "variable_tracking": "string_match_all",
        "common_words_extraction": "string_match_all", "freq_words_extraction": "string_match_all",
        "qa": "string_match_part"}
    assert list(CFG["tasks"]) == ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
                                  "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery",
                                  "vt", "cwe", "fwe", "qa_1", "qa_2"]
    shape = {t: (a.get("type_haystack"), a.get("type_needle_k"), a.get("type_needle_v"), a.get("num_needle_k"),
                 a.get("num_needle_v"), a.get("num_needle_q")) for t, a in ((t, _args(t)) for t in CFG["tasks"])
             if CFG["tasks"][t]["family"] == "niah"}
    assert shape == {
        "niah_single_1": ("noise", "words", "numbers", 1, 1, 1), "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
        "niah_single_3": ("essay", "words", "uuids", 1, 1, 1), "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
        "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
        "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
        "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
        "niah_multiquery": ("essay", "words", "numbers", 1, 1, 4)}
    assert _args("vt") == {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}
    assert _args("cwe") == {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10, "num_fewshot": 1}
    assert _args("fwe")["alpha"] == 2.0 and CFG["noise"] == NOISE
    assert rt.DEPTHS[:4] == [0, 3, 5, 8] and rt.DEPTHS[-1] == 100 and len(set(rt.DEPTHS)) == 40
    import numpy as np

    assert rt.DEPTHS == [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True))]


def test_contexts_are_powers_of_two():
    assert parse_contexts("4k,8k") == [4096, 8192] and parse_contexts("2k, 3000,2048") == [2048, 3000]
    for bad in ("4.3k", "x", "", "0"):  # 4.3k = 4403.2 tokens
        with pytest.raises(UserError):
            parse_contexts(bad)


# -- niah, one test per task -----------------------------------------------------------------------
SINGLE_HEAD = ("A special magic number is hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the number afterwards.\n")


def _single_tail(key: str, kind: str = "number") -> tuple[str, str]:
    return (f"\nWhat is the special magic {kind} for {key} mentioned in the provided text?",
            f" The special magic {kind} for {key} mentioned in the provided text is")


def test_niah_single_1_noise_haystack(tok):
    b = _bench(tok)
    it = _item(b, "niah_single_1")
    assert it.max_new_tokens == 128 and it.extra["metric"] == "string_match_all"
    needle = NEEDLE.search(it.prompt)
    kind, key, value = needle.groups()
    assert kind == "numbers" and re.fullmatch(r"[1-9]\d{6}", value) and WORD_KEY.fullmatch(key)
    body_end, prefix = _single_tail(key)
    assert it.prompt.startswith(SINGLE_HEAD) and it.prompt.endswith(body_end + prefix)
    assert it.extra["answer_prefix"] == prefix and it.references == [value]
    context = it.prompt[len(SINGLE_HEAD):-len(body_end + prefix)]
    lines = context.split("\n")
    assert lines.count(NOISE) == len(lines) - 1 == it.extra["haystack_size"]  # noise lines + one needle
    assert lines[[i for i, x in enumerate(lines) if x != NOISE][0]] == f"One of the special magic numbers for {key} is: {value}."


def test_niah_single_2_essay_needle_between_sentences(tok):
    b = _bench(tok)
    it = _item(b, "niah_single_2")
    kind, key, value = NEEDLE.search(it.prompt).groups()
    assert kind == "numbers" and it.references == [value]
    body_end, prefix = _single_tail(key)
    assert it.prompt.startswith(SINGLE_HEAD + "Most of what a workshop teaches is patience.")
    assert it.prompt.endswith(body_end + prefix)
    before, needle, after = it.prompt.partition(f" One of the special magic numbers for {key} is: {value}. ")
    assert needle and (before.endswith(".") or before.endswith("\n"))  # between two sentences of the essay
    # the essay words, in order, with the needle taken out (whitespace collapsed as niah.py does)
    essay = rt.essay_words((SMOKE_DATA / "haystack.txt").read_text())
    words = (before[len(SINGLE_HEAD):] + " " + after[:-len(body_end + prefix)]).split()
    assert words == (essay * 3)[:len(words)] and len(words) == it.extra["haystack_size"]


def test_niah_single_3_uuid_values(tok):
    it = _item(_bench(tok), "niah_single_3")
    kind, key, value = NEEDLE.search(it.prompt).groups()
    head = SINGLE_HEAD.replace("number", "uuid")
    body_end, prefix = _single_tail(key, "uuid")
    assert kind == "uuids" and UUID.fullmatch(value) and it.references == [value]
    assert it.prompt.startswith(head) and it.prompt.endswith(body_end + prefix) and WORD_KEY.fullmatch(key)


def test_niah_multikey_1_four_keys_one_asked(tok):
    it = _item(_bench(tok), "niah_multikey_1")
    needles = NEEDLE.findall(it.prompt)
    assert len(needles) == 4 and len({k for _, k, _ in needles}) == 4
    asked = re.search(r"What is the special magic number for (\S+) mentioned", it.prompt).group(1)
    assert it.references == [v for _, k, v in needles if k == asked]
    assert it.extra["answer_prefix"] == _single_tail(asked)[1]


def test_niah_multikey_2_needle_haystack(tok):
    it = _item(_bench(tok), "niah_multikey_2")
    body_end, prefix = _single_tail(re.search(r"What is the special magic number for (\S+) ", it.prompt).group(1))
    lines = it.prompt[len(SINGLE_HEAD):-len(body_end + prefix)].split("\n")
    assert all(NEEDLE.fullmatch(x) for x in lines) and len(lines) == it.extra["haystack_size"] + 1
    asked = body_end.split(" for ")[1].split(" mentioned")[0]
    assert [NEEDLE.fullmatch(x).group(3) for x in lines if NEEDLE.fullmatch(x).group(2) == asked] == it.references


def test_niah_multikey_3_uuid_keys_and_values(tok):
    it = _item(_bench(tok), "niah_multikey_3")
    needles = NEEDLE.findall(it.prompt)
    assert len(needles) == it.extra["haystack_size"] + 1
    assert all(kind == "uuids" and UUID.fullmatch(k) and UUID.fullmatch(v) for kind, k, v in needles)
    asked = re.search(r"What is the special magic uuid for (\S+) mentioned", it.prompt).group(1)
    assert it.references == [v for _, k, v in needles if k == asked]
    assert it.prompt.startswith(SINGLE_HEAD.replace("number", "uuid"))


def test_niah_multivalue_plural_template(tok):
    it = _item(_bench(tok), "niah_multivalue")
    needles = NEEDLE.findall(it.prompt)
    keys = {k for _, k, _ in needles}
    assert len(needles) == 4 and len(keys) == 1
    (key,) = keys
    assert it.prompt.startswith("Some special magic numbers are hidden within the following text. Make sure to "
                                "memorize it. I will quiz you about the numbers afterwards.\n")
    assert it.prompt.endswith(f"\nWhat are all the special magic numbers for {key} mentioned in the provided text?"
                              f" The special magic numbers for {key} mentioned in the provided text are")
    assert it.references == [v for _, _, v in sorted(needles, key=lambda n: it.references.index(n[2]))]
    assert sorted(it.references) == sorted(v for _, _, v in needles)


def test_niah_multiquery_four_questions(tok):
    it = _item(_bench(tok), "niah_multiquery")
    needles = NEEDLE.findall(it.prompt)
    value_of = {k: v for _, k, v in needles}
    assert len(needles) == 4 and len(value_of) == 4
    query = re.search(r"What are all the special magic numbers for (.+) mentioned in the provided text\?",
                      it.prompt).group(1)
    m = re.fullmatch(r"(\S+), (\S+), (\S+), and (\S+)", query)
    assert m and sorted(m.groups()) == sorted(value_of)
    assert it.references == [value_of[k] for k in m.groups()]  # answers in the order asked
    assert it.extra["answer_prefix"] == f" The special magic numbers for {query} mentioned in the provided text are"


# -- vt, cwe, fwe --------------------------------------------------------------------------------
def test_vt_chain_and_in_context_example(tok):
    it = _item(_bench(tok), "vt")
    assert it.max_new_tokens == 30 and it.extra["metric"] == "string_match_all"
    intro = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    example, _, task = it.prompt.partition("\n\n" + intro)  # the example ends with its own newline
    assert example.startswith(intro) and task
    names = it.references
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    value = re.search(rf"VAR {names[0]} = (\d{{5}})\n", task).group(1)
    for a, b in zip(names, names[1:], strict=False):
        assert f"VAR {b} = VAR {a} \n" in task  # hop lines keep the official trailing space
    assert task.endswith(f"\nQuestion: Find all variables that are assigned the value {value} in the text above."
                         f" Answer: According to the chain(s) of variable assignment in the text above, 5 "
                         f"variables are assigned the value {value}, they are: ")
    # the example: 3-letter names, answered, its value re-drawn (never the 12345 placeholder)
    ex_names = example.strip().split()[-5:]
    assert all(re.fullmatch(r"[A-Z]{3}", n) for n in ex_names) and "12345" not in example
    ex_value = re.search(rf"VAR {ex_names[0]} = (\d{{5}})\n", example).group(1)
    assert example.rstrip().endswith(f"the value {ex_value}, they are:  " + " ".join(ex_names))
    assert task.count(NOISE) == it.extra["haystack_size"]


def test_cwe_short_context_shape(tok):
    it = _item(_bench(tok), "cwe")  # 3584 < 4096: the official's lighter repeats
    assert it.max_new_tokens == 120
    shot, _, task = it.prompt.partition("\nBelow is a numbered list of words.")
    q = "\nQuestion: What are the 10 most common words in the above list?"
    prefix = " Answer: The top 10 words that appear most often in the list are:"
    assert shot.startswith("Below is a numbered list of words. In these words, some appear more often than "
                           "others. Memorize the ones that appear most often.\n1. ")
    shot_list, _, shot_answer = shot.partition(q + prefix + " ")
    shot_words = re.findall(r"\d+\. (\S+)", shot_list)
    counts = Counter(shot_words)
    assert len(shot_words) == 40 and sorted(counts.values()) == [1] * 10 + [3] * 10
    assert re.findall(r"\d+\. (\S+)", shot_answer) == [w for w in dict.fromkeys(counts) if counts[w] == 3] or \
        sorted(re.findall(r"\d+\. (\S+)", shot_answer)) == sorted(w for w in counts if counts[w] == 3)
    assert task.endswith(q + prefix) and it.extra["answer_prefix"] == prefix
    numbered = re.findall(r"(\d+)\. (\S+)", task[:-len(q + prefix)])
    assert [int(i) for i, _ in numbered] == list(range(1, len(numbered) + 1))
    counts = Counter(w for _, w in numbered)
    assert sorted(w for w in counts if counts[w] == 6) == sorted(it.references) and len(it.references) == 10
    assert set(counts.values()) == {6, 1} and len(counts) == it.extra["haystack_size"]


def test_cwe_long_context_repeats():
    rng = random.Random(3)
    g = rt.common_words(FAM["common_words_extraction"], _args("cwe"), 50, rng, seed=42, max_seq_length=4096)
    shot, _, task = g.body.partition("\nBelow is a numbered list of words.")
    assert sorted(Counter(re.findall(r"\d+\. (\S+)", shot.partition("\nQuestion")[0])).values()) == [3] * 30 + [10] * 10
    counts = Counter(re.findall(r"\d+\. (\S+)", task))
    assert sorted(w for w in counts if counts[w] == 30) == sorted(g.answers) and set(counts.values()) == {30, 3}


def test_fwe_zeta_counts(tok):
    it = _item(_bench(tok), "fwe")
    assert it.max_new_tokens == 50
    head = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. "
    tail = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
            "frequently appeared words in the above coded text? Answer: According to the coded text above, the "
            "three most frequently appeared words are:")
    assert it.prompt.startswith(head) and it.prompt.endswith(tail)
    words = it.prompt[len(head):-len(tail)].split(" ")
    ranked = [w for w, _ in Counter(words).most_common()]
    assert ranked[0] == "..." and ranked[1:4] == it.references
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in it.references)
    n = it.extra["haystack_size"]
    from scipy.special import zeta

    assert Counter(words)[it.references[0]] == int(n * 2 ** -2.0 / zeta(2.0))
    assert Counter(words)["..."] == int(n / zeta(2.0))


# -- qa -----------------------------------------------------------------------------------------
@pytest.fixture
def qa_dir(tmp_path) -> Path:
    squad = {"data": [{"paragraphs": [
        {"context": f"Paragraph {i} says the capital of land {i} is city {i}.",
         "qas": [{"question": f"What is the capital of land {i}?", "is_impossible": False,
                  "answers": [{"text": f"city {i}"}, {"text": f"City {i}"}]},
                 {"question": "Unanswerable?", "is_impossible": True, "answers": []}]} for i in range(30)]}]}
    hotpot = [{"question": f"Who wrote book {i}?", "answer": f"author {i}",
               "context": [[f"Book {i}", [f"Book {i} was written ", f"by author {i}."]],
                           [f"Other {i}", ["Nothing here."]]]} for i in range(30)]
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    (tmp_path / "hotpotqa.json").write_text(json.dumps(hotpot))
    return tmp_path


def test_qa_1_squad(tok, qa_dir):
    b = Ruler(data_dir=qa_dir, contexts=[3584], tasks=["qa_1"], num_samples=2)
    b.use_tokenizer("smoke", max_input_len=8192, tokenizer=tok)
    it = _item(b, "qa_1", index=1)
    assert it.max_new_tokens == 32 and it.extra["metric"] == "string_match_part"
    assert it.references == ["city 1", "City 1"]  # answerable questions only, in file order
    head = ("Answer the question based on the given documents. Only give me the answer and do not output any "
            "other words.\n\nThe following are given documents.\n\nDocument 1:\n")
    assert it.prompt.startswith(head)
    assert it.prompt.endswith("\n\nAnswer the question based on the given documents. Only give me the answer and "
                              "do not output any other words.\n\nQuestion: What is the capital of land 1? Answer:")
    docs = re.findall(r"Document (\d+):\n(Paragraph \d+ [^\n]+)", it.prompt)
    assert [int(i) for i, _ in docs] == list(range(1, len(docs) + 1)) == list(range(1, it.extra["haystack_size"] + 1))
    assert "Paragraph 1 says the capital of land 1 is city 1." in [d for _, d in docs]
    assert b.data_files("qa_1/3584") == [qa_dir / "squad.json"]


def test_qa_2_hotpotqa(tok, qa_dir):
    b = Ruler(data_dir=qa_dir, contexts=[3584], tasks="qa_2", num_samples=1)
    b.use_tokenizer("smoke", max_input_len=8192, tokenizer=tok)
    it = _item(b, "qa_2")
    assert it.references == ["author 0"] and "Document 1:\n" in it.prompt
    assert "Book 0\nBook 0 was written by author 0." in it.prompt  # title, newline, sentences joined
    assert "Other 0\nNothing here." in it.prompt and it.prompt.endswith("Question: Who wrote book 0? Answer:")
    assert b.score(it, "It was Author 0.") == 1.0 and b.score(it, "author 1") == 0.0


# -- scoring --------------------------------------------------------------------------------------
def test_scoring_string_match():
    refs = ["1234567", "Apple-Pie", "XYZ"]
    assert string_match_all(" 1234567 and apple-pie", refs) == pytest.approx(2 / 3)  # partial credit, case
    assert string_match_all("nothing", refs) == 0.0 and string_match_all("xyz APPLE-PIE 1234567", refs) == 1.0
    assert string_match_all("123456", ["1234567"]) == 0.0   # substring of the prediction, not the reverse
    assert string_match_part("the answer is CITY 1.", ["city 1", "town"]) == 1.0
    assert string_match_part("town hall", ["city 1", "town"]) == 1.0 and string_match_part("x", ["a", "b"]) == 0.0
    assert postprocess("  a\tb\x00c \n") == "a\nb\nc" and string_match_all("ab\x01cd", ["ab\ncd"]) == 1.0
    s = summarize_records([
        {"item_id": "vt/4096/0", "status": "ok", "score": 1.0}, {"item_id": "vt/4096/1", "status": "ok", "score": 0.5},
        {"item_id": "niah_single_1/4096/0", "status": "ok", "score": 0.0},
        {"item_id": "niah_single_1/8192/0", "status": "ok", "score": 1.0},
        {"item_id": "vt/8192/0", "status": "failed", "score": None}], ["niah_single_1", "vt"])
    assert s["grid"] == {"4096": {"niah_single_1": 0.0, "vt": 75.0}, "8192": {"niah_single_1": 100.0}}
    assert s["grid_rows"] == ["niah_single_1", "vt"] and s["contexts"] == {"4096": 37.5, "8192": 100.0}
    assert s["tasks"] == {"niah_single_1": 50.0, "vt": 75.0} and s["average"] == pytest.approx(175 / 3)
    assert s["n"] == 4


# -- sizing and determinism ------------------------------------------------------------------------
TASKS = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
         "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"]


def test_prompts_fit_the_context_and_nearly_fill_it(tok):
    b = _bench(tok, contexts=(2048, 3584))
    for task in TASKS:
        gen = FAM[CFG["tasks"][task]["family"]]["tokens_to_generate"]
        for context in b.contexts:
            if context == 2048 and _args(task).get("type_haystack") == "essay":  # 500 words at least, as RULER
                with pytest.raises(UserError, match="too small"):
                    list(b.items(f"{task}/{context}", 1))
                continue
            for it in b.items(f"{task}/{context}", 2):
                n = len(tok(it.prompt)["input_ids"])  # BOS + one token per byte
                assert n == it.extra["input_tokens"] and n + gen <= context, (task, context)
                slack = context // 8 if task == "fwe" else 120  # fwe steps by max_len/32 words, as the official
                assert n + gen >= context - slack, (task, context, n)


def test_fit_with_a_merging_bpe_and_chat_template():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([(SMOKE_DATA / "haystack.txt").read_text(), NOISE * 20] * 4, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    bpe = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    bpe.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    b = Ruler(data_dir=SMOKE_DATA, contexts=[2048], haystack="haystack.txt", num_samples=2,
              tasks=["niah_single_2", "niah_multikey_2", "vt", "cwe"])
    b.use_tokenizer("bpe", chat_template=True, max_input_len=4096, tokenizer=bpe)
    for task in b.tasks:
        gen = FAM[CFG["tasks"][task]["family"]]["tokens_to_generate"]
        for it in b.items(f"{task}/2048", 2):
            text = bpe.apply_chat_template([{"role": "user", "content": it.prompt}], tokenize=False,
                                           add_generation_prompt=True)
            n = len(bpe(text, add_special_tokens=False)["input_ids"])
            assert n == it.extra["input_tokens"] and 2048 - 100 <= n + gen <= 2048, (task, n)


def test_items_are_deterministic_and_independent_of_limit(tok):
    a, b = _bench(tok, tasks=["niah_single_2", "vt", "cwe", "fwe"]), _bench(tok, tasks=["niah_single_2", "vt", "cwe", "fwe"])
    for s in a.subsets():
        first = [(i.item_id, i.prompt, i.references) for i in a.items(s, 3)]
        assert first == [(i.item_id, i.prompt, i.references) for i in b.items(s, 3)]
        assert first[:1] == [(i.item_id, i.prompt, i.references) for i in b.items(s, 1)]
        assert [x[0] for x in first] == [f"{s}/{k}" for k in range(3)]
        assert len({x[1] for x in first}) == 3  # every sample draws its own needles / words
    other = Ruler(data_dir=SMOKE_DATA, contexts=[3584], tasks=["vt"], num_samples=1,
                  config={**CFG, "seed": 7})
    other.use_tokenizer("smoke", max_input_len=8192, tokenizer=tok)
    assert _item(other, "vt").prompt != _item(a, "vt").prompt


def test_stdlib_docstrings_haystack(tok):
    b = _bench(tok, contexts=(4096,), tasks=["niah_single_2"], haystack="stdlib-docstrings", num_samples=1)
    info = b.settings["ruler"]["haystack"]
    assert info["kind"] == "stdlib-docstrings" and info["official"] is False and "NOT" in info["note"]
    assert len(info["sha256"]) == 64 and info["words"] > 20000 and b.data_files("niah_single_2/4096") == []
    it = _item(b, "niah_single_2", 4096)
    assert NEEDLE.search(it.prompt) and ">>>" not in it.prompt


# -- errors ---------------------------------------------------------------------------------------
def test_bad_inputs(tok, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown RULER task 'niah_single_9'"):
        Ruler(contexts=[4096], tasks=["niah_single_9"])
    with pytest.raises(UserError, match=r"haystack file .*nope\.txt not found"):
        Ruler(contexts=[4096], haystack=str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="niah_single_2: needs an essay haystack"):
        Ruler(contexts=[4096], tasks=["niah_single_2"])
    with pytest.raises(UserError, match="qa_1 needs the squad file"):
        Ruler(data_dir=tmp_path, contexts=[4096], tasks=["qa_1"])
    b = Ruler(contexts=[4096])  # no haystack: the essay tasks are left out, and said so
    assert "niah_single_2" not in b.tasks and "niah_single_1" in b.tasks and "qa_1" not in b.tasks
    assert "left out niah_single_2" in capsys.readouterr().err
    small = _bench(tok, contexts=(300,), tasks=["niah_single_1"])
    with pytest.raises(UserError, match="context 300 is too small for RULER task niah_single_1"):
        list(small.items("niah_single_1/300"))
    with pytest.raises(UserError, match="exceeds --max-input-len"):
        Ruler(contexts=[8192]).use_tokenizer("x", max_input_len=4096, tokenizer=tok)


# -- through the command line -----------------------------------------------------------------------
def test_smoke_run_through_the_cli(tmp_path, smoke_cache, capsys):
    args = ["run", "ruler", "--method", "fp16", "--method", "oscar", "--tasks", "niah_single_2,vt",
            "--results", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "task" in out and "niah_single_2" in out and "vt" in out and "Average" in out
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name.split("-")[-2] for r in runs] == ["fp16", "oscar"]
    for run_dir in runs:
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["configuration"] == "smoke" and m["benchmark"] == "ruler"
        assert m["settings"]["ruler"]["source"]["commit"].startswith("c3f5e3b")
        assert m["settings"]["ruler"]["haystack"]["file"] == "haystack.txt"
        assert list(m["data"]["files"]) == ["haystack.txt"]
        recs = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
        assert [r["item_id"] for r in recs] == ["niah_single_2/3584/0", "vt/3584/0"]
        assert all(r["status"] == "ok" and 0.0 <= r["score"] <= 1.0 for r in recs)
        s = json.loads((run_dir / "summary.json").read_text())
        assert set(s["grid"]["3584"]) == {"niah_single_2", "vt"} and s["n_items"] == 2
        assert s["average"] == pytest.approx(100 * sum(r["score"] for r in recs) / 2)
    code = main(["run", "niah", "--tasks", "vt", "--results", str(tmp_path)])
    assert code != 0 and "--tasks: only for the ruler benchmark" in capsys.readouterr().err
