"""Needle-in-a-haystack (paper Fig. 29: Qwen3-8B, 42K context, 15 depths): a context-length x depth grid.

Construction (the usual NIAH setup of gkamradt/LLMTest_NeedleInAHaystack; facts, not its code):

- The haystack is a local plain-text file (``--haystack FILE``, or ``haystack.txt`` / every ``*.txt`` of
  ``--data-dir``), repeated until it is long enough and tokenized once with the model's tokenizer.
- For a context length ``C`` (tokens of the whole prompt, the template and the BOS/chat-template tokens
  included) the haystack keeps its first ``C - needle - overhead`` tokens, where ``overhead`` is the
  token count of the prompt with an empty haystack, measured exactly as the model runner tokenizes
  (raw or with ``--chat-template``). If re-tokenizing the decoded text makes the prompt longer than
  ``C`` (BPE merges at the seams), the haystack is cut by the excess and the prompt rebuilt, so the
  prompt never exceeds ``C`` tokens.
- The needle (tokenized on its own) goes at ``int(n_haystack * depth / 100)`` haystack tokens, moved
  back to just after the nearest sentence end at or before that position (a token whose text ends in
  ``.`` once trailing whitespace is removed; gkamradt tests for the token of ``"."``, which BPE
  vocabularies often merge with what follows); ``depth == 100`` appends it at the end, and with no
  sentence end before the position it goes at the start.
- Depths: ``round(linspace(0, 100, N))`` as integers (gkamradt's linear spacing); N = 15 by default.
- Greedy decoding, batch 1, ``max_new_tokens`` from ``tasks/niah.yaml``; then the question.

Scoring (``SCORING``, also written into every summary): an item is retrieved (score 1) when the
prediction contains every key answer phrase (``answer`` in ``tasks/niah.yaml``; default ``sandwich``
and ``Dolores Park``), both sides normalized: lower-cased, every run of characters other than letters
and digits turned into one space. Otherwise 0. gkamradt scores with a GPT-4 judge (1-10), which we do
not have offline; some KV-cache papers use ROUGE-1 recall of the needle, which gives partial credit
for echoing the question's words ("best thing to do in San Francisco") without retrieving anything.
A binary key-phrase test is deterministic, judge-free, and is exactly "was the fact retrieved", which
is what an accuracy in % (the paper's axis) counts. Cells are x100; ``average`` is the mean over the
grid's cells (each cell is one item).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oscar_eval.benchmarks import load_task_config
from oscar_eval.benchmarks.base import Item, ItemError, data_file
from oscar_eval.benchmarks.options import Option
from oscar_eval.errors import UserError
from oscar_eval.scoring.cells import cell_means
from oscar_eval.token_counts import parse_contexts

SCORING = ("key-phrase containment: score 1 when the prediction contains every answer key phrase after "
           "lower-casing and turning each run of non-alphanumeric characters into one space (both "
           "sides); else 0")
SMOKE_DATA = Path(__file__).resolve().parents[1] / "data" / "niah_smoke"


def load_config(path: Path | None = None) -> dict:
    return load_task_config("niah.yaml", path)


# -- pure helpers (tested directly) ------------------------------------------------------------------
def depth_percents(n: int) -> list[int]:
    """``n`` depths evenly spaced over 0..100 %, rounded to integers (gkamradt's linear spacing)."""
    import numpy as np

    if not 1 <= int(n) <= 101:
        raise UserError(f"--depths must be between 1 and 101, got {n}")
    return [int(d) for d in np.round(np.linspace(0, 100, num=int(n), endpoint=True))]


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def retrieved(prediction: str, answer: Sequence[str]) -> float:
    """1.0 when every key phrase occurs in the prediction (both normalized, see ``SCORING``), else 0.0."""
    pred = normalize(prediction)
    keys = [normalize(a) for a in answer]
    return float(bool(keys) and all(k and k in pred for k in keys))


def insert_needle(haystack: Sequence[int], needle: Sequence[int], depth: float,
                  is_sentence_end) -> tuple[list[int], int]:
    """Needle tokens into haystack tokens at ``depth`` %, on a sentence boundary at or before it.

    Returns (tokens, position of the needle's first token)."""
    hay = list(haystack)
    if depth >= 100:
        pos = len(hay)
    else:
        pos = int(len(hay) * (depth / 100))
        while pos > 0 and not is_sentence_end(hay[pos - 1]):
            pos -= 1
    return hay[:pos] + list(needle) + hay[pos:], pos


def _key(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def _split_id(item_id: str) -> tuple[str, str] | None:
    """``"42000/50"`` -> ``("42000", "50")``."""
    ctx, sep, depth = str(item_id).partition("/")
    if not sep or _key(ctx) == float("inf") or _key(depth) == float("inf"):
        return None
    return ctx, depth


def summarize_records(records: list[dict]) -> dict:
    """``grid`` {context: {depth: x100}}, ``average`` (mean of the cells), per-context/per-depth means."""
    means, n = cell_means(records, _split_id)
    contexts = sorted({c for c, _ in means}, key=_key)
    depths = sorted({d for _, d in means}, key=_key)
    grid = {c: {d: means[(c, d)] for d in depths if (c, d) in means} for c in contexts}

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    average = mean(list(means.values()))
    by_context = {c: mean(list(grid[c].values())) for c in contexts}
    by_depth = {d: mean([grid[c][d] for c in contexts if d in grid[c]]) for d in depths}
    return {"average": average, "grid": grid, "contexts": by_context, "depths": by_depth,
            "columns": {"Accuracy": average}, "n": n}


@dataclass
class Built:
    """One constructed prompt and where its needle went (for records' extra and tests)."""

    prompt: str
    haystack_tokens: int      # haystack tokens kept (needle excluded)
    needle_at: int            # index of the needle's first token within the haystack + needle tokens
    target: int               # int(haystack_tokens * depth / 100): the position before the boundary rule
    input_tokens: int         # tokens the model is fed (exactly as the runner tokenizes)


class NeedleInAHaystack:
    """NIAH on a local haystack text; the prompts are sized with the model's tokenizer."""

    name = "niah"
    kind = "text"
    options = (
        Option("contexts", "context lengths in tokens, comma-separated (or --subsets); 1k = 1024 tokens in every "
               "command (NIAH's 42K is 42000)", metavar="LIST", default="tasks/niah.yaml"),
        Option("depths", "N needle depths evenly spaced from 0% to 100%", type=int, metavar="N",
               default="tasks/niah.yaml"),
        Option("haystack", "haystack text file", metavar="FILE",
               default="the .txt files of --data-dir; with --model alone, the Python standard library's docstrings"),
    )

    def __init__(self, data_dir: str | Path | None = None, subsets: Sequence[str] | None = None,
                 contexts: Any = None, depths: int | None = None, haystack: str | Path | None = None,
                 max_new_tokens: int | None = None, config: dict | None = None) -> None:
        self.config = config or load_config()
        cfg = self.config
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        # --subsets names contexts too (the run's "subsets" are its context lengths).
        self.contexts = parse_contexts(subsets or contexts or cfg["contexts"])
        self.depths = depth_percents(depths if depths is not None else cfg["depths"])
        self.needle = str(cfg["needle"])
        self.question = str(cfg["question"])
        answer = cfg["answer"]
        self.answer = [answer] if isinstance(answer, str) else [str(a) for a in answer]
        self.template = str(cfg["prompt"])
        self.max_new_tokens = int(max_new_tokens or cfg["generation"]["max_new_tokens"])
        self._files = self._find_files(haystack)
        self._tok = None
        self._counter = None
        self._hay: list[int] = []
        self._ends: dict[int, bool] = {}
        self._overhead: int | None = None

    # -- configuration -----------------------------------------------------------------------
    @classmethod
    def default_data(cls, options: dict, model: Any) -> tuple[Path | None, dict]:
        """The data dir when --data-dir is not given: the folder of ``--haystack FILE``; with --model and no
        --haystack, the Python standard library's docstrings as the haystack (NOT gkamradt's Paul Graham
        essays; the file's name and hash say so in the run's data files), written once under
        ``$OSCAR_EVAL_HOME/haystacks``; neither: None (the smoke configuration)."""
        if options.get("haystack"):
            return Path(options["haystack"]).expanduser().resolve().parent, options
        if model is None:
            return None, options
        import sys

        from oscar_eval.benchmarks.stdlib_text import stdlib_haystack_file
        from oscar_eval.checkpoints import home

        path = stdlib_haystack_file(home() / "haystacks")
        print(f"niah: no --haystack or --data-dir given: the haystack is the Python standard library's "
              f"docstrings ({path}), not the usual essays", file=sys.stderr)
        return path.parent, {**options, "haystack": str(path)}

    @classmethod
    def selection(cls) -> list[str]:
        """What a run chooses among, for `oscar-eval list` (from the task config; no data needed)."""
        cfg = load_config()
        return [f"contexts (--contexts or --subsets, tokens, 1k = 1024; default): "
                f"{', '.join(map(str, cfg['contexts']))}", f"depths (--depths N; default): {cfg['depths']}"]

    @classmethod
    def smoke_configuration(cls) -> dict:
        smoke = load_config().get("smoke", {})
        return {
            # The grid (contexts, depths) is said by the run from the benchmark as built (overrides applied).
            "description": f"tiny random-weight Llama + built-in NIAH haystack fixture ({SMOKE_DATA})",
            "data_dir": SMOKE_DATA,
            "max_input_len": int(smoke["max_input_len"]),
            "options": {"contexts": list(smoke["contexts"]), "depths": int(smoke["depths"]),
                        "max_new_tokens": int(smoke["max_new_tokens"])},
        }

    @property
    def settings(self) -> dict:
        """What changes the results besides the model and the method (part of the run id)."""
        return {"niah": {"needle": self.needle, "question": self.question, "answer": self.answer,
                         "prompt": self.template, "max_new_tokens": self.max_new_tokens, "scoring": SCORING,
                         "insertion": "gkamradt: depth% of haystack tokens, back to a sentence end"}}

    def _find_files(self, haystack: str | Path | None) -> list[Path]:
        hint = self.config["data"]["hint"]
        if haystack is not None:
            return [data_file(haystack, self.data_dir, "haystack file", hint)]
        if self.data_dir is None:
            raise UserError(f"no --data-dir or --haystack given for NIAH; {hint}")
        if not self.data_dir.is_dir():
            raise UserError(f"data dir {self.data_dir} does not exist; {hint}")
        default = self.data_dir / self.config["data"]["haystack"]
        files = [default] if default.is_file() else sorted(self.data_dir.glob("*.txt"))
        if not files:
            raise UserError(f"haystack file {default} not found (nor any *.txt in {self.data_dir}); {hint}")
        return files

    def subsets(self) -> list[str]:
        return [str(c) for c in self.contexts]

    def data_files(self, subset: str) -> list[Path]:
        return list(self._files)

    # -- tokenizer-dependent construction ---------------------------------------------------------
    def use_tokenizer(self, model_path: str | Path, chat_template: bool = False,
                      max_input_len: int | None = None, tokenizer: Any = None) -> None:
        """Load the model's tokenizer (local files only) and tokenize the haystack once."""
        from oscar_eval.benchmarks.base import sized_prompt_counter

        tokenizer, self._counter = sized_prompt_counter(model_path, self.contexts, max_input_len, chat_template,
                                                        "NIAH", tokenizer)
        self._tok = tokenizer
        text = "\n".join(p.read_text(encoding="utf-8", errors="replace").strip() for p in self._files)
        if not text.strip():
            raise UserError(f"haystack file {self._files[0]} is empty")
        need = max(self.contexts)
        one = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        reps = need // max(one, 1) + 2
        self._hay = list(tokenizer("\n".join([text] * reps), add_special_tokens=False)["input_ids"])
        self._needle_ids = list(tokenizer(self.needle, add_special_tokens=False)["input_ids"])
        self._ends = {}
        self._overhead = None

    def _is_end(self, token_id: int) -> bool:
        if token_id not in self._ends:
            self._ends[token_id] = self._tok.decode([token_id]).rstrip().endswith(".")
        return self._ends[token_id]

    def count_tokens(self, prompt: str) -> int:
        ids, _, _ = self._counter.build_inputs(Item("", "", 0, prompt, [], 1))
        return len(ids)

    def build(self, context: int, depth: float) -> Built:
        """The prompt of one (context, depth) cell, at most ``context`` tokens as the model sees it."""
        if self._tok is None:
            raise RuntimeError("NeedleInAHaystack.use_tokenizer() first")
        if self._overhead is None:
            self._overhead = self.count_tokens(self.template.format(context="", question=self.question))
        overhead = self._overhead
        budget = context - overhead - len(self._needle_ids)
        for _ in range(16):
            if budget <= 0:
                raise UserError(f"context {context} is too small for NIAH: the prompt takes {overhead} "
                                  f"tokens and the needle {len(self._needle_ids)}")
            hay = self._hay[:budget]
            tokens, at = insert_needle(hay, self._needle_ids, depth, self._is_end)
            prompt = self.template.format(context=self._tok.decode(tokens), question=self.question)
            n = self.count_tokens(prompt)
            if n <= context:
                return Built(prompt, len(hay), at, int(len(hay) * (depth / 100)) if depth < 100 else len(hay), n)
            budget -= n - context
        raise UserError(f"could not fit a NIAH prompt into {context} tokens")

    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]:
        context = int(subset)
        for index, depth in enumerate(self.depths):
            if limit is not None and index >= limit:
                return
            built = self.build(context, depth)
            yield Item(item_id=f"{context}/{depth}", subset=subset, index=index, prompt=built.prompt,
                       references=list(self.answer), max_new_tokens=self.max_new_tokens, length=context,
                       extra={"context": context, "depth": depth, "needle_at": built.needle_at,
                              "haystack_tokens": built.haystack_tokens, "input_tokens": built.input_tokens})

    # -- scoring -----------------------------------------------------------------------------
    def score(self, item: Item, prediction: str) -> float:
        return retrieved(prediction, item.references or self.answer)

    def summarize(self, records: list[dict]) -> dict:
        out = summarize_records(records)
        out["scoring"] = {"rule": SCORING, "answer": self.answer}
        return out
