"""One bad row never aborts a benchmark; undecodable bytes and paths outside the data folder are per-row
errors naming file and row (issue 14)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pytest


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), "white").save(buf, format="PNG")
    return buf.getvalue()


def _tsv(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = base64.b64encode(_png()).decode()
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "image", "question", "answer", "category"])
        for i in range(n):
            w.writerow([str(i), image if i == 0 else "0", f"what is written {i}?", "['a']",
                        "Regular Text Recognition"])
    return path


def test_a_non_utf8_byte_fails_only_its_row(tmp_path):
    from oscar_eval.benchmarks.ocrbench import OCRBench

    path = _tsv(tmp_path / "OCRBench.tsv", 60)
    data = path.read_bytes().replace(b"what is written 7?", b"what is \xff written 7?")
    path.write_bytes(data)
    rows = OCRBench(tmp_path).rows()
    assert len(rows) == 60
    bad = [r for r in rows if r.error]
    assert len(bad) == 1 and bad[0].index == "7" and f"{path}:9: " in bad[0].error and "UTF-8" in bad[0].error
    items = list(OCRBench(tmp_path).items("Regular Text Recognition"))
    assert len(items) == 60 and sum(not hasattr(it, "prompt") for it in items) == 1


def test_a_decompression_bomb_fails_only_its_row(tmp_path, monkeypatch):
    from PIL import Image

    from oscar_eval.benchmarks.ocrbench import OCRBench

    _tsv(tmp_path / "OCRBench.tsv", 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 200 px > 2 x 50: PIL refuses it as a bomb
    rows = OCRBench(tmp_path).rows()
    assert len(rows) == 3 and all("not a readable image (DecompressionBombError)" in r.error for r in rows)


@pytest.mark.parametrize("rel", ["../../secret.png", "/etc/hostname", "../data/../../secret.png"])  # from data/
def test_parquet_image_path_outside_the_data_folder_is_a_row_error(tmp_path, rel):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oscar_eval.benchmarks.ocrbench import OCRBench

    (tmp_path / "secret.png").write_bytes(_png())
    root = tmp_path / "ocr"
    (root / "data").mkdir(parents=True)
    (root / "data" / "ok.png").write_bytes(_png())
    rows = [{"dataset": "x", "question": "q?", "question_type": "Regular Text Recognition", "answer": ["a"],
             "image": {"bytes": None, "path": p}} for p in ("ok.png", rel)]
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "test-0.parquet")
    got = OCRBench(root).rows()
    assert got[0].error is None
    assert "outside the data folder" in got[1].error and "test-0.parquet:row 2" in got[1].error


def _mmau(tmp_path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.eval.test_mmau_pro import write_wav

    root = tmp_path / "mmau"
    write_wav(root / "data" / "a.wav")
    write_wav(tmp_path / "outside.wav")
    base = {"question": "q", "answer": None, "choices": [], "task_identifier": None, "kwargs": None,
            "audio_path": ["data/a.wav"]}
    pq.write_table(pa.Table.from_pylist([{**base, **r} for r in rows]), root / "test.parquet")
    return root


def test_mmau_bad_rows_are_failed_items_and_the_rest_runs(tmp_path):
    from oscar_eval.benchmarks.mmau_pro import MMAUPro

    outside = str(tmp_path / "outside.wav")
    root = _mmau(tmp_path, [
        {"id": "o1", "category": "open"},
        {"id": "o2", "category": "open", "audio_path": ["../outside.wav"]},
        {"id": "o3", "category": "open", "audio_path": [outside]},
        {"id": "i1", "category": "instruction following", "task_identifier": "Number Words (at least)",
         "kwargs": {"N": {"deep": [1, 2]}}},
        {"id": "i2", "category": "instruction following", "task_identifier": "All Lowercase"},
        {"id": "o1", "category": "open"},  # a duplicate id
    ])
    bench = MMAUPro(data_dir=root, judge_cache=tmp_path / "jc")
    opens = list(bench.items("open"))
    assert [type(i).__name__ for i in opens] == ["Item", "ItemError", "ItemError", "ItemError"]
    assert all("outside the data folder" in e.error and "row" in e.error for e in opens[1:3])
    assert "duplicate id" in opens[3].error and "test.parquet:6" in opens[3].error
    # A nested kwargs fails its item when scored; the runner records it and goes on.
    from oscar_eval.models import Generation
    from oscar_eval.runner import evaluate_items
    from oscar_eval.store.results import RunStore

    store = RunStore(tmp_path / "res", "r")
    store.open(resume=False)
    items = [*opens, *bench.items("instruction_following")]
    stats = evaluate_items(items, store, lambda it: Generation("all lowercase words", 3, False, 3, "0" * 64),
                           bench.score, seed=0)
    store.close()
    recs = {r["item_id"]: r for r in store.records()}
    assert stats.done == 6 and stats.failed == 4
    assert recs["instruction_following/i1"]["status"] == "failed" and "not a number" in recs[
        "instruction_following/i1"]["error"]
    assert recs["instruction_following/i2"]["score"] == 1.0 and recs["open/o1"]["status"] == "ok"


def test_mmau_integer_category_does_not_abort(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oscar_eval.benchmarks.base import ItemError
    from oscar_eval.benchmarks.mmau_pro import MMAUPro

    root = tmp_path / "mmau"
    root.mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "c1", "question": "q", "category": 7, "audio_path": []}]),
                   root / "test.parquet")
    bench = MMAUPro(data_dir=root, subsets=["open", "closed"], judge_cache=tmp_path / "jc")
    assert list(bench.items("open")) == []
    (closed,) = bench.items("closed")
    assert isinstance(closed, ItemError) and "'category' must be a string" in closed.error and "row 1" in closed.error
