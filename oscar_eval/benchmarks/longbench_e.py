"""LongBench-E: loader for both on-disk formats, official prompts, official scoring and buckets."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from oscar_eval.benchmarks import load_task_config
from oscar_eval.benchmarks.base import Item, ItemError
from oscar_eval.errors import UserError
from oscar_eval.scoring import longbench as lb


def load_config(path: Path | None = None) -> dict:
    return load_task_config("longbench_e.yaml", path)


class LongBenchE:
    """LongBench-E on local files: THUDM ``<subset>.jsonl`` or the lm-eval parquet mirror."""

    name = "longbench_e"
    kind = "text"
    options = ()  # none of its own (the options of every benchmark: --subsets, --limit, ...)

    def __init__(self, data_dir: str | Path | None = None, subsets: list[str] | None = None,
                 config: dict | None = None) -> None:
        self.config = config or load_config()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        known = list(self.config["subsets"])
        chosen = []
        for s in subsets or known:
            key = s if s in self.config["subsets"] else f"{s}_e"
            if key not in self.config["subsets"]:
                raise UserError(f"unknown LongBench-E subset {s!r} (known: {', '.join(known)})")
            chosen.append(key)
        self._subsets = chosen
        self._files: dict[str, list[Path]] = {}
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise UserError(f"data dir {self.data_dir} does not exist; {self.config['data']['hint']}")

    @classmethod
    def selection(cls) -> list[str]:
        """What a run chooses among, for `oscar-eval list` (from the task config; no data needed)."""
        return [f"subsets (--subsets; default all): {', '.join(load_config()['subsets'])}"]

    @classmethod
    def smoke_configuration(cls) -> dict:
        """The built-in smoke run: the tiny random Llama (oscar_eval.smoke) on the LongBench-E fixture's subsets."""
        from oscar_eval import smoke

        return {"description": f"tiny random-weight Llama + built-in LongBench-E fixture ({smoke.SMOKE_DATA})",
                "data_dir": smoke.SMOKE_DATA, "max_input_len": smoke.SMOKE_MAX_INPUT_LEN,
                "subsets": sorted(p.stem for p in smoke.SMOKE_DATA.glob("*.jsonl"))}

    def subsets(self) -> list[str]:
        return list(self._subsets)

    def subset_config(self, subset: str) -> dict:
        return self.config["subsets"][subset]

    # -- files ---------------------------------------------------------------------------------
    def _roots(self) -> list[Path]:
        assert self.data_dir is not None
        return [self.data_dir, self.data_dir / "data"]

    def data_files(self, subset: str) -> list[Path]:
        if subset in self._files:
            return self._files[subset]
        if self.data_dir is None:
            raise UserError("no --data-dir given for LongBench-E")
        found: list[Path] = []
        for root in self._roots():
            p = root / self.config["data"]["jsonl"].format(subset=subset)
            if p.is_file():
                found = [p]
                break
        if not found:
            for root in self._roots():
                for pattern in self.config["data"]["parquet"]:
                    hits = sorted(glob.glob(str(root / pattern.format(subset=subset))))
                    if hits:
                        found = [Path(h) for h in hits]
                        break
                if found:
                    break
        if not found:
            raise UserError(
                f"no data for subset {subset!r} under {self.data_dir} (looked for {subset}.jsonl and "
                f"{subset}.parquet / {subset}/*.parquet); {self.config['data']['hint']}")
        self._files[subset] = found
        return found

    # -- items ---------------------------------------------------------------------------------
    def _rows(self, subset: str) -> Iterator[tuple[Path, int, dict | str]]:
        """(file, 1-based line or row number, record) in file order; a line that is not a JSON object
        (malformed JSON, bytes that are not UTF-8) comes as the error message instead of a record."""
        for path in self.data_files(subset):
            if path.suffix == ".jsonl":
                with open(path, "rb") as f:
                    for lineno, raw in enumerate(f, 1):
                        if not raw.strip():
                            continue
                        try:
                            obj = json.loads(raw.decode("utf-8"))
                        except UnicodeDecodeError as exc:
                            yield path, lineno, f"{path}:{lineno}: not UTF-8 (byte {exc.start} of the line)"
                            continue
                        except json.JSONDecodeError as exc:
                            yield path, lineno, f"{path}:{lineno}: malformed JSON ({exc.msg})"
                            continue
                        yield path, lineno, obj if isinstance(obj, dict) else f"{path}:{lineno}: expected a JSON object"
            else:
                import pyarrow.parquet as pq

                try:
                    table = pq.read_table(path)
                except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad file
                    raise UserError(f"{path}: unreadable parquet ({exc})") from None
                for row, obj in enumerate(table.to_pylist(), 1):
                    if "input" not in obj and "question" in obj:
                        obj["input"] = obj["question"]
                    yield path, row, obj

    def _make_item(self, subset: str, index: int, path: Path, lineno: int, obj: dict) -> Item:
        cfg = self.subset_config(subset)
        for key in ("context", "input", "answers", "length"):
            if key not in obj:
                raise UserError(f"{path}:{lineno}: record lacks field {key!r}")
        answers = obj["answers"]
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise UserError(f"{path}:{lineno}: 'answers' must be a list of strings")
        try:
            length = int(obj["length"])
        except (TypeError, ValueError):
            raise UserError(f"{path}:{lineno}: 'length' must be an integer") from None
        fields = dict(obj)
        fields["input"] = obj["input"] if obj["input"] is not None else ""
        fields["context"] = obj["context"] if obj["context"] is not None else ""
        prompt = cfg["prompt"].format(**fields)
        raw_id = obj.get("_id") or f"{path.name}:{lineno}"
        all_classes = obj.get("all_classes")
        return Item(
            item_id=f"{subset}/{raw_id}", subset=subset, index=index, prompt=prompt,
            references=list(answers), max_new_tokens=int(cfg["max_new_tokens"]), length=length,
            chat_template=bool(cfg.get("chat_template", True)),
            stop_at_newline=bool(cfg.get("stop_at_newline", False)),
            extra={"all_classes": list(all_classes) if all_classes else None},
        )

    def items(self, subset: str, limit: int | None = None) -> Iterator[Item | ItemError]:
        """Items in file order; a bad record becomes an :class:`ItemError` naming file:line (the run goes on)."""
        seen: dict[str, str] = {}
        for index, (path, lineno, obj) in enumerate(self._rows(subset)):
            if limit is not None and index >= limit:
                return
            where = f"{path.name}:{lineno}"
            try:
                if isinstance(obj, str):
                    raise ValueError(obj)
                item = self._make_item(subset, index, path, lineno, obj)
                if item.item_id in seen:  # ids key --resume: a duplicate would silently be skipped
                    raise ValueError(f"{path}:{lineno}: duplicate _id {obj.get('_id')!r} (first at {seen[item.item_id]})")
            except Exception as exc:  # noqa: BLE001 - one bad record never stops the run
                yield ItemError(item_id=f"{subset}/{where}", subset=subset, index=index, error=str(exc))
                continue
            seen[item.item_id] = where
            yield item

    # -- scoring -------------------------------------------------------------------------------
    def score(self, item: Item, prediction: str) -> float:
        return lb.score(item.subset, prediction, item.references, all_classes=item.extra.get("all_classes"))

    def summarize(self, records: list[dict]) -> dict:
        ok = [r for r in records if r.get("status") == "ok" and r.get("score") is not None]
        out = lb.aggregate((r["subset"], r["length"], r["score"]) for r in ok)
        order = {s: i for i, s in enumerate(self.config["subsets"])}
        out["subsets"] = dict(sorted(out["subsets"].items(), key=lambda kv: order.get(kv[0], 99)))
        return out
