"""LLM judges for open-ended answers, with an on-disk cache of their raw outputs.

A judge is anything with an ``id`` (a string naming the judge model, its revision and its decoding
settings) and ``generate(messages) -> str``. :class:`LocalHFJudge` runs a local Hugging Face
checkpoint (default ``Qwen/Qwen2.5-7B-Instruct`` from the local cache; never downloaded) with seeded
greedy decoding. :class:`JudgeCache` stores each raw output keyed by ``(judge id, sha256 of the
prompt)`` so that a run can be re-scored (e.g. after a parser change) without judging again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

DEFAULT_JUDGE = "Qwen/Qwen2.5-7B-Instruct"
JUDGE_MAX_NEW_TOKENS = 512


class Judge(Protocol):
    id: str

    def generate(self, messages: list[dict[str, str]]) -> str: ...


def prompt_key(messages: list[dict[str, str]]) -> str:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-+" else "-" for c in text)
    return keep.strip("-")[:120] or "judge"


class JudgeCache:
    """``<dir>/<judge slug>-<8 hex of judge id>.jsonl``: one ``{"judge", "key", "output"}`` per line."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self._loaded: dict[str, dict[str, str]] = {}

    def path(self, judge_id: str) -> Path:
        digest = hashlib.sha256(judge_id.encode()).hexdigest()[:8]
        return self.dir / f"{_slug(judge_id)}-{digest}.jsonl"

    def _table(self, judge_id: str) -> dict[str, str]:
        if judge_id not in self._loaded:
            table: dict[str, str] = {}
            path = self.path(judge_id)
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a half-written last line from a killed process
                    if isinstance(rec, dict) and rec.get("judge") == judge_id and "key" in rec:
                        table[str(rec["key"])] = str(rec.get("output", ""))
            self._loaded[judge_id] = table
        return self._loaded[judge_id]

    def get(self, judge_id: str, key: str) -> str | None:
        return self._table(judge_id).get(key)

    def put(self, judge_id: str, key: str, output: str) -> None:
        table = self._table(judge_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(judge_id)
        # A killed writer may have left a partial last line: start a fresh line in that case.
        prefix = ""
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                prefix = "" if f.read(1) == b"\n" else "\n"
        line = prefix + json.dumps({"judge": judge_id, "key": key, "output": output}, ensure_ascii=False) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        table[key] = output


def judge_cached(judge: Judge | None, cache: JudgeCache | None, messages: list[dict[str, str]],
                 judge_id: str | None = None) -> tuple[str | None, bool]:
    """``(raw output, from_cache)``; ``(None, False)`` when not cached and no judge can run."""
    jid = judge.id if judge is not None else judge_id
    key = prompt_key(messages)
    if cache is not None and jid is not None:
        hit = cache.get(jid, key)
        if hit is not None:
            return hit, True
    if judge is None:
        return None, False
    output = judge.generate(messages)
    if cache is not None:
        cache.put(judge.id, key, output)
    return output, False


class LocalHFJudge:
    """A local causal LM as judge: chat template, greedy, ``max_new_tokens`` 512, seeded per call.

    The model is resolved (local folder or the local Hugging Face cache, no download) when ``id`` is
    first needed, and its weights are loaded only on the first cache miss.
    """

    def __init__(self, model: str | Path = DEFAULT_JUDGE, device: str = "auto", dtype: str = "auto",
                 seed: int = 42, max_new_tokens: int = JUDGE_MAX_NEW_TOKENS) -> None:
        self.model_ref = str(model)
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self._path: Path | None = None
        self._id: str | None = None
        self._loaded: Any = None
        self.calls = 0

    @property
    def path(self) -> Path:
        if self._path is None:
            from oscar_eval.models import resolve_model_path

            self._path = resolve_model_path(self.model_ref)
        return self._path

    @property
    def id(self) -> str:  # type: ignore[override]
        if self._id is None:
            from oscar_eval.provenance import model_revision

            name = self.path.name
            if "snapshots" in self.path.parts:  # hub cache: models--Org--Name/snapshots/<commit>
                name = self.path.parent.parent.name.removeprefix("models--").replace("--", "/")
            self._id = f"{name}@{model_revision(self.path)}|greedy|max_new_tokens={self.max_new_tokens}"
        return self._id

    def _load(self):
        if self._loaded is None:
            from oscar_eval.models import load_model

            self._loaded = load_model(self.path, device=self.device, dtype=self.dtype)
        return self._loaded

    def generate(self, messages: list[dict[str, str]]) -> str:
        import torch

        from oscar_eval.models import seed_everything

        loaded = self._load()
        tok, model = loaded.tokenizer, loaded.model
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded.device)
        seed_everything(self.seed)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 num_beams=1, max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        self.calls += 1
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def close(self) -> None:
        self._loaded = None
