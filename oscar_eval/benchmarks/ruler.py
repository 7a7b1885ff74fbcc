"""RULER (NVIDIA/RULER, the benchmark kvpress ranks KV-cache methods with): its synthetic tasks generated
offline as the official generator does, following the repository at commit
c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a (templates, answer prefixes, generation lengths and metrics
in ``tasks/ruler.yaml``; generators in :mod:`oscar_eval.benchmarks.ruler_tasks`; scoring in
:mod:`oscar_eval.scoring.ruler`). Facts of that code, re-expressed; none of it is copied.

Sizing, as the official ``max_seq_length``: a context of ``C`` tokens holds the whole prompt (task
text and answer prefix, counted with the model's tokenizer exactly as the model runner feeds it, BOS
and ``--chat-template`` included) plus the task's ``tokens_to_generate``. The haystack size (words
for essays, lines for noise and needle haystacks, words for cwe/fwe, documents for qa) is the largest
whose prompt fits, searched once per task and context on a dedicated seed; each sample then starts
there and steps down by the official increment until it fits (then bisects back up inside that step;
see :func:`~oscar_eval.benchmarks.ruler_tasks.fit_sample`). fwe keeps its own official search (grow
from ``max_len / 6`` words by ``max_len / 32``, then shrink per sample). ``4k`` means 4096 here.

Determinism: sample ``i`` of task ``t`` at context ``C`` draws from ``random.Random("ruler/<seed>/t/C/i")``,
so items (ids ``t/C/i``) are the same on every run and with any ``--limit``.

Haystacks: the noise sentence and the needle distractors are built in; the essay tasks (niah_single_2/3,
niah_multikey_1, niah_multivalue, niah_multiquery) read ``--haystack FILE`` (RULER: Paul Graham's
essays, not fetchable here; the file's hash goes into the provenance) or ``--haystack
stdlib-docstrings``: prose paragraphs of the Python standard library's docstrings, recorded as NOT the
official haystack with its hash and Python version. Essays are split into sentences with nltk's Punkt
and its English model, as RULER's ``sent_tokenize`` (recorded).
Without a haystack the essay tasks are left out (and named on stderr). qa_1/qa_2 run only when asked
for with ``--tasks`` and read ``squad.json`` / ``hotpotqa.json`` (RULER's names) from ``--data-dir``.

Deviation: with ``--chat-template`` the answer prefix stays at the end of the user message (RULER puts
it after the assistant header of its model templates); the default, no chat template, is RULER's
``base`` template exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from oscar_eval.benchmarks import load_task_config
from oscar_eval.benchmarks import ruler_tasks as rt
from oscar_eval.benchmarks.base import Item, ItemError, data_file
from oscar_eval.benchmarks.options import Option
from oscar_eval.benchmarks.stdlib_text import PROSE_MODULES as STDLIB_MODULES
from oscar_eval.errors import UserError
from oscar_eval.scoring import ruler as scoring
from oscar_eval.token_counts import parse_contexts

SMOKE_DATA = Path(__file__).resolve().parents[1] / "data" / "ruler_smoke"
STDLIB_HAYSTACK = "stdlib-docstrings"
SCORING = ("RULER string match (scripts/eval/synthetic/constants.py): case-insensitive substring test of "
           "each reference in the stripped prediction; string_match_all = fraction of references found "
           "(niah, vt, cwe, fwe), string_match_part = 1 if any is found (qa); x100, mean per task")


def load_config(path: Path | None = None) -> dict:
    return load_task_config("ruler.yaml", path)


# -- haystacks -----------------------------------------------------------------------------------
def stdlib_docstrings() -> str:
    """Prose paragraphs of the docstrings of ``STDLIB_MODULES`` (:mod:`oscar_eval.benchmarks.stdlib_text`)."""
    from oscar_eval.benchmarks.stdlib_text import prose_paragraphs

    return prose_paragraphs(STDLIB_MODULES)


def sentence_splitter() -> tuple[Callable[[str], list[str]], str]:
    """RULER's ``sent_tokenize``: NLTK's Punkt with its English model (:mod:`oscar_eval.scoring.sentences`)."""
    from oscar_eval.scoring.sentences import punkt_english

    return punkt_english()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


class Ruler:
    """RULER's synthetic tasks, sized in the model's own tokens (:meth:`use_tokenizer` first)."""

    name = "ruler"
    kind = "text"
    options = (
        Option("contexts", "context lengths in tokens, comma-separated; 1k = 1024 tokens in every command "
               "(RULER's 4k = 4096)", metavar="LIST", default="tasks/ruler.yaml"),
        Option("haystack", "the essay haystack, a text file or 'stdlib-docstrings' (the Python standard library's "
               "docstrings, NOT RULER's Paul Graham essays)", metavar="FILE",
               default="none, and the essay tasks are left out"),
        Option("tasks", "tasks, comma-separated (or --subsets)", metavar="LIST",
               default="all but qa_1/qa_2, which need squad.json / hotpotqa.json in --data-dir"),
    )
    needs_data_dir = False  # items are generated; --data-dir only holds the optional qa files

    def __init__(self, data_dir: str | Path | None = None, subsets: Sequence[str] | None = None,
                 contexts: Any = None, tasks: Any = None, haystack: str | Path | None = None,
                 num_samples: int | None = None, config: dict | None = None) -> None:
        self.config = cfg = config or load_config()
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.seed = int(cfg["seed"])
        self.num_samples = int(num_samples or cfg["num_samples"])
        self.contexts = parse_contexts(contexts or cfg["contexts"])
        self.families: dict = cfg["families"]
        self.task_cfg: dict = cfg["tasks"]
        self.haystack_file, self.haystack_kind = self._resolve_haystack(haystack)
        self.tasks = self._select_tasks(tasks if tasks is not None else subsets)
        self._qa: dict[str, rt.QAData] = {}
        self._qa_files: dict[str, Path] = {}
        for task in self.tasks:
            if self.task_cfg[task]["family"] == "qa":
                self._load_qa(task)
        # Loaded whatever --tasks picks, so that the run id (which holds them) does not depend on it.
        self._essay: list[str] | None = None
        self._haystack_info: dict = {"kind": "none"}
        self._split, self._splitter = sentence_splitter()
        if self.haystack_kind is not None:
            self._load_essay()
        self._tok = None
        self._counter = None
        self._sizes: dict[tuple[str, int], int] = {}
        self._vt_examples: dict[str, str] = {}

    # -- configuration ------------------------------------------------------------------------------
    @classmethod
    def selection(cls) -> list[str]:
        """What a run chooses among, for `oscar-eval list` (from the task config; no data needed)."""
        cfg = load_config()
        qa = [t for t, c in cfg["tasks"].items() if c["family"] == "qa"]
        return [f"tasks (--tasks or --subsets; default all but {', '.join(qa)}): {', '.join(cfg['tasks'])}",
                f"contexts (--contexts, tokens, 1k = 1024; default): {', '.join(map(str, cfg['contexts']))}"]

    @classmethod
    def smoke_configuration(cls) -> dict:
        smoke = load_config().get("smoke", {})
        return {
            # Contexts and tasks are said by the run from the benchmark as built (overrides applied).
            "description": (f"tiny random-weight Llama + RULER's synthetic tasks, {smoke['num_samples']} sample(s) "
                            f"per task, essay haystack from the fixture {SMOKE_DATA / smoke['haystack']}"),
            "data_dir": SMOKE_DATA,
            "max_input_len": int(smoke["max_input_len"]),
            "options": {"contexts": list(smoke["contexts"]), "num_samples": int(smoke["num_samples"]),
                        "haystack": str(smoke["haystack"])},
        }

    @classmethod
    def default_data(cls, options: dict, model: Any) -> tuple[Path | None, dict]:
        """The data dir without --data-dir: the folder of ``--haystack FILE``; else with --model, the folder
        of the wonderwords word lists the tasks draw from (items are generated; nothing else is read);
        without: None (the smoke run)."""
        haystack = options.get("haystack")
        if haystack and str(haystack) != STDLIB_HAYSTACK:
            return Path(haystack).expanduser().resolve().parent, options
        if model is None:
            return None, options
        import wonderwords

        return Path(wonderwords.__file__).resolve().parent / "assets", options

    @property
    def settings(self) -> dict:
        """What changes the items or scores besides the model and method (part of the run id)."""
        return {"ruler": {"source": self.config["source"], "seed": self.seed, "num_samples": self.num_samples,
                          "families": self.families, "tasks": self.task_cfg, "noise": self.config["noise"],
                          "haystack": self._haystack_info, "sentence_splitter": self._splitter,
                          "wonderwords": _version("wonderwords"), "scoring": SCORING}}

    def _resolve_haystack(self, haystack: str | Path | None) -> tuple[Path | None, str | None]:
        if haystack is None:
            return None, None
        if str(haystack) == STDLIB_HAYSTACK:
            return None, STDLIB_HAYSTACK
        return data_file(haystack, self.data_dir, "haystack file", self.config["data"]["hint"]), "file"

    def _select_tasks(self, wanted: Any) -> list[str]:
        known = list(self.task_cfg)
        if wanted:
            names = [t.strip() for t in (wanted.split(",") if isinstance(wanted, str) else wanted) if t.strip()]
            unknown = [t for t in names if t not in self.task_cfg]
            if unknown:
                raise UserError(f"--tasks: unknown RULER task {unknown[0]!r} (known: {', '.join(known)})")
            chosen = [t for t in known if t in names]
            if self.haystack_kind is None:
                essay = [t for t in chosen if self.task_cfg[t]["args"].get("type_haystack") == "essay"]
                if essay:
                    raise UserError(f"--tasks {essay[0]}: needs an essay haystack; {self.config['data']['hint']}")
            return chosen
        chosen = [t for t in known if self.task_cfg[t]["family"] != "qa"]
        if self.haystack_kind is None:
            left = [t for t in chosen if self.task_cfg[t]["args"].get("type_haystack") == "essay"]
            chosen = [t for t in chosen if t not in left]
            print(f"ruler: left out {', '.join(left)}: no essay haystack (--haystack FILE or --haystack "
                  f"{STDLIB_HAYSTACK})", file=sys.stderr)
        return chosen

    def _load_essay(self) -> None:
        if self.haystack_kind == STDLIB_HAYSTACK:
            text = stdlib_docstrings()
            self._haystack_info = {"kind": STDLIB_HAYSTACK, "official": False,
                                   "note": "NOT RULER's haystack (Paul Graham essays): Python standard "
                                           "library docstrings, prose paragraphs",
                                   "python": sys.version.split()[0]}
        else:
            text = self.haystack_file.read_text(encoding="utf-8", errors="replace")
            self._haystack_info = {"kind": "file", "official": "unknown", "file": self.haystack_file.name}
        self._essay = rt.essay_words(text)
        if not self._essay:
            raise UserError(f"haystack {self.haystack_file or STDLIB_HAYSTACK} has no text")
        self._haystack_info.update({"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                                    "words": len(self._essay)})

    def _load_qa(self, task: str) -> None:
        dataset = self.task_cfg[task]["args"]["dataset"]
        fname = self.config["data"][dataset]
        if self.data_dir is None or not (self.data_dir / fname).is_file():
            where = f"{self.data_dir / fname}" if self.data_dir is not None else f"--data-dir DIR/{fname}"
            raise UserError(f"{task} needs the {dataset} file {where} (RULER's download_qa_dataset.sh: "
                              f"{fname}); pass its folder with --data-dir")
        path = self.data_dir / fname
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            data = rt.read_squad(raw) if dataset == "squad" else rt.read_hotpotqa(raw)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a {dataset} file as RULER reads it ({type(exc).__name__}: {exc})") \
                from None
        if not data.questions:
            raise UserError(f"{path}: no answerable questions")
        self._qa[task], self._qa_files[task] = data, path

    def subsets(self) -> list[str]:
        return [f"{t}/{c}" for t in self.tasks for c in self.contexts]

    def data_files(self, subset: str) -> list[Path]:
        task = subset.split("/")[0]
        args = self.task_cfg[task]["args"]
        if args.get("type_haystack") == "essay" and self.haystack_file is not None:
            return [self.haystack_file]
        return [self._qa_files[task]] if task in self._qa_files else []

    # -- tokenizer-dependent construction --------------------------------------------------------------
    def use_tokenizer(self, model_path: str | Path, chat_template: bool = False,
                      max_input_len: int | None = None, tokenizer: Any = None) -> None:
        from oscar_eval.benchmarks.base import sized_prompt_counter

        tokenizer, self._counter = sized_prompt_counter(model_path, self.contexts, max_input_len, chat_template,
                                                        "RULER", tokenizer)
        self._tok = tokenizer
        self._sizes, self._vt_examples = {}, {}

    def count_tokens(self, prompt: str) -> int:
        """Tokens the model is fed for ``prompt`` (BOS and chat template included)."""
        if self._counter is None:
            raise RuntimeError("Ruler.use_tokenizer() first")
        ids, _, _ = self._counter.build_inputs(Item("", "", 0, prompt, [], 1))
        return len(ids)

    def _rng(self, task: str, context: int, index: int | str) -> random.Random:
        return random.Random(f"ruler/{self.seed}/{task}/{context}/{index}")

    def _increment(self, task: str, context: int) -> int:
        family, args = self.task_cfg[task]["family"], self.task_cfg[task]["args"]
        if family == "niah":
            if args["type_haystack"] == "essay":
                return 500
            return 5 if context < 4096 else 25
        if family == "variable_tracking":
            return 5 if context < 4096 else 10
        return 10  # cwe, qa

    def _maker(self, task: str, context: int, index: int) -> Callable[[int, random.Random], rt.Generated]:
        """``make(n, rng)``: sample ``index`` of ``task`` at haystack size ``n``."""
        family_name, args = self.task_cfg[task]["family"], self.task_cfg[task]["args"]
        family = self.families[family_name]
        noise = self.config["noise"]
        if family_name == "niah":
            return lambda n, rng: rt.niah(family, args, n, rng, seed=self.seed, noise=noise, essay=self._essay,
                                          split_sentences=self._split)
        if family_name == "variable_tracking":
            example = self._vt_example(task)
            hops = int(args["num_hops"])

            def make_vt(n: int, rng: random.Random) -> rt.Generated:
                shown = rt.randomize_example(example, hops, rng)
                return rt.variable_tracking(family, args, n, rng, noise=noise, example=shown)
            return make_vt
        if family_name == "common_words_extraction":
            return lambda n, rng: rt.common_words(family, args, n, rng, seed=self.seed, max_seq_length=context)
        if family_name == "qa":
            data = self._qa[task]
            return lambda n, rng: rt.qa(family, data, index, n, rng, seed=self.seed)
        raise ValueError(f"RULER family {family_name!r} has no generator")

    def _vt_example(self, task: str) -> str:
        """variable_tracking.py's in-context example: the task with 3-letter names and value 12345,
        its noise sized to 500 tokens (no generation tokens), followed by its answer."""
        if task not in self._vt_examples:
            family, args = self.families["variable_tracking"], self.task_cfg[task]["args"]
            rng_seed = f"ruler/{self.seed}/{task}/example"

            def make(n: int) -> rt.Generated:
                return rt.variable_tracking(family, args, n, random.Random(rng_seed), noise=self.config["noise"],
                                            icl=True)

            def raw(g: rt.Generated) -> int:
                return len(self._tok(g.prompt, add_special_tokens=False)["input_ids"])

            n = rt.largest_fitting(lambda k: raw(make(k)) <= 500, 5) or 5
            self._vt_examples[task] = rt.vt_example_text(make(n))
        return self._vt_examples[task]

    def _budget(self, task: str, context: int) -> int:
        return context - int(self.families[self.task_cfg[task]["family"]]["tokens_to_generate"])

    def _too_small(self, task: str, context: int, size: int) -> Exception:
        gen = self.families[self.task_cfg[task]["family"]]["tokens_to_generate"]
        return UserError(f"context {context} is too small for RULER task {task}: the prompt with the "
                           f"smallest haystack ({size}) plus {gen} generated tokens does not fit")

    def _size(self, task: str, context: int) -> int:
        """The haystack size of ``task`` at ``context``: the largest that fits, on the search seed."""
        key = (task, context)
        if key not in self._sizes:
            step, budget = self._increment(task, context), self._budget(task, context)
            make = self._maker(task, context, 0)  # qa: the official searches on question 0

            def fits(n: int) -> bool:
                try:
                    return self.count_tokens(make(n, self._rng(task, context, "search")).prompt) <= budget
                except rt.Exhausted:
                    return False

            n = rt.largest_fitting(fits, step)
            if n is None:
                raise self._too_small(task, context, step)
            if self.task_cfg[task]["family"] == "common_words_extraction" and n >= len(rt.cwe_vocabulary(self.seed)):
                raise UserError(f"context {context} is too long for cwe here: it needs more distinct words "
                                  f"than the wonderwords lists hold ({len(rt.cwe_vocabulary(self.seed))}); RULER "
                                  "then uses its english_words.json, which oscar-eval does not ship")
            self._sizes[key] = n
        return self._sizes[key]

    def build(self, task: str, context: int, index: int) -> tuple[rt.Generated, int, int]:
        """(sample, haystack size, input tokens) of sample ``index``; the prompt + generation fit ``context``."""
        if self._counter is None:
            raise RuntimeError("Ruler.use_tokenizer() first")
        if task not in self.task_cfg:
            raise UserError(f"unknown RULER task {task!r}")
        if self.task_cfg[task]["family"] == "freq_words_extraction":
            return self._build_fwe(task, context, index)
        step, budget = self._increment(task, context), self._budget(task, context)
        make = self._maker(task, context, index)
        got = rt.fit_sample(lambda n: make(n, self._rng(task, context, index)),
                            lambda g: self.count_tokens(g.prompt), budget, self._size(task, context), step, step)
        if got is None:
            raise self._too_small(task, context, step)
        sample, size = got
        return sample, size, self.count_tokens(sample.prompt)

    def _build_fwe(self, task: str, context: int, index: int) -> tuple[rt.Generated, int, int]:
        """freq_words_extraction.py's sizing: vocabulary of max_len // 50 words; the word count grows from
        max_len // coded_wordlen by max_len // 32 while the text is shorter than max_len, then steps back;
        each sample shrinks by the same step until it fits."""
        args, family = self.task_cfg[task]["args"], self.families["freq_words_extraction"]
        max_len = self._budget(task, context)
        word_len, alpha = int(args["coded_wordlen"]), float(args["alpha"])
        vocab_size, step = max_len // 50, max_len // 32
        if vocab_size < 4 or step < 1:
            raise self._too_small(task, context, 0)

        def text(rng: random.Random, n: int) -> rt.Generated:
            vocab = rt.fwe_vocabulary(rng, self.seed, vocab_size, word_len)
            return rt.freq_words(family, vocab, n, seed=self.seed, alpha=alpha)

        key = (task, context)
        if key not in self._sizes:
            n = max_len // word_len
            while self.count_tokens(text(self._rng(task, context, "search"), n).prompt) < max_len:
                n += step
            self._sizes[key] = n - step
        n = self._sizes[key]
        while True:
            if n <= 0:
                raise self._too_small(task, context, 0)
            sample = text(self._rng(task, context, index), n)
            tokens = self.count_tokens(sample.prompt)
            if tokens <= max_len:
                return sample, n, tokens
            n -= step

    def n_items(self, subset: str) -> int:
        """Samples of ``subset`` without --limit, without generating them."""
        task = subset.partition("/")[0]
        return min(self.num_samples, len(self._qa[task].questions)) if task in self._qa else self.num_samples

    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]:
        task, _, ctx = subset.partition("/")
        context = int(ctx)
        family = self.families[self.task_cfg[task]["family"]]
        count = self.n_items(subset) if limit is None else min(limit, self.n_items(subset))
        for index in range(count):
            sample, size, tokens = self.build(task, context, index)
            yield Item(item_id=f"{task}/{context}/{index}", subset=subset, index=index, prompt=sample.prompt,
                       references=list(sample.answers), max_new_tokens=int(family["tokens_to_generate"]),
                       length=context,
                       extra={"task": task, "context": context, "metric": family["metric"],
                              "answer_prefix": sample.answer_prefix, "haystack_size": size,
                              "input_tokens": tokens})

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, item: Item, prediction: str) -> float:
        task = item.extra.get("task") or item.item_id.split("/")[0]
        metric = self.families[self.task_cfg[task]["family"]]["metric"]
        return scoring.score(metric, prediction, item.references)

    def summarize(self, records: list[dict]) -> dict:
        out = scoring.summarize_records(records, list(self.task_cfg))
        out["scoring"] = {"rule": SCORING, "source": self.config["source"]}
        return out
