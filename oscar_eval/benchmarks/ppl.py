"""Perplexity through the KV cache (KIVI / KVQuant style): documents, per-document metrics, the summary.

The measurement itself (prompt in full precision, continuation teacher-forced through the method's
cache, a plain forward as the reference) is :mod:`oscar_eval.models.ppl`; this module supplies the
documents and aggregates.

Documents:

- ``--text FILE [FILE ...]``: a ``.jsonl`` file holds one document per non-blank line, a JSON object
  with a string ``"text"`` field (other fields ignored; item id ``<file>:<line>``); any other file is one
  document, its whole UTF-8 text (item id ``<file>``). ``--data-dir DIR`` without ``--text``: every
  ``*.txt`` and ``*.jsonl`` file of ``DIR``, sorted by name.
- Neither: documents built from the docstrings of a fixed list of Python standard-library modules
  (``tasks/ppl.yaml``: ``stdlib.modules``), which every CPython installation has. A module's text is its
  docstring, then the docstrings of the public classes (each followed by its public methods') and
  functions defined at its top level, sorted by name, joined by blank lines, read from the source file
  (:func:`module_text` says why). Modules are taken in the listed order and
  concatenated into one document until it holds at least ``stdlib.min_chars`` characters; the next
  module starts the next document (a short remainder is still a document: it fails the length check
  like any other). The text depends on the Python version, which the settings record with the module
  groups and the sha256 of the text (part of the run id); the manifest hashes the module source files.

Each document is tokenized whole (the tokenizer's BOS included where it adds one); its first ``P``
tokens (``--prompt-tokens``) are the prompt and the next ``N`` (``--scored-tokens``) are scored, the rest
is not used. A document with fewer than ``P + N`` tokens is a failed record naming it, never dropped.

Summary: token-weighted over the documents (every document contributes exactly ``N`` tokens): mean NLL
(nats), PPL = exp(mean NLL), mean KL(fp16 reference || method), top-1 agreement with the reference, the
reference's own PPL; the same for the ``N - 1`` cached steps alone (``cached``: the scored tokens the
cache can affect; the first is predicted by the full-precision prompt forward), and per document.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oscar_eval.benchmarks import load_task_config
from oscar_eval.benchmarks.base import Item, ItemError, data_file, load_tokenizer
from oscar_eval.benchmarks.options import Option
from oscar_eval.benchmarks.stdlib_text import module_file, module_text
from oscar_eval.errors import UserError

STDLIB_SOURCE = "python-stdlib-docstrings"
FIRST_TOKEN = ("the first continuation token is predicted by the full-precision prompt forward: included in "
               "the totals and also reported apart ('first'); 'cached' covers the other N-1")
REFERENCE = ("one plain forward over the P+N tokens, use_cache=False, with the model as prepared for the "
             "method (fused V/O rotation = the same function)")


def load_config(path: Path | None = None) -> dict:
    return load_task_config("ppl.yaml", path)


# -- standard-library documents ----------------------------------------------------------------------
def stdlib_documents(modules: Sequence[str], min_chars: int) -> list[tuple[list[str], str]]:
    """``[(module names, text)]``: modules in order, concatenated until ``min_chars`` characters each."""
    docs: list[tuple[list[str], str]] = []
    names: list[str] = []
    texts: list[str] = []
    for name in modules:
        names.append(name)
        texts.append(module_text(name))
        if sum(map(len, texts)) + 2 * (len(texts) - 1) >= min_chars:
            docs.append((names, "\n\n".join(texts)))
            names, texts = [], []
    if names:
        docs.append((names, "\n\n".join(texts)))
    return docs


def stdlib_dir(modules: Sequence[str]) -> Path:
    """The folder holding the listed modules' sources (the run's data dir in stdlib mode)."""
    return Path(os.path.commonpath([str(module_file(m).parent) for m in modules]))


# -- user documents ----------------------------------------------------------------------------------
@dataclass
class Document:
    doc_id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


def read_documents(path: Path, doc_id: str) -> list[Document | ItemError]:
    """One file: a JSONL of ``{"text": ...}`` lines, or one whole-file document (see the module doc)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [ItemError(doc_id, "text", 0, f"cannot read {path}: {exc}")]
    if path.suffix.lower() != ".jsonl":
        return [Document(doc_id, raw)]
    out: list[Document | ItemError] = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        item_id = f"{doc_id}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(ItemError(item_id, "text", lineno, f"{path} line {lineno} is not JSON: {exc.msg}"))
            continue
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            out.append(ItemError(item_id, "text", lineno,
                                 f"{path} line {lineno} has no string \"text\" field"))
            continue
        out.append(Document(item_id, text))
    return out


def _positive(name: str, value: Any, least: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--{name} must be an integer, got {value!r}") from None
    if n < least or str(n) != str(value).strip():
        raise UserError(f"--{name} must be an integer of at least {least}, got {value!r}")
    return n


def summarize_records(records: list[dict]) -> dict:
    """Token-weighted means over the documents (see the module doc), and per document."""
    latest = {r.get("item_id"): r for r in records}  # a retried item: its latest record counts
    docs = [r for r in latest.values() if r.get("status") == "ok" and isinstance(r.get("metrics"), dict)]
    out: dict[str, Any] = {"n_documents": len(docs), "documents": {}}
    tokens = sum(int(r["metrics"]["scored_tokens"]) for r in docs)
    cached = sum(int(r["metrics"]["cached"]["tokens"]) for r in docs)

    def weighted(get, n_of, total: int) -> float | None:
        return sum(get(r["metrics"]) * n_of(r["metrics"]) for r in docs) / total if total else None

    def n_all(m):
        return m["scored_tokens"]

    def n_cached(m):
        return m["cached"]["tokens"]

    nll = weighted(lambda m: m["nll"], n_all, tokens)
    ref = weighted(lambda m: m["ref_nll"], n_all, tokens)
    c_nll = weighted(lambda m: m["cached"]["nll"], n_cached, cached)
    out.update({
        "n_tokens": tokens, "nll": nll, "ppl": None if nll is None else math.exp(nll),
        "kl": weighted(lambda m: m["kl"], n_all, tokens), "top1": weighted(lambda m: m["top1"], n_all, tokens),
        "ref_nll": ref, "ref_ppl": None if ref is None else math.exp(ref),
        "cached": {"n_tokens": cached, "nll": c_nll, "ppl": None if c_nll is None else math.exp(c_nll),
                   "kl": weighted(lambda m: m["cached"]["kl"], n_cached, cached),
                   "top1": weighted(lambda m: m["cached"]["top1"], n_cached, cached)},
    })
    for r in docs:
        m = r["metrics"]
        out["documents"][r["item_id"]] = {k: m[k] for k in ("scored_tokens", "nll", "ppl", "kl", "top1",
                                                               "ref_ppl")}
    top1 = out["top1"]
    out["columns"] = {"PPL": out["ppl"], "fp16 PPL": out["ref_ppl"], "KL": out["kl"],
                      "top-1 %": None if top1 is None else 100.0 * top1}
    out["average"] = out["ppl"]  # the headline number (lower is better)
    return out


class Perplexity:
    """Perplexity, KL and top-1 agreement through each method's cache, per document."""

    name = "ppl"
    kind = "ppl"
    options = (
        Option("text", 'documents (a .jsonl file: one {"text": ...} per line; any other file: one document)',
               nargs="+", metavar="FILE", default="built from the Python standard library's docstrings"),
        Option("prompt_tokens", "prompt tokens attended in full precision", type=int, metavar="P",
               default="tasks/ppl.yaml"),
        Option("scored_tokens", "continuation tokens scored per document, teacher-forced through the cache",
               type=int, metavar="N", default="tasks/ppl.yaml"),
    )

    def __init__(self, data_dir: str | Path | None = None, subsets: Sequence[str] | None = None,
                 text: str | Path | Sequence[str | Path] | None = None, prompt_tokens: int | None = None,
                 scored_tokens: int | None = None, stdlib: bool = False, config: dict | None = None) -> None:
        self.config = cfg = config or load_config()
        if subsets:
            raise UserError("ppl has no subsets; choose documents with --text FILE (or --limit N)")
        self.prompt_tokens = _positive("prompt-tokens", cfg["prompt_tokens"] if prompt_tokens is None
                                       else prompt_tokens, 1)
        self.scored_tokens = _positive("scored-tokens", cfg["scored_tokens"] if scored_tokens is None
                                       else scored_tokens, 2)  # 1 would score nothing through the cache
        # The sequence length of every document: bits per element are accounted at it.
        self.config = {**cfg, "generation": {**cfg.get("generation", {}),
                                             "max_input_len": self.prompt_tokens + self.scored_tokens}}
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        self.stdlib = bool(stdlib) and not text
        self._tok = None
        hint = cfg["data"]["hint"]
        if self.stdlib:
            std = cfg["stdlib"]
            self.modules = [str(m) for m in std["modules"]]
            self._stdlib = stdlib_documents(self.modules, int(std["min_chars"]))
            self._files = [module_file(m) for m in self.modules]
            return
        if text:
            paths = [text] if isinstance(text, (str, Path)) else list(text)
            self._files = list(dict.fromkeys(data_file(p, self.data_dir, "text file", hint) for p in paths))
        elif self.data_dir is not None:
            if not self.data_dir.is_dir():
                raise UserError(f"data dir {self.data_dir} does not exist; {hint}")
            self._files = sorted(p for p in self.data_dir.iterdir() if p.suffix.lower() in (".txt", ".jsonl"))
            if not self._files:
                raise UserError(f"no *.txt or *.jsonl file in {self.data_dir}; {hint}")
        else:
            raise UserError(f"no --text or --data-dir given for ppl; {hint}")
        if self.data_dir is None:
            self.data_dir = Path(os.path.commonpath([str(p.parent) for p in self._files]))

    # -- configuration -----------------------------------------------------------------------
    @classmethod
    def default_data(cls, options: dict, model: Any) -> tuple[Path | None, dict]:
        """The data dir when --data-dir is not given: the --text files' folder; with --model and no
        --text, the standard library's (stdlib documents); neither: None (the smoke configuration)."""
        text = options.get("text")
        if text:
            paths = [text] if isinstance(text, (str, Path)) else list(text)
            return Path(os.path.commonpath([str(Path(p).expanduser().resolve().parent) for p in paths])), options
        if model is None:
            return None, options
        return stdlib_dir(load_config()["stdlib"]["modules"]), {**options, "stdlib": True}

    @classmethod
    def selection(cls) -> list[str]:
        """What a run chooses among, for `oscar-eval list` (from the task config; no data needed)."""
        cfg = load_config()
        return ["documents (--text FILE...; default: the Python standard library's docstrings)",
                f"tokens per document (default): --prompt-tokens {cfg['prompt_tokens']}, "
                f"--scored-tokens {cfg['scored_tokens']}"]

    @classmethod
    def smoke_configuration(cls) -> dict:
        cfg = load_config()
        smoke = cfg["smoke"]
        return {
            # The token budgets are said by the run from the benchmark as built (overrides applied).
            "description": "tiny random-weight Llama + the built-in Python standard-library documents",
            "data_dir": stdlib_dir(cfg["stdlib"]["modules"]),
            "options": {"stdlib": True, "prompt_tokens": int(smoke["prompt_tokens"]),
                        "scored_tokens": int(smoke["scored_tokens"])},
        }

    def _documents_provenance(self) -> dict:
        if self.stdlib:
            h = hashlib.sha256()
            for names, text in self._stdlib:
                h.update("+".join(names).encode() + b"\0" + text.encode("utf-8") + b"\0")
            return {"source": STDLIB_SOURCE, "python": platform.python_version(),
                    "implementation": platform.python_implementation(),
                    "min_chars": int(self.config["stdlib"]["min_chars"]),
                    "documents": ["+".join(names) for names, _ in self._stdlib], "sha256": h.hexdigest()}
        from oscar_eval.provenance import sha256_file

        return {"source": "files", "format": "*.jsonl: one {'text': ...} per line; other files: one document",
                "files": {self._rel(p): sha256_file(p) for p in self._files}}

    @property
    def settings(self) -> dict:
        """What changes the results besides the model and the method (part of the run id)."""
        return {"ppl": {"prompt_tokens": self.prompt_tokens, "scored_tokens": self.scored_tokens,
                        "first_token": FIRST_TOKEN, "reference": REFERENCE, "teacher_forcing": True,
                        "documents": self._documents_provenance()}}

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.data_dir).as_posix()

    def subsets(self) -> list[str]:
        return ["stdlib" if self.stdlib else "text"]

    def data_files(self, subset: str) -> list[Path]:
        return list(self._files)

    # -- documents ----------------------------------------------------------------------------
    def use_tokenizer(self, model_path: str | Path, chat_template: bool = False,
                      max_input_len: int | None = None, tokenizer: Any = None) -> None:
        """The model's tokenizer (local files only): documents are measured in its tokens."""
        need = self.prompt_tokens + self.scored_tokens
        if chat_template:
            raise UserError("--chat-template does not apply to ppl: documents are scored as raw text")
        if max_input_len is not None and max_input_len < need:
            raise UserError(f"--max-input-len {max_input_len} is below --prompt-tokens + --scored-tokens "
                              f"= {need}")
        self._tok = tokenizer if tokenizer is not None else load_tokenizer(model_path)

    def documents(self) -> list[Document | ItemError]:
        if self.stdlib:
            return [Document("stdlib:" + "+".join(names), text, {"modules": names})
                    for names, text in self._stdlib]
        return [d for p in self._files for d in read_documents(p, self._rel(p))]

    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]:
        from oscar_eval.models.ppl import document_ids

        if self._tok is None:
            raise RuntimeError("Perplexity.use_tokenizer() first")
        p, n = self.prompt_tokens, self.scored_tokens
        for index, doc in enumerate(self.documents()):
            if limit is not None and index >= limit:
                return
            if isinstance(doc, ItemError):
                yield ItemError(doc.item_id, subset, index, doc.error)
                continue
            length = len(document_ids(self._tok, doc.text))
            if length < p + n:
                yield ItemError(doc.doc_id, subset, index,
                                f"document {doc.doc_id} has {length} tokens; --prompt-tokens {p} + "
                                f"--scored-tokens {n} need {p + n}")
                continue
            yield Item(item_id=doc.doc_id, subset=subset, index=index, prompt=doc.text, references=[],
                       max_new_tokens=0, length=length, chat_template=False,
                       extra={"prompt_tokens": p, "scored_tokens": n, **doc.meta})

    # -- scoring -----------------------------------------------------------------------------
    def score(self, item: Item, metrics: dict) -> float:
        """A record's score: the document's mean NLL per scored token (nats; lower is better)."""
        return float(metrics["nll"])

    def summarize(self, records: list[dict]) -> dict:
        out = summarize_records(records)
        out["measurement"] = {"prompt_tokens": self.prompt_tokens, "scored_tokens": self.scored_tokens,
                           "first_token": FIRST_TOKEN, "reference": REFERENCE}
        return out
