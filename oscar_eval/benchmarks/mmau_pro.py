"""MMAU-Pro (paper Table 8): loader for ``test.parquet`` + local audio, per-item scoring, summary.

Groups (``--subsets``): ``open`` (category "open", judged by an LLM), ``instruction_following``
(category "instruction following", rule checks) and ``closed`` (every other category; optional,
scored with a clearly-labelled string-match fallback). The default is the paper's two groups.

Open-ended items are judged when the summary is computed, not while generating: their per-item
``score`` is null in ``records.jsonl``; :meth:`MMAUPro.summarize` asks the judge (through the on-disk
judge cache, so recomputing a summary never judges the same prompt twice) and fills the columns.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oscar_eval.benchmarks.base import Item, ItemError
from oscar_eval.benchmarks.options import Option
from oscar_eval.errors import UserError
from oscar_eval.judge import DEFAULT_JUDGE
from oscar_eval.scoring import mmau_pro as mp

GROUPS = ("open", "instruction_following", "closed")
DEFAULT_GROUPS = ("open", "instruction_following")
GROUP_ALIASES = {"open-ended": "open", "open_ended": "open", "instruction following": "instruction_following",
                 "aif": "instruction_following", "if": "instruction_following", "closed-ended": "closed",
                 "closed_ended": "closed"}
MAX_NEW_TOKENS = {"open": 1024, "instruction_following": 1024, "closed": 256}
HINT = ("download the MMAU-Pro test split (gamma-lab-umd/MMAU-Pro: test.parquet and data.zip unpacked "
        "next to it) and pass its folder with --data-dir")
CLOSED_INSTRUCTION = ("Choose a choices from the given {n} choices. Do not provide any additional "
                      "explanations or content. Output must match exactly one of the listed choices.")


def group_of(category: Any) -> str:
    """The group of a row's ``category``; anything but "open" / "instruction following" (a number too)
    is closed, as in the official evaluator."""
    cat = category.strip().lower() if isinstance(category, str) else ""
    if cat == "open":
        return "open"
    if cat == "instruction following":
        return "instruction_following"
    return "closed"


def build_prompt(question: str, choices: list[str], group: str) -> str:
    """Open-ended and instruction-following items: the question; closed: question + choices."""
    if group != "closed" or len(choices) < 2:
        return question
    lines = "".join(f"{c}\n" for c in choices)
    return f"{question}\n\nChoice: \n{lines}\n" + CLOSED_INSTRUCTION.format(n=len(choices))


class MMAUPro:
    name = "mmau_pro"
    kind = "audio"
    options = (
        Option("judge_model", "local judge model for open-ended answers", metavar="PATH",
               default=f"{DEFAULT_JUDGE} from the local Hugging Face cache"),
        Option("judge_cache", "folder of cached raw judge outputs", metavar="DIR", default="<results>/judge_cache",
               in_results="judge_cache"),
    )

    def __init__(self, data_dir: str | Path | None = None, subsets: list[str] | None = None,
                 judge_model: str | Path | None = None, judge_cache: str | Path | None = None,
                 judge: Any = None, check_audio: bool = True, max_new_tokens: int | None = None,
                 judge_parser: str = "official") -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        chosen = []
        for s in subsets or DEFAULT_GROUPS:
            key = GROUP_ALIASES.get(s.lower(), s.lower())
            if key not in GROUPS:
                raise UserError(f"unknown MMAU-Pro subset {s!r} (known: {', '.join(GROUPS)})")
            chosen.append(key)
        self._subsets = list(dict.fromkeys(chosen))
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise UserError(f"data dir {self.data_dir} does not exist; {HINT}")
        self.check_audio = check_audio
        self._judge = judge
        self._judge_model = judge_model
        self.judge_cache_dir = Path(judge_cache) if judge_cache is not None else None
        self._rows: list[tuple[int, dict]] | None = None
        self._file: Path | None = None
        self.config = {"generation": {"max_input_len": 32768}}
        self.judge_stats: dict[str, Any] = {}
        self.max_new_tokens = dict(MAX_NEW_TOKENS)
        if max_new_tokens is not None:
            if int(max_new_tokens) < 1:
                raise UserError(f"max_new_tokens must be positive, got {max_new_tokens}")
            self.max_new_tokens = dict.fromkeys(GROUPS, int(max_new_tokens))
        # Recorded in the run's settings (and its id): the audio runner always applies the processor's
        # chat template, and the generation budget per group.
        if judge_parser not in mp.JUDGE_PARSERS:
            raise UserError(f"unknown judge parser {judge_parser!r} (choose from {', '.join(mp.JUDGE_PARSERS)})")
        self.judge_parser = judge_parser
        self.settings = {"chat_template": True, "max_new_tokens": self.max_new_tokens,
                         "judge_parser": judge_parser, "sentence_splitter": mp.punkt_english()[1]}

    def subsets(self) -> list[str]:
        return list(self._subsets)

    @classmethod
    def selection(cls) -> list[str]:
        """What a run chooses among, for `oscar-eval list` (from the task config; no data needed)."""
        return [f"subsets (--subsets): {', '.join(GROUPS)} (default: {', '.join(DEFAULT_GROUPS)})"]

    @staticmethod
    def smoke_configuration() -> dict:
        """Tiny random Qwen3-Omni + generated fixture + stand-in judge (oscar_eval.smoke.mmau)."""
        from oscar_eval.smoke.mmau import smoke_configuration

        return smoke_configuration()

    # -- files ---------------------------------------------------------------------------------
    def data_file(self) -> Path:
        if self._file is not None:
            return self._file
        if self.data_dir is None:
            raise UserError(f"no --data-dir given for MMAU-Pro; {HINT}")
        for cand in (self.data_dir / "test.parquet", self.data_dir / "data" / "test.parquet"):
            if cand.is_file():
                self._file = cand
                return cand
        hits = sorted(glob.glob(str(self.data_dir / "**" / "test*.parquet"), recursive=True))
        if not hits:
            raise UserError(f"no test.parquet under {self.data_dir}; {HINT}")
        self._file = Path(hits[0])
        return self._file

    def data_files(self, subset: str) -> list[Path]:
        return [self.data_file()]

    def rows(self) -> list[tuple[int, dict]]:
        """(1-based row number, record) of the parquet file, read once."""
        if self._rows is None:
            import pyarrow.parquet as pq

            path = self.data_file()
            try:
                table = pq.read_table(path)
            except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad file
                raise UserError(f"{path}: unreadable parquet ({exc})") from None
            missing = [c for c in ("question", "category") if c not in table.column_names]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(has: {', '.join(table.column_names)})")
            self._rows = list(enumerate(table.to_pylist(), 1))
        return self._rows

    def _audio_paths(self, obj: dict, path: Path, row: int) -> list[Path]:
        raw = obj.get("audio_path")
        if raw is None:
            raw = []
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list | tuple) and not hasattr(raw, "tolist"):
            raise ValueError(f"{path.name} row {row}: 'audio_path' must be a path or a list of paths")
        out = []
        for rel in list(raw):
            if not isinstance(rel, str) or not rel.strip():
                raise ValueError(f"{path.name} row {row}: 'audio_path' entry {rel!r} is not a path")
            from oscar_eval.benchmarks.ocrbench import RowError, confined

            rel_path = Path(rel)
            try:  # every path the data names stays inside --data-dir
                cands = [confined(self.data_dir, rel_path)] if rel_path.is_absolute() else [
                    confined(self.data_dir, rel_path), confined(self.data_dir, Path("data") / rel_path)]
            except RowError as exc:
                raise ValueError(f"{path.name} row {row}: audio_path: {exc}") from None
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                if self.check_audio:
                    raise FileNotFoundError(f"{path.name} row {row}: audio file {rel} not found under "
                                            f"{self.data_dir}")
                found = cands[0]
            out.append(found)
        return out

    def item_id(self, group: str, obj: dict, row: int) -> str:
        raw = obj.get("id")
        return f"{group}/{raw}" if raw not in (None, "") else f"{group}/{self.data_file().name}:{row}"

    # -- items ---------------------------------------------------------------------------------
    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]:
        from oscar_eval.runner import one_line

        path = self.data_file()
        seen: dict[str, int] = {}
        index = 0
        for row, obj in self.rows():
            group = group_of(obj.get("category"))
            if group != subset:
                continue
            if limit is not None and index >= limit:
                return
            iid = self.item_id(group, obj, row)
            if iid in seen:  # a failed item of its own (unique id), the run goes on
                yield ItemError(f"{iid}#row{row}", group, index,
                                f"RowError: {path}:{row}: duplicate id {obj.get('id')!r} (first at row {seen[iid]})")
                index += 1
                continue
            seen[iid] = row
            try:
                yield self._make_item(group, index, path, row, obj, iid)
            except Exception as exc:  # noqa: BLE001 - one bad row never stops the benchmark
                msg = one_line(exc)
                yield ItemError(iid, group, index, msg if f"row {row}" in msg else f"{path.name} row {row}: {msg}")
            index += 1

    def _make_item(self, group: str, index: int, path: Path, row: int, obj: dict, iid: str) -> Item:
        question = obj.get("question")
        if not isinstance(question, str):
            raise ValueError(f"{path.name} row {row}: 'question' must be a string")
        if not isinstance(obj.get("category"), str):
            raise ValueError(f"{path.name} row {row}: 'category' must be a string, got {obj.get('category')!r}")
        choices = [str(c) for c in (obj.get("choices") or [])]
        answer = obj.get("answer")
        extra: dict[str, Any] = {"category": obj.get("category"), "question": question, "choices": choices,
                                 "answer": None if answer is None else str(answer)}
        if group == "instruction_following":
            tid = obj.get("task_identifier")
            if not isinstance(tid, str) or tid.strip() not in mp.AIF_CHECKS:
                raise mp.UnknownInstruction(f"{path.name} row {row}: unknown AIF task_identifier {tid!r}")
            try:
                kwargs = mp.normalize_kwargs(obj.get("kwargs"))
            except ValueError as exc:
                raise ValueError(f"{path.name} row {row}: {exc}") from None
            extra.update(task_identifier=tid.strip(), kwargs=kwargs)
        audio = self._audio_paths(obj, path, row)
        return Item(item_id=iid, subset=group, index=index, prompt=build_prompt(question, choices, group),
                    references=[] if answer is None else [str(answer)], max_new_tokens=self.max_new_tokens[group],
                    audio=audio, extra=extra)

    # -- scoring -------------------------------------------------------------------------------
    def score(self, item: Item, prediction: str) -> float | None:
        """AIF: 1/0; closed: 1/0 (string-match fallback); open: None (judged in :meth:`summarize`)."""
        if item.subset == "instruction_following":
            return float(mp.check_instruction(prediction, item.extra["task_identifier"], item.extra["kwargs"],
                                              prompt=item.extra.get("question", "")))
        if item.subset == "closed":
            return float(mp.closed_string_match(prediction, item.extra.get("answer") or "",
                                                item.extra.get("choices") or []))
        return None

    # -- judge ---------------------------------------------------------------------------------
    def judge(self) -> tuple[Any, str | None]:
        """(judge or None, error message or None); the judge's weights load only on a cache miss."""
        if self._judge is not None:
            return self._judge, None
        from oscar_eval.judge import LocalHFJudge

        ref = self._judge_model or DEFAULT_JUDGE
        judge = LocalHFJudge(ref)
        try:
            judge.id  # noqa: B018 - resolves the model folder (local only) and its revision
        except Exception as exc:  # noqa: BLE001 - no judge: the open-ended columns stay empty
            return None, (f"judge model {str(ref)!r} is not available locally ({str(exc).splitlines()[0]}); "
                          "pass --judge-model PATH (Qwen2.5-7B-Instruct in the paper)")
        self._judge = judge
        return judge, None

    def questions_by_id(self) -> dict[str, tuple[str, str]]:
        out = {}
        for row, obj in self.rows():
            group = group_of(obj.get("category"))
            if group == "open":
                ans = obj.get("answer")
                out[self.item_id(group, obj, row)] = (str(obj.get("question") or ""), "" if ans is None else str(ans))
        return out

    def judge_records(self, records: list[dict]) -> tuple[list[dict], dict]:
        """Judge every ok open-ended record (cache first); returns per-item scores and judge stats."""
        from oscar_eval.judge import JudgeCache, judge_cached

        todo = [r for r in records if r.get("subset") == "open" and r.get("status") == "ok"]
        stats: dict[str, Any] = {"id": None, "error": None, "calls": 0, "cached": 0, "unjudged": 0}
        if not todo:
            return [], stats
        judge, error = self.judge()
        stats["error"] = error
        stats["id"] = getattr(judge, "id", None) if judge is not None else None
        cache = JudgeCache(self.judge_cache_dir) if self.judge_cache_dir is not None else None
        questions = self.questions_by_id() if self.data_dir is not None else {}
        scored = []
        judge_id = stats["id"]
        for i, rec in enumerate(todo):
            question, reference = questions.get(rec["item_id"], ("", (rec.get("references") or [""])[0]))
            messages = mp.judge_messages(mp.judge_prompt(question, reference, rec.get("prediction") or ""))
            try:
                raw, cached = judge_cached(judge, cache, messages, judge_id=judge_id)
            except Exception as exc:  # noqa: BLE001 - a judge failure leaves the item unjudged
                stats["error"] = stats["error"] or f"judge failed: {type(exc).__name__}: {exc}"
                judge = None  # do not retry a broken judge for every item; cached outputs still count
                raw, cached = judge_cached(None, cache, messages, judge_id=judge_id)
            if raw is None:
                stats["unjudged"] += 1
                continue
            stats["cached" if cached else "calls"] += 1
            if not cached and (i + 1) % 50 == 0:
                print(f"mmau_pro judge: {i + 1}/{len(todo)}", file=sys.stderr)
            scored.append({"item_id": rec["item_id"], **mp.parse_judgement(raw, self.judge_parser)})
        return scored, stats

    def summarize(self, records: list[dict]) -> dict:
        ok = [r for r in records if r.get("status") == "ok"]
        groups: dict[str, dict] = {}
        aif = [r for r in ok if r.get("subset") == "instruction_following" and r.get("score") is not None]
        per_failed = {g: sum(1 for r in records if r.get("subset") == g and r.get("status") != "ok") for g in GROUPS}
        if aif or per_failed["instruction_following"]:
            n_bad = per_failed["instruction_following"]
            groups["instruction_following"] = {
                "n": len(aif), "n_failed": n_bad, "success_rate": mp.aif_column(r["score"] for r in aif),
                # the official script scores an unknown identifier (or no answer) as a failed check:
                "success_rate_failed_as_fail": mp.aif_column([r["score"] for r in aif] + [0.0] * n_bad)}
        judged, stats = self.judge_records(records)
        n_open = sum(1 for r in ok if r.get("subset") == "open")
        if n_open or per_failed["open"]:
            entry: dict[str, Any] = {"n": n_open, "n_judged": len(judged), "n_failed": per_failed["open"]}
            for c in (*mp.CRITERIA, "overall"):
                entry[f"mean_{c}"] = mp.finite_mean(s[c] for s in judged)
            groups["open"] = entry
        closed = [r for r in ok if r.get("subset") == "closed" and r.get("score") is not None]
        if closed or per_failed["closed"]:
            groups["closed"] = {"n": len(closed), "n_failed": per_failed["closed"],
                                "accuracy": mp.aif_column(r["score"] for r in closed),
                                "scorer": "string-match fallback (not the official NV-Embed matcher)"}
        # A partly judged group would give a number over a subset: the columns stay null until all are.
        open_cols = mp.open_ended_columns(s["overall"] for s in judged if not stats["unjudged"])
        columns = {**open_cols,
                   "AIF": mp.aif_column(r["score"] for r in aif)}
        out: dict[str, Any] = {"columns": columns, "groups": groups}
        if n_open:
            out["judge"] = stats
        self.judge_stats = stats
        return out
