"""OCRBench (paper Table 6): loader for both on-disk formats, VLMEvalKit's prompt and scoring.

Formats (``--data-dir`` is the folder that holds them):

- VLMEvalKit ``OCRBench.tsv``: columns ``index, image, question, answer, category``. ``image`` is a
  base64-encoded image, or (64 characters or fewer) the ``index`` of another row whose image to use;
  ``answer`` is a Python-literal list of strings, parsed with :func:`ast.literal_eval` (never ``eval``).
- Hugging Face ``echo840/OCRBench`` parquet (``data/test-*.parquet``): columns ``dataset, question,
  question_type`` (the category), ``answer`` (a list of strings) and ``image`` (a ``{bytes, path}``
  struct). Rows have no index column: the 0-based row number across the sorted files is the index.

Item ids are ``ocrbench/<index>``. Subsets are the ten OCRBench categories (``--subsets`` also takes a
group name, e.g. "Text Recognition", case-insensitively, with ``-``/``_`` for spaces). A malformed row
(bad base64, an image that is not one, a dangling image reference, an answer that is not a literal list
of strings, an unknown category, bytes that are not UTF-8, an image path outside ``--data-dir``, any
other error while reading it) becomes a failed item whose error names the file and row; the run
continues.

Prompt: the image then the question, nothing else (VLMEvalKit's ``ImageBaseDataset.build_prompt``);
greedy, ``max_new_tokens`` 128. The model-specific image handling lives in :mod:`oscar_eval.models.vision`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import glob
import io
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oscar_eval.benchmarks.base import Item, ItemError
from oscar_eval.errors import UserError
from oscar_eval.scoring import ocrbench as ocr

TSV_NAMES = ("OCRBench.tsv", "ocrbench.tsv")
PARQUET_PATTERNS = ("data/test-*.parquet", "test-*.parquet", "data/*.parquet", "*.parquet",
                    "OCRBench/data/test-*.parquet")
HINT = ("download OCRBench (VLMEvalKit's OCRBench.tsv, or the Hugging Face dataset echo840/OCRBench with "
        "its data/test-*.parquet) and pass the folder that holds it with --data-dir")
MAX_NEW_TOKENS = 128
UNKNOWN_SUBSET = "(unknown category)"


class RowError(ValueError):
    """A malformed row; the message is prefixed with ``<file>:<row>`` by the loader."""


@dataclass(frozen=True)
class EncodedImage:
    """An image kept as its encoded bytes until the model needs it (1000 decoded images are large)."""

    data: bytes
    source: str  # "<file>:<row>" of the row the bytes came from

    def open(self):
        from PIL import Image

        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image.convert("RGB")


def _check_image(data: bytes) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            im.size  # noqa: B018 - touch the header
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RowError(f"image is not a readable image ({type(exc).__name__})") from None


def decode_base64_image(text: str) -> bytes:
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RowError("image is not valid base64") from None
    if not data:
        raise RowError("image is empty")
    _check_image(data)
    return data


def parse_answer(value: Any) -> list[str]:
    """The ``answer`` field -> list of reference strings. Strings are parsed as Python literals only."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise RowError(f"answer {_short(text)} is not a Python literal list of strings") from None
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):  # numpy arrays from some parquet readers
        value = value.tolist()
    if not isinstance(value, list | tuple) or not value:
        raise RowError(f"answer {_short(repr(value))} is not a non-empty list of strings")
    if not all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in value):
        raise RowError(f"answer {_short(repr(value))} holds something other than strings")
    return [str(a) for a in value]


def _short(text: str, n: int = 60) -> str:
    text = text.replace("\n", " ")
    return repr(text if len(text) <= n else text[:n] + "...")


def _undecodable(text: str) -> bool:
    """Whether a field read with ``errors="surrogateescape"`` held bytes that are not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def confined(root: Path, rel: str | Path) -> Path:
    """``rel`` (relative to ``root``, or absolute) as a path inside ``root``; a path that leaves it
    (``..``, an absolute path elsewhere) is a :class:`RowError`. Lexical, so a data folder may hold
    symbolic links (a Hugging Face snapshot does)."""
    base = Path(os.path.abspath(root))
    p = Path(os.path.normpath(base / rel))  # an absolute ``rel`` replaces ``base``
    if p != base and base not in p.parents:
        raise RowError(f"path {str(rel)!r} is outside the data folder {base}")
    return p


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


@dataclass
class _Row:
    position: int          # 0-based row position in the data (across files)
    where: str             # "<file>:<row>" for messages
    index: str             # the item's index (TSV "index" column, or the parquet row number)
    category: str | None
    item: Item | None = None
    error: str | None = None


class OCRBench:
    """OCRBench on local files (VLMEvalKit TSV or the echo840/OCRBench parquet)."""

    name = "ocrbench"
    kind = "vision"
    options = ()  # none of its own (the options of every benchmark: --subsets, --limit, ...)

    def __init__(self, data_dir: str | Path | None = None, subsets: list[str] | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.config = {"generation": {"max_new_tokens": max_new_tokens, "greedy": True, "batch_size": 1}}
        self.max_new_tokens = int(max_new_tokens)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._subsets = self._resolve_subsets(subsets)
        self._all = subsets is None
        self._files: list[Path] | None = None
        self._rows: list[_Row] | None = None
        if self.data_dir is not None:
            if self.data_dir.is_file():
                raise UserError(f"--data-dir {self.data_dir} is a file; pass the folder that holds it")
            if not self.data_dir.is_dir():
                raise UserError(f"data dir {self.data_dir} does not exist; {HINT}")

    @classmethod
    def selection(cls) -> list[str]:
        """What a run chooses among, for `oscar-eval list` (from the task config; no data needed)."""
        return [f"subsets (--subsets; default all): {', '.join(ocr.CATEGORIES)}",
                f"or a group: {', '.join(ocr.GROUPS)}"]

    @classmethod
    def smoke_configuration(cls) -> dict:
        """The built-in smoke run: a tiny random Qwen3-VL (built offline) + a small OCRBench.tsv fixture."""
        from oscar_eval.models import vision

        return {"description": ("tiny random-weight Qwen3-VL + built-in OCRBench fixture "
                                f"({vision.SMOKE_OCRBENCH_DATA})"),
                "data_dir": vision.SMOKE_OCRBENCH_DATA, "model_path": vision.smoke_model_path,
                "model_label": vision.SMOKE_LABEL, "options": {}}

    @property
    def settings(self) -> dict:
        """What changes the results besides the model and the method (part of the run id)."""
        return {"ocrbench": {"max_new_tokens": self.max_new_tokens, "prompt": "image, question (VLMEvalKit)",
                             "qwen_vl_min_pixels": "10*10*(patch*merge)^2"}}

    @staticmethod
    def _resolve_subsets(subsets: list[str] | None) -> list[str]:
        if not subsets:
            return list(ocr.CATEGORIES)
        by_key = {_key(c): [c] for c in ocr.CATEGORIES}
        for group in ocr.GROUPS:
            by_key.setdefault(_key(group), [c for c, g in ocr.CATEGORY_GROUP.items() if g == group])
        chosen: list[str] = []
        for s in subsets:
            cats = by_key.get(_key(s))
            if cats is None:
                raise UserError(f"unknown OCRBench subset {s!r} (categories: {', '.join(ocr.CATEGORIES)}; "
                                  f"or a group: {', '.join(ocr.GROUPS)})")
            chosen += [c for c in cats if c not in chosen]
        return [c for c in ocr.CATEGORIES if c in chosen]

    def subsets(self) -> list[str]:
        return list(self._subsets)

    # -- files ---------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        if self._files is not None:
            return self._files
        if self.data_dir is None:
            raise UserError("no --data-dir given for OCRBench")
        for name in TSV_NAMES:
            if (self.data_dir / name).is_file():
                self._files = [self.data_dir / name]
                return self._files
        for pattern in PARQUET_PATTERNS:
            hits = sorted(glob.glob(str(self.data_dir / pattern)))
            if hits:
                self._files = [Path(h) for h in hits]
                return self._files
        raise UserError(f"no OCRBench data under {self.data_dir} (looked for OCRBench.tsv and "
                          f"data/test-*.parquet / *.parquet); {HINT}")

    def data_files(self, subset: str) -> list[Path]:  # noqa: ARG002 - one file set serves all categories
        return self.files()

    # -- rows ----------------------------------------------------------------------------------
    def _make_item(self, row: _Row, question: Any, answer: Any, image: EncodedImage, dataset: Any) -> Item:
        if row.category not in ocr.CATEGORY_GROUP:
            raise RowError(f"unknown category {row.category!r}")
        if not isinstance(question, str) or not question.strip():
            raise RowError("question is missing or empty")
        refs = parse_answer(answer)
        return Item(item_id=f"ocrbench/{row.index}", subset=row.category, index=row.position, prompt=question,
                    references=refs, max_new_tokens=self.max_new_tokens, images=[image], chat_template=True,
                    extra={"category": row.category, "source": row.where, "vlmeval_dataset": "OCRBench",
                           "dataset": None if dataset is None else str(dataset)})

    def _tsv_rows(self, path: Path) -> Iterator[_Row]:
        csv.field_size_limit(sys.maxsize)
        try:
            # Bytes that are not UTF-8 become lone surrogates, so only their row fails (a strict decoder
            # would lose the whole buffered chunk, many rows, at the first bad byte).
            f = open(path, encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as exc:
            raise UserError(f"{path}: cannot open ({exc.strerror})") from None
        with f:
            reader = csv.reader(f, delimiter="\t")
            try:
                header = next(reader)
            except StopIteration:
                raise UserError(f"{path}: empty file; {HINT}") from None
            except (csv.Error, UnicodeDecodeError) as exc:
                raise UserError(f"{path}:1: unreadable header ({exc})") from None
            cols = {c.strip(): i for i, c in enumerate(header)}
            missing = [c for c in ("index", "image", "question", "answer", "category") if c not in cols]
            if missing:
                raise UserError(f"{path}:1: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
            raw: list[tuple[_Row, list[str] | None]] = []
            position = 0
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except (csv.Error, UnicodeDecodeError) as exc:
                    line = reader.line_num
                    raw.append((_Row(position, f"{path}:{line}", f"row{line}", None,
                                     error=f"{path}:{line}: unreadable row ({exc})"), None))
                    position += 1
                    continue
                if not fields or fields == [""]:
                    continue
                line = reader.line_num
                where = f"{path}:{line}"
                if len(fields) != len(header):
                    raw.append((_Row(position, where, f"row{line}", None,
                                     error=f"{where}: expected {len(header)} fields, found {len(fields)}"), None))
                elif bad := [c for c, i in cols.items() if _undecodable(fields[i])]:
                    index, cat = fields[cols["index"]].strip(), fields[cols["category"]].strip()
                    raw.append((_Row(position, where, f"row{line}" if _undecodable(index) else index,
                                     None if _undecodable(cat) else cat,
                                     error=f"{where}: bytes that are not UTF-8 in column(s) {', '.join(bad)}"),
                                None))
                else:
                    cat = fields[cols["category"]].strip()
                    raw.append((_Row(position, where, fields[cols["index"]].strip(), cat), fields))
                position += 1
        images = {row.index: fields[cols["image"]] for row, fields in raw if fields is not None}
        decoded: dict[str, bytes] = {}
        seen: dict[str, str] = {}
        for row, fields in raw:
            if fields is None:
                yield row
                continue
            try:
                if row.index in seen:
                    first = seen[row.index]
                    row.index = f"{row.index}#{row.where.rsplit(':', 1)[-1]}"  # keep item ids unique
                    raise RowError(f"duplicate index (first at {first})")
                seen[row.index] = row.where
                image = self._tsv_image(images, row.index, fields[cols["image"]], decoded)
                row.item = self._make_item(row, fields[cols["question"]], fields[cols["answer"]],
                                           EncodedImage(image, row.where), None)
            except RowError as exc:
                row.error = f"{row.where}: {exc}"
            except Exception as exc:  # noqa: BLE001 - one bad row never stops the benchmark
                row.error = f"{row.where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            yield row

    @staticmethod
    def _tsv_image(images: dict[str, str], index: str, value: str, decoded: dict[str, bytes]) -> bytes:
        key = index
        if len(value) <= 64:  # VLMEvalKit: a short entry names the row whose image this row shares
            ref = value.strip()
            target = images.get(ref)
            if target is None:
                raise RowError(f"image refers to index {_short(ref)}, which is not in the file")
            if len(target) <= 64:
                raise RowError(f"image refers to index {ref!r}, whose image is itself a reference")
            key, value = ref, target
        if key not in decoded:
            decoded[key] = decode_base64_image(value)
        return decoded[key]

    def _parquet_rows(self, paths: list[Path]) -> Iterator[_Row]:
        import pyarrow.parquet as pq

        position = 0
        for path in paths:
            try:
                table = pq.read_table(path)
            except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad file
                raise UserError(f"{path}: unreadable parquet ({str(exc).splitlines()[0]})") from None
            names = set(table.column_names)
            cat_col = "question_type" if "question_type" in names else "category"
            missing = [c for c in ("image", "question", "answer", cat_col) if c not in names]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(found: {', '.join(table.column_names)})")
            for row_no, obj in enumerate(table.to_pylist(), 1):
                where = f"{path}:row {row_no}"
                index = str(obj["index"]) if obj.get("index") is not None else str(position)
                category = obj.get(cat_col)
                row = _Row(position, where, index, category.strip() if isinstance(category, str) else category)
                try:
                    data = self._parquet_image(path, obj["image"], self.data_dir or path.parent)
                    row.item = self._make_item(row, obj["question"], obj["answer"], EncodedImage(data, where),
                                               obj.get("dataset"))
                except RowError as exc:
                    row.error = f"{where}: {exc}"
                except Exception as exc:  # noqa: BLE001 - one bad row never stops the benchmark
                    row.error = f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                position += 1
                yield row

    @staticmethod
    def _parquet_image(path: Path, value: Any, root: Path) -> bytes:
        if isinstance(value, dict):
            data, rel = value.get("bytes"), value.get("path")
        elif isinstance(value, bytes | bytearray):
            data, rel = bytes(value), None
        elif isinstance(value, str):
            data, rel = None, value
        else:
            raise RowError("image is missing")
        if not data and rel:
            p = confined(root, Path(rel) if Path(rel).is_absolute() else Path(os.path.abspath(path.parent / rel)))
            if not p.is_file():
                raise RowError(f"image has no bytes and its path {rel!r} does not exist")
            data = p.read_bytes()
        if not data:
            raise RowError("image is missing")
        _check_image(data)
        return bytes(data)

    def rows(self) -> list[_Row]:
        if self._rows is None:
            files = self.files()
            if files[0].suffix == ".tsv":
                self._rows = list(self._tsv_rows(files[0]))
            else:
                self._rows = list(self._parquet_rows(files))
        return self._rows

    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]:
        rows = self.rows()
        n = 0
        for row in rows:
            if row.category != subset:
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            yield row.item if row.error is None else ItemError(f"ocrbench/{row.index}", subset, row.position,
                                                               f"RowError: {row.error}")
        # Rows whose category is unreadable or unknown belong to no subset; report them once, at the end.
        if self._all and subset == self._subsets[-1]:
            for row in rows:
                if row.category not in ocr.CATEGORY_GROUP and row.error is not None:
                    yield ItemError(f"ocrbench/{row.index}", UNKNOWN_SUBSET, row.position, f"RowError: {row.error}")

    # -- scoring -------------------------------------------------------------------------------
    def score(self, item: Item, prediction: str) -> float:
        return ocr.score(item.extra.get("category", item.subset), prediction, item.references)

    def summarize(self, records: list[dict]) -> dict:
        ok = [r for r in records if r.get("status") == "ok" and r.get("score") is not None]
        out = ocr.aggregate((r["subset"], r["score"]) for r in ok)
        out["n_scored"] = len(ok)
        out["complete"] = len(ok) == ocr.FULL_SIZE
        out["note"] = ("points (1 per item); Total out of 1000 on the full benchmark; failed items score 0"
                       + ("" if out["complete"] else f"; partial run: {len(ok)} of 1000 items scored"))
        return out
