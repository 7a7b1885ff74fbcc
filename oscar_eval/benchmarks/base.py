"""What every benchmark provides: items (text, images, audio) and a per-item scorer.

A benchmark yields :class:`Item` objects; a model runner (:mod:`oscar_eval.models`) turns an item into
model inputs and generates; the benchmark scores the prediction. Only the pieces a benchmark needs are
set on an item, so a text task leaves ``images``/``audio`` empty and a vision task fills ``images``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from oscar_eval.benchmarks.options import Option
from oscar_eval.errors import UserError


@dataclass
class Item:
    """One evaluated example, independent of the on-disk format it came from."""

    item_id: str                      # stable across runs: used by --resume
    subset: str
    index: int                        # position in its data file
    prompt: str                       # the filled prompt (before truncation / chat template)
    references: list[str]
    max_new_tokens: int
    length: int | None = None         # LongBench `length` (bucket key)
    images: list[Any] = field(default_factory=list)   # PIL images or paths (vision benchmarks)
    audio: list[Any] = field(default_factory=list)    # audio paths or arrays (audio benchmarks)
    chat_template: bool = True        # whether --chat-template may wrap this item
    stop_at_newline: bool = False     # also stop generation at a newline token
    extra: dict[str, Any] = field(default_factory=dict)  # scorer inputs (e.g. all_classes)


@dataclass
class ItemError:
    """An item that could not be read; recorded as failed, the run continues."""

    item_id: str
    subset: str
    index: int
    error: str


class Benchmark(Protocol):
    name: str
    kind: str  # "text" | "vision" | "audio"
    options: tuple[Option, ...]  # its own options: constructor keywords, `oscar-eval run` flags

    def subsets(self) -> list[str]: ...

    def data_files(self, subset: str) -> list[Path]: ...

    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]: ...

    def score(self, item: Item, prediction: str) -> float: ...

    def summarize(self, records: list[dict]) -> dict: ...


def load_tokenizer(model_path: str | Path) -> Any:
    """The model's tokenizer from local files only; one that cannot be loaded is a UserError naming the model."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of {model_path}: {str(exc).splitlines()[0]}") from None


def data_file(value: str | Path, data_dir: Path | None, what: str, hint: str) -> Path:
    """A file a benchmark option names (``--haystack``, ``--text``), resolved: a relative name that does
    not exist here is looked up in ``data_dir``; it must exist and, with a ``data_dir``, lie inside it
    (the run records data files relative to the data folder). Errors name ``what`` and the path."""
    p = Path(value).expanduser()
    if not p.is_absolute() and data_dir is not None and not p.exists():
        p = data_dir / p
    if not p.is_file():
        raise UserError(f"{what} {p} not found; {hint}")
    p = p.resolve()
    if data_dir is not None and not p.is_relative_to(data_dir.resolve()):
        raise UserError(f"{what} {p} is not inside --data-dir {data_dir}")
    return p


def sized_prompt_counter(model_path: str | Path, contexts: list[int], max_input_len: int | None,
                         chat_template: bool, what: str, tokenizer: Any = None) -> tuple[Any, Any]:
    """``(tokenizer, runner)`` for benchmarks whose prompts are sized in the model's own tokens (NIAH,
    RULER): the model's tokenizer (local files only) and a text runner that tokenizes exactly as
    generation will (BOS, chat template) and never truncates. A context over ``max_input_len`` is an
    error: such prompts are sized to their context, never truncated."""
    from oscar_eval.models import LoadedModel, TextRunner

    too_long = [c for c in contexts if max_input_len is not None and c > max_input_len]
    if too_long:
        raise UserError(f"context {too_long[0]} exceeds --max-input-len {max_input_len}; raise it "
                        f"({what} prompts are sized to their context, never truncated)")
    if tokenizer is None:
        tokenizer = load_tokenizer(model_path)
    runner = TextRunner(LoadedModel(None, tokenizer, Path(model_path), "cpu", "n/a"), max_input_len=10**9,
                        chat_template=chat_template)
    return tokenizer, runner
