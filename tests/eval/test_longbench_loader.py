"""LongBench-E loading: both on-disk formats, clear one-line errors naming the culprit."""

from __future__ import annotations

import json

import pytest

from oscar_eval.benchmarks.longbench_e import LongBenchE
from oscar_eval.cli import UserError

from .conftest import SMOKE_DATA


def _records(subset: str = "qasper_e", n: int = 2) -> list[dict]:
    return [{"input": f"question {i}", "context": f"context {i}", "answers": [f"ans {i}"], "length": 1000 * (i + 1),
             "dataset": subset, "language": "en", "all_classes": None, "_id": f"id{i}"} for i in range(n)]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_smoke_fixture_is_real_thudm_format_with_all_buckets():
    from oscar_eval.scoring.longbench import bucket_of

    files = sorted(SMOKE_DATA.glob("*.jsonl"))
    assert len(files) >= 5
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        for r in rows:
            assert set(r) == {"input", "context", "answers", "length", "dataset", "language", "all_classes", "_id"}
        assert {bucket_of(r["length"]) for r in rows} == {"0-4k", "4-8k", "8k+"}


def test_jsonl_and_parquet_give_the_same_items(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    recs = _records()
    (tmp_path / "thudm").mkdir()
    _write_jsonl(tmp_path / "thudm" / "qasper_e.jsonl", recs)
    # lm-eval mirror: `question` instead of `input`, one folder per subset
    mirror = tmp_path / "mirror" / "qasper_e"
    mirror.mkdir(parents=True)
    rows = [{("question" if k == "input" else k): v for k, v in r.items()} for r in recs]
    pq.write_table(pa.Table.from_pylist(rows), mirror / "test-00000-of-00001.parquet")
    a = list(LongBenchE(data_dir=tmp_path / "thudm", subsets=["qasper_e"]).items("qasper_e"))
    b = list(LongBenchE(data_dir=tmp_path / "mirror", subsets=["qasper"]).items("qasper_e"))
    assert [x.prompt for x in a] == [x.prompt for x in b]
    assert [x.item_id for x in a] == [x.item_id for x in b] == ["qasper_e/id0", "qasper_e/id1"]
    assert [x.length for x in b] == [1000, 2000] and b[0].references == ["ans 0"]


def test_thudm_zip_layout_with_data_subfolder(tmp_path):
    (tmp_path / "data").mkdir()
    _write_jsonl(tmp_path / "data" / "trec_e.jsonl", _records("trec_e", 1))
    items = list(LongBenchE(data_dir=tmp_path, subsets=["trec_e"]).items("trec_e"))
    assert len(items) == 1


def test_limit(tmp_path):
    _write_jsonl(tmp_path / "qasper_e.jsonl", _records(n=5))
    assert len(list(LongBenchE(data_dir=tmp_path, subsets=["qasper_e"]).items("qasper_e", limit=2))) == 2


def _load(tmp_path):
    return list(LongBenchE(data_dir=tmp_path, subsets=["qasper_e"]).items("qasper_e"))


def test_malformed_jsonl_line_is_a_failed_item_naming_file_and_line(tmp_path):
    path = tmp_path / "qasper_e.jsonl"
    good = _records(n=3)
    path.write_text(json.dumps(good[0]) + "\n{not json\n" + json.dumps(good[2]) + "\n", encoding="utf-8")
    items = _load(tmp_path)
    assert [type(i).__name__ for i in items] == ["Item", "ItemError", "Item"]  # the line after it still loads
    bad = items[1]
    assert bad.item_id == "qasper_e/qasper_e.jsonl:2" and f"{path}:2" in bad.error and "malformed JSON" in bad.error
    assert "\n" not in bad.error


def test_a_non_utf8_byte_fails_only_its_line(tmp_path):
    path = tmp_path / "qasper_e.jsonl"
    lines = [json.dumps(r).encode() for r in _records(n=3)]
    lines[1] = lines[1].replace(b"context", b"cont\xffext", 1)
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = _load(tmp_path)
    assert [type(i).__name__ for i in items] == ["Item", "ItemError", "Item"]
    assert f"{path}:2" in items[1].error and "UTF-8" in items[1].error


def test_missing_field_names_file_line_and_field(tmp_path):
    rec = _records()[0]
    del rec["answers"]
    path = tmp_path / "qasper_e.jsonl"
    _write_jsonl(path, [_records()[1], rec])
    items = _load(tmp_path)
    assert f"{path}:2: record lacks field 'answers'" == items[1].error


def test_missing_data_dir_and_missing_subset_file(tmp_path):
    with pytest.raises(UserError, match="does-not-exist"):
        LongBenchE(data_dir=tmp_path / "does-not-exist")
    with pytest.raises(UserError, match=r"no data for subset 'lcc_e'.*download"):
        LongBenchE(data_dir=tmp_path, subsets=["lcc_e"]).data_files("lcc_e")


def test_unknown_subset(tmp_path):
    with pytest.raises(UserError, match="unknown LongBench-E subset 'narrativeqa_x'"):
        LongBenchE(data_dir=tmp_path, subsets=["narrativeqa_x"])


def test_summarize_ignores_failed_records(tmp_path):
    bench = LongBenchE(data_dir=SMOKE_DATA, subsets=["trec_e"])
    recs = [{"subset": "trec_e", "length": 100, "status": "ok", "score": 1.0},
            {"subset": "trec_e", "length": 5000, "status": "ok", "score": 0.0},
            {"subset": "trec_e", "length": 9000, "status": "failed", "score": None}]
    out = bench.summarize(recs)
    assert out["subsets"]["trec_e"]["0-4k"] == 100.0 and out["subsets"]["trec_e"]["8k+"] is None
    assert out["average"] == 50.0


def test_duplicate_id_is_a_failed_item(tmp_path):
    recs = _records(n=2)
    recs[1]["_id"] = recs[0]["_id"]
    path = tmp_path / "qasper_e.jsonl"
    _write_jsonl(path, recs)
    first, dup = _load(tmp_path)
    assert first.item_id == "qasper_e/id0" and dup.item_id == "qasper_e/qasper_e.jsonl:2"
    assert dup.error == f"{path}:2: duplicate _id 'id0' (first at qasper_e.jsonl:1)"
