"""VLMEvalKit adapter: a model class whose ``generate_inner`` runs with an oscar_core KV cache.

Without VLMEvalKit the class is usable on its own (``OscarVLM(path).generate_inner(message)``); when
``vlmeval`` is importable it subclasses VLMEvalKit's ``BaseModel``, so it can be registered in
``vlmeval.config.supported_VLM``, e.g.::

    from functools import partial
    from vlmeval.config import supported_VLM
    from oscar_eval.adapters.vlmevalkit import OscarVLM
    supported_VLM["Qwen3-VL-8B-oscar"] = partial(OscarVLM, model_path="/models/Qwen3-VL-8B-Instruct",
                                                 method="oscar")

``message`` is VLMEvalKit's list of ``{"type": "image" | "text", "value": path or text}``; the items
keep their order in the user turn. Image handling (e.g. Qwen3-VL's ``min_pixels`` on OCRBench) and
decoding are the ones of :class:`oscar_eval.models.vision.VisionRunner`, so numbers match ``oscar-eval run``.

:func:`cross_check` re-scores an ``oscar-eval run ocrbench`` run folder with VLMEvalKit's own
``OCRBench.evaluate`` (when ``vlmeval`` is importable) and compares it with our summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oscar_eval.errors import UserError

try:  # VLMEvalKit is optional: subclass its BaseModel only when it is installed
    from vlmeval.vlm.base import BaseModel as _VLMEvalBase

    HAVE_VLMEVAL = True
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _VLMEvalBase = object
    HAVE_VLMEVAL = False

# VLMEvalKit's OCRBench.evaluate keys -> our summary columns
VLMEVAL_KEYS = {
    "Text Recognition": "Text Recognition",
    "Scene Text-centric VQA": "Scene Text-centric VQA",
    "Doc-oriented VQA": "Doc-oriented VQA",
    "Key Information Extraction": "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition": "Handwritten Mathematical Expression Recognition",
    "Final Score": "Total",
}


class OscarVLM(_VLMEvalBase):  # type: ignore[misc,valid-type]
    """A VLMEvalKit model: a local vision-language checkpoint decoding with a quantized KV cache."""

    INSTALL_REQ = False
    INTERLEAVE = True

    def __init__(self, model_path: str | Path, method: str = "oscar", device: str = "auto", dtype: str = "auto",
                 max_new_tokens: int = 128, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if _VLMEvalBase is not object:
            super().__init__()
        import oscar_core as oc
        from oscar_eval.models.vision import VisionRunner, load_vision_model

        self.method = method
        self.overrides = dict(overrides or {})
        self.spec = oc.get_method(method, **self.overrides)  # validate before loading weights
        self.max_new_tokens = int(max_new_tokens)
        self.loaded = load_vision_model(model_path, device=device, dtype=dtype)
        self.runner = VisionRunner(self.loaded)
        self.kwargs = kwargs

    def make_cache(self) -> Any:
        import oscar_core as oc

        return oc.make_cache(self.loaded.model, self.method, **self.overrides)

    def generate_inner(self, message: Sequence[Mapping[str, Any]] | str, dataset: str | None = None) -> str:
        item = message_to_item(message, dataset, self.max_new_tokens)
        return self.runner.generate(item, self.make_cache()).prediction


def message_to_item(message: Sequence[Mapping[str, Any]] | str, dataset: str | None, max_new_tokens: int):
    """VLMEvalKit's message -> an :class:`~oscar_eval.benchmarks.base.Item` for the VisionRunner."""
    from oscar_eval.benchmarks.base import Item

    if isinstance(message, str):
        message = [{"type": "text", "value": message}]
    images, content, texts = [], [], []
    for part in message:
        kind, value = part.get("type"), part.get("value")
        if kind == "image":
            images.append(value)
            content.append({"type": "image"})
        elif kind == "text":
            texts.append(str(value))
            content.append({"type": "text", "text": str(value)})
        else:
            raise ValueError(f"unsupported message part type {kind!r} (expected 'image' or 'text')")
    return Item(item_id="vlmevalkit", subset=dataset or "", index=0, prompt="\n".join(texts), references=[],
                max_new_tokens=max_new_tokens, images=images,
                extra={"vlmeval_dataset": dataset, "content": content})


def eval_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Our records -> rows of VLMEvalKit's prediction file (index, question, answer, category, prediction).

    Failed items get an empty prediction (VLMEvalKit scores them 0, as our summary does)."""
    rows = []
    for r in records:
        index = str(r["item_id"]).removeprefix("ocrbench/")
        rows.append({"index": index, "answer": repr(list(r.get("references") or [])), "category": r["subset"],
                     "prediction": (r.get("prediction") or "") if r.get("status") == "ok" else ""})
    return rows


def cross_check(run_dir: str | Path, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Score a run folder with VLMEvalKit's ``OCRBench.evaluate``; compare with its summary.json.

    Returns ``{"ours": columns, "vlmevalkit": columns, "agree": bool, "eval_file": path}``. Needs
    ``vlmeval`` (with its ``.xlsx`` dependencies, openpyxl and xlsxwriter)."""
    if not HAVE_VLMEVAL:
        raise UserError("VLMEvalKit is not installed (pip install vlmeval); the cross-check needs it")
    import json
    import tempfile

    import pandas as pd
    from vlmeval.dataset import OCRBench as VLMEvalOCRBench
    from vlmeval.smp import dump

    from oscar_eval.store.results import RunStore

    run_dir = Path(run_dir)
    store = RunStore(run_dir.parent.parent, run_dir.name)
    records = [r for r in store.records() if r.get("subset") != "(unknown category)"]
    ours = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["columns"]
    work = Path(work_dir or tempfile.mkdtemp(prefix="oscar-vlmeval-"))
    work.mkdir(parents=True, exist_ok=True)
    eval_file = work / f"{run_dir.name}_OCRBench.xlsx"
    dump(pd.DataFrame(eval_rows(records)), str(eval_file))  # VLMEvalKit's own writer (its .xlsx format)
    result = VLMEvalOCRBench.evaluate(str(eval_file))
    theirs = {VLMEVAL_KEYS[k]: float(v) for k, v in dict(result).items() if k in VLMEVAL_KEYS}
    agree = all(abs(float(ours.get(k, 0.0)) - v) < 1e-9 for k, v in theirs.items())
    return {"ours": ours, "vlmevalkit": theirs, "agree": agree, "eval_file": str(eval_file)}
