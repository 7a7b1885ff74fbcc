"""The results store: append + read back, crash tolerance, resume bookkeeping, run ids, summaries."""

from __future__ import annotations

import json

import pytest

from oscar_eval.store.results import RunStore, list_runs, make_run_id, settings_hash


def _rec(i: int, subset: str = "qasper_e", score: float = 0.5, length: int = 100) -> dict:
    return {"item_id": f"{subset}/{i}", "subset": subset, "index": i, "length": length, "status": "ok",
            "error": None, "score": score, "prediction": f"p{i}"}


def test_append_and_read(tmp_path):
    store = RunStore(tmp_path, "run-a")
    store.open(resume=False)
    for i in range(3):
        store.append(_rec(i))
    store.close()
    assert [r["item_id"] for r in store.records()] == ["qasper_e/0", "qasper_e/1", "qasper_e/2"]
    assert store.done_ids() == {"qasper_e/0", "qasper_e/1", "qasper_e/2"}
    assert store.records_path.read_text().count("\n") == 3


def test_truncated_last_line_is_ignored_then_dropped_on_resume(tmp_path):
    store = RunStore(tmp_path, "run-b")
    store.open(resume=False)
    store.append(_rec(0))
    store.append(_rec(1))
    store.close()
    with open(store.records_path, "a") as f:
        f.write('{"item_id": "qasper_e/2", "subs')  # a killed writer
    assert store.done_ids() == {"qasper_e/0", "qasper_e/1"}
    store.open(resume=True)
    store.append(_rec(2))
    store.close()
    lines = store.records_path.read_text().splitlines()
    assert [json.loads(x)["item_id"] for x in lines] == ["qasper_e/0", "qasper_e/1", "qasper_e/2"]


def test_only_a_partial_line(tmp_path):
    store = RunStore(tmp_path, "run-c")
    store.dir.mkdir(parents=True)
    store.records_path.write_text('{"item_id": "x')
    assert store.records() == []
    store.open(resume=True)
    store.append(_rec(0))
    store.close()
    assert [r["item_id"] for r in store.records()] == ["qasper_e/0"]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    store = RunStore(tmp_path, "run-d")
    store.dir.mkdir(parents=True)
    store.records_path.write_text(json.dumps(_rec(0)) + "\nnot json\n" + json.dumps(_rec(1)) + "\n")
    with pytest.raises(ValueError, match=r"records.jsonl:2"):
        store.records()


def test_open_without_resume_starts_fresh(tmp_path):
    store = RunStore(tmp_path, "run-e")
    store.open(resume=False)
    store.append(_rec(0))
    store.close()
    store.open(resume=False)
    store.close()
    assert store.records() == []


def test_run_id_is_stable_and_settings_sensitive():
    a = make_run_id("longbench_e", "Llama 3.1/8B", "oscar", {"x": 1, "y": [1, 2]})
    b = make_run_id("longbench_e", "Llama 3.1/8B", "oscar", {"y": [1, 2], "x": 1})
    c = make_run_id("longbench_e", "Llama 3.1/8B", "oscar", {"x": 2, "y": [1, 2]})
    assert a == b != c
    assert a.startswith("longbench_e-Llama-3.1-8B-oscar-") and len(settings_hash({})) == 8


def test_manifest_summary_and_listing(tmp_path):
    store = RunStore(tmp_path, "run-f")
    store.write_manifest({"benchmark": "longbench_e"})
    store.open(resume=False)
    store.append(_rec(0, score=1.0, length=100))
    store.append(_rec(1, score=0.0, length=5000))
    store.append({**_rec(2), "status": "failed", "error": "RuntimeError: boom", "score": None})
    store.close()

    def summarize(records):
        ok = [r for r in records if r["status"] == "ok"]
        return {"average": 100 * sum(r["score"] for r in ok) / len(ok)}

    s = store.recompute_summary(summarize, benchmark="longbench_e", method="oscar")
    assert s["schema"] == 1 and s["run_id"] == "run-f"
    assert s["n_items"] == 3 and s["n_failed"] == 1 and s["average"] == 50.0
    assert json.loads(store.summary_path.read_text()) == s
    assert store.read_manifest()["schema"] == 1
    assert [r.run_id for r in list_runs(tmp_path)] == ["run-f"]


def test_latest_record_of_an_item_wins(tmp_path):
    store = RunStore(tmp_path, "run-g")
    store.write_manifest({"benchmark": "x", "coverage": {"total": 3, "missing_subsets": []}})
    store.open(resume=False)
    store.append({**_rec(0), "status": "failed", "error": "RuntimeError: oom", "score": None})
    store.append(_rec(1))
    store.append({**_rec(0), "score": 1.0})  # the retry
    store.close()
    assert len(store.records()) == 3  # append-only
    assert [r["item_id"] for r in store.latest_records()] == ["qasper_e/1", "qasper_e/0"]
    assert store.done_ids() == {"qasper_e/0", "qasper_e/1"} and store.failed_ids() == set()
    s = store.recompute_summary(lambda recs: {"scores": sorted(r["score"] for r in recs)})
    assert s["n_items"] == 2 and s["n_failed"] == 0 and s["scores"] == [0.5, 1.0]
    assert s["coverage"] == {"done": 2, "total": 3, "fraction": 2 / 3, "missing_subsets": [], "complete": False}


def test_failed_items_are_not_done(tmp_path):
    store = RunStore(tmp_path, "run-h")
    store.open(resume=False)
    store.append({**_rec(0), "status": "failed", "error": "E: x", "score": None})
    store.close()
    assert store.done_ids() == set() and store.failed_ids() == {"qasper_e/0"}


def test_one_writer_per_run(tmp_path):
    from oscar_eval.store.results import RunLocked

    a, b = RunStore(tmp_path, "run-i"), RunStore(tmp_path, "run-i")
    a.lock()
    with pytest.raises(RunLocked, match=r"run-i is being written by process \d+"):
        b.lock()
    a.unlock()
    b.lock()  # free again once released
    b.unlock()


def test_corrupt_manifest_names_file_and_line(tmp_path):
    from oscar_eval.store.results import StoreError

    store = RunStore(tmp_path, "run-j")
    store.dir.mkdir(parents=True)
    store.manifest_path.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(StoreError, match=r"manifest.json:3: not valid JSON"):
        store.read_manifest()
    store.manifest_path.write_text("[1]")
    with pytest.raises(StoreError, match=r"manifest.json:1: expected a JSON object"):
        store.read_manifest()


def test_a_non_utf8_middle_record_is_corrupt(tmp_path):
    from oscar_eval.store.results import StoreError

    store = RunStore(tmp_path, "run-k")
    store.dir.mkdir(parents=True)
    store.records_path.write_bytes(json.dumps(_rec(0)).encode() + b'\n{"item_id": "\xff"}\n'
                                   + json.dumps(_rec(1)).encode() + b"\n")
    with pytest.raises(StoreError, match=r"records.jsonl:2: corrupt record"):
        store.records()
