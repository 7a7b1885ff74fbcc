"""RULER's synthetic task generators, re-expressed from NVIDIA/RULER at commit
c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a (``scripts/data/synthetic/{niah,variable_tracking,
common_words_extraction,freq_words_extraction,qa}.py``); facts of that code, not its code.

Each generator builds one sample for a haystack size ``n`` (sentences, words, noise lines or documents,
as the official script counts it) from a ``random.Random``; the official scripts draw from one global
stream per task, here every sample has its own seeded generator (stable items for ``--resume`` and
``--limit``). Where the official code re-seeds a shuffle with the run's seed (``random.Random(seed)``:
needle order, the cwe and fwe word lists, the qa documents), so do we, with the same seed.

Differences, all deliberate:
- niah word keys: the official draws from the sorted set of every ``adjective-noun`` compound of the
  wonderwords lists (6.2M strings); we draw the adjective and the noun independently, the same uniform
  distribution over pairs without building the list.
- cwe beyond the wonderwords vocabulary (very long contexts) the official falls back to its
  ``english_words.json``, which is not shipped here: such a context is an error.
- vt: the official can (once in ~10^7 draws) give a chain a repeated variable name; ours are distinct.
"""

from __future__ import annotations

import random
import re
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

# Needle depths of niah.py and variable_tracking.py: round(linspace(0, 100, 40)) as integers.
DEPTHS = [round(100 * i / 39) for i in range(40)]


class Exhausted(Exception):
    """The generator ran out of distinct material for this haystack size (cwe's word list)."""


@dataclass(frozen=True)
class Generated:
    """One sample: RULER's ``input`` (``body``), ``answer_prefix`` and ``outputs`` (``answers``)."""

    body: str
    answer_prefix: str
    answers: list[str]
    info: dict = field(default_factory=dict, compare=False)

    @property
    def prompt(self) -> str:  # what the model reads: call_api.py feeds input + answer_prefix
        return self.body + self.answer_prefix


@lru_cache(maxsize=1)
def wonderwords_lists() -> tuple[list[str], list[str], list[str]]:
    """(nouns, adjectives, verbs) of the installed wonderwords package, as RULER reads them."""
    try:
        from wonderwords.random_word import _get_words_from_text_file as read
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError("RULER needs the wonderwords package (pip install wonderwords)") from exc
    return read("nounlist.txt"), read("adjectivelist.txt"), read("verblist.txt")


def random_value(kind: str, rng: random.Random) -> str:
    """A needle key or value: 7-digit number, adjective-noun word, or uuid4 (niah.py's three types)."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        nouns, adjs, _ = wonderwords_lists()
        return f"{rng.choice(adjs)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r} (numbers, words, uuids)")


def singular(text: str) -> str:
    """niah.py's rewording when one value is asked for ('Some ... are' -> 'A ... is')."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(old, new)
    return text


def essay_context(words: Sequence[str], n: int, inserts: Sequence[str], rng: random.Random,
                  split_sentences: Callable[[str], list[str]]) -> str:
    """The first ``n`` words (the essay repeated if shorter), split into sentences; each insert goes
    between sentences at a depth drawn without replacement from ``DEPTHS``, in depth order."""
    if n <= len(words):
        text = " ".join(words[:n])
    else:
        text = " ".join((list(words) * (-(-n // len(words))))[:n])
    sents = split_sentences(text.strip())
    cuts = [0] + sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(inserts))) + [len(sents)]
    parts: list[str] = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(inserts):
            parts.append(inserts[i - 1])
    return " ".join(parts)


# -- niah ----------------------------------------------------------------------------------------
def niah(family: dict, args: dict, n: int, rng: random.Random, *, seed: int, noise: str,
         essay: Sequence[str] | None = None, split_sentences: Callable[[str], list[str]] | None = None
         ) -> Generated:
    type_k, type_v, hay = args["type_needle_k"], args["type_needle_v"], args["type_haystack"]
    num_v, num_q = int(args["num_needle_v"]), int(args["num_needle_q"])
    num_k = max(int(args["num_needle_k"]), num_q)
    keys: list[str] = []
    values: list[list[str]] = []
    needles: list[str] = []
    for _ in range(num_k):
        keys.append(random_value(type_k, rng))
        vals = []
        for _ in range(num_v):
            vals.append(random_value(type_v, rng))
            needles.append(family["needle"].format(type_needle_v=type_v, key=keys[-1], value=vals[-1]))
        values.append(vals)
    random.Random(seed).shuffle(needles)
    if hay == "essay":
        if essay is None or split_sentences is None:
            raise ValueError("an essay haystack is needed")
        context = essay_context(essay, n, needles, rng, split_sentences)
    else:
        if hay == "noise":
            lines = [noise] * n
        elif hay == "needle":  # distractors: needles with other random keys and values
            lines = [family["needle"].format(type_needle_v=type_v, key=random_value(type_k, rng),
                                             value=random_value(type_v, rng)) for _ in range(n)]
        else:
            raise ValueError(f"unknown haystack type {hay!r} (noise, essay, needle)")
        for index, needle in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles, strict=True):
            lines.insert(index, needle)
        context = "\n".join(lines)
    picked = rng.sample(range(num_k), num_q)
    queries = [keys[i] for i in picked]
    answers = [a for i in picked for a in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix, shown_type = family["template"], family["answer_prefix"], type_v
    if num_q * num_v == 1:
        template, prefix, shown_type = singular(template), singular(prefix), type_v[:-1]
    return Generated(template.format(type_needle_v=shown_type, context=context, query=query),
                     prefix.format(type_needle_v=shown_type, query=query), answers,
                     {"needles": len(needles)})


# -- variable tracking --------------------------------------------------------------------------------
def vt_chains(rng: random.Random, num_chains: int, num_hops: int, icl: bool
              ) -> tuple[list[list[str]], list[list[str]]]:
    """Variable names (5 capitals; 3 in the in-context example) and each chain's assignment lines."""
    size = 3 if icl else 5
    hops = min(10, num_hops) if icl else num_hops
    names: list[str] = []
    while len(names) < (hops + 1) * num_chains:
        name = "".join(rng.choices(string.ascii_uppercase, k=size))
        if name not in names:
            names.append(name)
    groups, chains = [], []
    for c in range(num_chains):
        group = names[c * (hops + 1):(c + 1) * (hops + 1)]
        first = f"VAR {group[0]} = {12345 if icl else rng.randint(10000, 99998)}"
        chains.append([first] + [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(hops)])
        groups.append(group)
    return groups, chains


def variable_tracking(family: dict, args: dict, n: int, rng: random.Random, *, noise: str,
                      icl: bool = False, example: str | None = None) -> Generated:
    if args.get("type_haystack", "noise") != "noise":
        raise ValueError("variable tracking: only the noise haystack (synthetic.yaml's choice) is built")
    hops = int(args["num_hops"])
    groups, chains = vt_chains(rng, int(args["num_chains"]), hops, icl)
    lines = [noise] * n
    for chain in chains:
        for j, pos in enumerate(sorted(rng.sample(range(len(lines)), len(chain)))):
            lines.insert(pos + j, chain[j])
    context = "\n".join(lines).replace(". \n", ".\n")
    value = chains[0][0].split("=")[-1].strip()
    num_v = (min(10, hops) if icl else hops) + 1
    body = family["template"].format(context=context, query=value, num_v=num_v)
    if example is not None:  # the in-context example goes before the task text (base model template)
        body = example + "\n" + body
    return Generated(body, family["answer_prefix"].format(query=value, num_v=num_v), groups[0])


def vt_example_text(example: Generated) -> str:
    """The in-context example as variable_tracking.py prepends it: prompt, its answer, a newline."""
    return example.prompt + " " + " ".join(example.answers) + "\n"


def randomize_example(example: str, num_hops: int, rng: random.Random) -> str:
    """Fresh names for the example's answer variables and a fresh value for its 12345 (per sample)."""
    for name in example.strip().split()[-num_hops - 1:]:
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    return example.replace("12345", str(rng.randint(10000, 99998)))


# -- common words extraction -----------------------------------------------------------------------
@lru_cache(maxsize=4)
def cwe_vocabulary(seed: int) -> tuple[str, ...]:
    nouns, adjs, verbs = wonderwords_lists()
    words = sorted(set(nouns + adjs + verbs))
    random.Random(seed).shuffle(words)
    return tuple(words)


def numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe_list(rng: random.Random, seed: int, num_words: int, common_repeats: int, uncommon_repeats: int,
             num_common: int) -> tuple[str, list[str]]:
    words = cwe_vocabulary(seed)
    if num_words > len(words):
        raise Exhausted(f"cwe needs {num_words} distinct words; the wonderwords lists have {len(words)}")
    chosen = rng.sample(words, num_words)
    common, uncommon = chosen[:num_common], chosen[num_common:]
    listed = common * common_repeats + uncommon * uncommon_repeats
    random.Random(seed).shuffle(listed)
    return numbered(listed), common


def common_words(family: dict, args: dict, n: int, rng: random.Random, *, seed: int,
                 max_seq_length: int) -> Generated:
    num_cw = int(args["num_cw"])
    # Below 4096 tokens the official uses lighter repeats (20 words 3/1 for the example, 6/1 for the task).
    short = max_seq_length < 4096
    shot_shape, task_shape = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3),
                                                                  (int(args["freq_cw"]), int(args["freq_ucw"])))
    shots = [cwe_list(rng, seed, *shot_shape, num_cw) for _ in range(int(args.get("num_fewshot", 1)))]
    context, answer = cwe_list(rng, seed, n, *task_shape, num_cw)
    full = family["template"] + family["answer_prefix"]
    examples = [full.format(context=c, query="", num_cw=num_cw) + " " + numbered(a) for c, a in shots]
    body = "\n".join(examples) + "\n" + family["template"].format(context=context, query="", num_cw=num_cw)
    return Generated(body, family["answer_prefix"], answer)


# -- frequent words extraction ----------------------------------------------------------------------
def fwe_vocabulary(rng: random.Random, seed: int, size: int, word_len: int) -> list[str]:
    """``size`` distinct random lowercase words, sorted then shuffled with the run seed; rank 0 is '...'."""
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=word_len)) for _ in range(size)]
    while len(set(vocab)) < size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=word_len)))
    vocab = sorted(set(vocab))
    random.Random(seed).shuffle(vocab)
    vocab[0] = "..."  # the most frequent "word" is noise, the next three are the answer
    return vocab


def freq_words(family: dict, vocab: Sequence[str], num_words: int, *, seed: int, alpha: float) -> Generated:
    """Word of rank k repeated int(num_words * k^-alpha / zeta(alpha)) times, shuffled with the run seed."""
    from scipy.special import zeta

    norm = float(zeta(alpha))
    text = [w for k, w in enumerate(vocab, start=1) for _ in range(int(num_words * k ** -alpha / norm))]
    random.Random(seed).shuffle(text)
    body = family["template"].format(context=" ".join(text), query="")
    return Generated(body, family["answer_prefix"], list(vocab[1:4]))


# -- qa --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QAData:
    questions: list[dict]   # query, outputs, context (doc indices), more (same-article doc indices)
    docs: list[str]


def read_squad(data: dict) -> QAData:
    """SQuAD (v2.0 dev as RULER downloads it): distinct paragraphs sorted; answerable questions only."""
    paragraphs = [p["context"] for d in data["data"] for p in d["paragraphs"]]
    docs = sorted(set(paragraphs))
    at = {c: i for i, c in enumerate(docs)}
    questions = []
    for d in data["data"]:
        article = [at[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            own = at[p["context"]]
            for qa in p["qas"]:
                if not qa.get("is_impossible", False):
                    questions.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                      "context": [own], "more": [i for i in article if i != own]})
    return QAData(questions, docs)


def read_hotpotqa(data: list) -> QAData:
    """HotpotQA (dev, distractor): documents are 'title\\nsentences', distinct and sorted."""
    def doc(title: str, sents: Sequence[str]) -> str:
        return f"{title}\n{''.join(sents)}"

    docs = sorted({doc(t, p) for d in data for t, p in d["context"]})
    at = {c: i for i, c in enumerate(docs)}
    questions = [{"query": d["question"], "outputs": [d["answer"]],
                  "context": [at[doc(t, p)] for t, p in d["context"]], "more": []} for d in data]
    return QAData(questions, docs)


def qa(family: dict, data: QAData, index: int, n: int, rng: random.Random, *, seed: int) -> Generated:
    """Question ``index`` with its own document(s), then same-article ones, then random others: ``n``
    documents in all, shuffled with the run seed."""
    q = data.questions[index]
    own, more = list(q["context"]), list(q["more"])
    if n < len(data.docs):
        if n - len(own) > len(more):
            taken = set(own + more)
            others = [i for i in range(len(data.docs)) if i not in taken]
            chosen = own + more + rng.sample(others, max(0, n - len(own) - len(more)))
        else:
            chosen = own + rng.sample(more, max(0, n - len(own)))
        docs = [data.docs[i] for i in chosen]
    else:
        docs = (list(data.docs) * (-(-n // len(data.docs))))[:n]
    random.Random(seed).shuffle(docs)
    context = "\n\n".join(family["document"].format(i=i + 1, document=d) for i, d in enumerate(docs))
    return Generated(family["template"].format(context=context, query=q["query"]), family["answer_prefix"],
                     list(q["outputs"]))


# -- sizing ----------------------------------------------------------------------------------------
def largest_fitting(fits: Callable[[int], bool], start: int) -> int | None:
    """The largest ``n >= start`` with ``fits(n)`` (taken as monotone): doubling, then bisection; the
    official scripts bisect inside an estimated bound, which finds the same ``n``. None if ``start``
    does not fit."""
    if not fits(start):
        return None
    lo, hi = start, 2 * start
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fit_sample(make: Callable[[int], Generated], length: Callable[[Generated], int], budget: int,
               n: int, step: int, minimum: int) -> tuple[Generated, int] | None:
    """The sample at the largest haystack size ``<= n`` whose prompt fits ``budget`` tokens.

    As the official: try ``n`` and step down by ``step`` until it fits; then (ours) bisect back up
    inside that last step, so an unlucky sample loses a few units of haystack, not a whole step (500
    words for essays). None when even ``minimum`` does not fit."""
    def ok(k: int) -> Generated | None:
        try:
            g = make(k)
        except Exhausted:
            return None
        return g if length(g) <= budget else None

    size = n
    got = ok(size)
    while got is None:
        if size <= minimum:
            return None
        size = max(minimum, size - step)
        got = ok(size)
    lo, hi = size, min(n + 1, size + step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        g = ok(mid)
        if g is None:
            hi = mid
        else:
            lo, got = mid, g
    return got, lo


_SPACES = re.compile(r"\s+")


def essay_words(text: str) -> list[str]:
    """niah.py's essay haystack: whitespace runs collapsed to one space, then split into words."""
    return [w for w in _SPACES.sub(" ", text).split(" ") if w]
