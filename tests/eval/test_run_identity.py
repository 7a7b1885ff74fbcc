"""Run identity, one writer per run, visible failures (issue 14), end to end on the smoke configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import error_line, run_cli

ARGS = ["run", "longbench", "--method", "fp16", "--subsets", "trec_e", "--no-progress"]


def _runs(results: Path) -> list[Path]:
    return sorted(p for p in (results / "runs").iterdir() if p.is_dir())


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]


def _no_model_load(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the early checks")

    monkeypatch.setattr("oscar_eval.models.load_model", refuse)


def test_limit_is_in_the_id_and_a_limited_run_is_partial(capsys, tmp_path, smoke_cache):
    assert run_cli(capsys, *ARGS, "--limit", "1", "--results", str(tmp_path))[0] == 0
    assert run_cli(capsys, *ARGS, "--results", str(tmp_path))[0] == 0  # the full subset: another run
    limited, full = sorted(_runs(tmp_path), key=lambda p: len(_lines(p)))
    assert len(_lines(limited)) == 1 and len(_lines(full)) == 3
    cov = json.loads((limited / "summary.json").read_text())["coverage"]
    assert cov["done"] == 1 and cov["total"] == 3 and cov["complete"] is False
    manifest = json.loads((limited / "manifest.json").read_text())
    assert manifest["config"]["limit"] == 1 and manifest["coverage"] == cov
    # --limit 1 --overwrite replaces only the limited run, never the complete one
    assert run_cli(capsys, *ARGS, "--limit", "1", "--overwrite", "--results", str(tmp_path))[0] == 0
    assert len(_lines(full)) == 3


def test_all_default_subsets_without_limit_is_complete(capsys, tmp_path, smoke_cache):
    code, _, err = run_cli(capsys, "run", "longbench", "--method", "fp16", "--max-input-len", "128",
                           "--no-progress", "--results", str(tmp_path))
    assert code == 0 and "partial run" not in err
    (run_dir,) = _runs(tmp_path)
    cov = json.loads((run_dir / "summary.json").read_text())["coverage"]
    assert cov == {"done": 18, "total": 18, "fraction": 1.0, "missing_subsets": [], "complete": True}


def test_subset_selection_is_partial_and_names_the_missing_subsets(capsys, tmp_path, smoke_cache):
    code, _, err = run_cli(capsys, *ARGS, "--limit", "1", "--results", str(tmp_path))
    assert code == 0 and "partial run, 1 of 3 items" in err
    (run_dir,) = _runs(tmp_path)
    cov = json.loads((run_dir / "summary.json").read_text())["coverage"]
    assert "qasper_e" in cov["missing_subsets"] and "trec_e" not in cov["missing_subsets"]


def test_resume_refuses_a_different_configuration_and_names_the_fields(capsys, tmp_path, smoke_cache, monkeypatch):
    args = [*ARGS, "--limit", "1", "--results", str(tmp_path)]
    assert run_cli(capsys, *args)[0] == 0
    (run_dir,) = _runs(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["config"]["method"]["name"] = "kivi"  # a kivi run's folder relabelled as this fp16 run
    manifest["config"]["method"]["params"]["residual_length"] = 64
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    _no_model_load(monkeypatch)
    code, _, err = run_cli(capsys, *args, "--resume")
    line = error_line(err)
    assert code == 2 and "method.name: 'kivi' -> 'fp16'" in line and "method.params.residual_length" in line


def test_resume_refuses_a_different_decode_path(capsys, tmp_path, smoke_cache):
    args = [*ARGS, "--limit", "1", "--results", str(tmp_path)]
    assert run_cli(capsys, *args)[0] == 0
    (run_dir,) = _runs(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["runtime"]["decode_path"] == "fp16"
    assert manifest["config"]["runtime"]["processors"]["tokenizer"]["stand_in"] is False
    manifest["config"]["runtime"]["decode_path"] = "kernel"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code == 2 and "runtime.decode_path: 'kernel' -> 'fp16'" in error_line(err)


def test_existing_run_is_refused_before_the_model_loads(capsys, tmp_path, smoke_cache, monkeypatch):
    args = [*ARGS, "--limit", "1", "--results", str(tmp_path)]
    assert run_cli(capsys, *args)[0] == 0
    _no_model_load(monkeypatch)
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--resume" in error_line(err)


def test_second_process_on_a_locked_run_fails_at_once(capsys, tmp_path, smoke_cache, monkeypatch):
    from oscar_eval.store.results import RunStore

    args = [*ARGS, "--limit", "1", "--results", str(tmp_path)]
    assert run_cli(capsys, *args)[0] == 0
    (run_dir,) = _runs(tmp_path)
    holder = RunStore(tmp_path, run_dir.name)
    holder.lock()  # this process writes the run now
    try:
        env = {**os.environ, "OSCAR_EVAL_CACHE": str(smoke_cache)}
        other = subprocess.run([sys.executable, "-m", "oscar_eval.cli", *args, "--resume"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert other.returncode == 2, other.stderr[-2000:]
        assert f"being written by process {os.getpid()}" in error_line(other.stderr)
        assert "Loading weights" not in other.stderr  # refused before any model load
        _no_model_load(monkeypatch)  # and in-process, through the API: the same refusal, no model
        code, _, err = run_cli(capsys, *args, "--overwrite")
        assert code == 2 and "being written" in error_line(err)
    finally:
        holder.unlock()
    assert len(_lines(run_dir)) == 1  # nothing was appended while the lock was held


def _failing_generate(monkeypatch, fail_ids: set[str] | None) -> None:
    from oscar_eval.models import TextRunner

    real = TextRunner.generate

    def generate(self, item, cache):
        if fail_ids is None or item.item_id in fail_ids:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, item, cache)

    monkeypatch.setattr(TextRunner, "generate", generate)


def test_every_item_failed_exits_non_zero(capsys, tmp_path, smoke_cache, monkeypatch):
    _failing_generate(monkeypatch, None)
    code, _, err = run_cli(capsys, *ARGS, "--limit", "2", "--results", str(tmp_path))
    assert code == 1 and "2 item(s) failed" in err


def _run_with_one_failure(capsys, tmp_path, monkeypatch, failing: int) -> tuple[list[str], list[str], Path]:
    """The smoke run over trec_e with item ``failing`` failing (exit 1): ``(item ids, args, run folder)``."""
    from oscar_eval.benchmarks.longbench_e import LongBenchE
    from oscar_eval.smoke import SMOKE_DATA

    ids = [it.item_id for it in LongBenchE(SMOKE_DATA, ["trec_e"]).items("trec_e")]
    args = [*ARGS, "--results", str(tmp_path)]
    with monkeypatch.context() as m:
        _failing_generate(m, {ids[failing]})
        assert run_cli(capsys, *args)[0] == 1
    (run_dir,) = _runs(tmp_path)
    return ids, args, run_dir


def test_resume_retries_failed_items_and_counts_each_once(capsys, tmp_path, smoke_cache, monkeypatch):
    ids, args, run_dir = _run_with_one_failure(capsys, tmp_path, monkeypatch, 1)
    assert [r["status"] for r in _lines(run_dir)] == ["ok", "failed", "ok"]
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code == 0 and "2 item(s) already recorded were skipped" in err
    lines = _lines(run_dir)
    assert [r["item_id"] for r in lines] == [*ids, ids[1]] and lines[-1]["status"] == "ok"  # append-only
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["n_items"] == 3 and s["n_failed"] == 0 and s["subsets"]["trec_e"]["n"] == 3
    assert s["coverage"]["done"] == 3 and s["coverage"]["total"] == 3


def test_retry_failed_runs_only_the_failed_items(capsys, tmp_path, smoke_cache, monkeypatch):
    ids, args, run_dir = _run_with_one_failure(capsys, tmp_path, monkeypatch, 0)
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "records.jsonl").write_text("".join(lines[:2]))  # the third item never ran (killed)
    code, _, err = run_cli(capsys, *args, "--retry-failed")
    assert code == 0 and "2 item(s) already recorded were skipped" in err
    assert [r["item_id"] for r in _lines(run_dir)] == [ids[0], ids[1], ids[0]]  # the missing one not run
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["n_items"] == 2 and s["n_failed"] == 0 and s["coverage"]["complete"] is False


@pytest.mark.parametrize("damage, where", [
    (lambda d: (d / "manifest.json").write_text('{"benchmark": "longbench_e",\n  oops'), "manifest.json:2"),
    (lambda d: (d / "records.jsonl").write_text('{"item_id": "a"}\nnot json\n{"item_id": "b"}\n'),
     "records.jsonl:2"),
])
def test_corrupt_store_files_are_one_line_errors_and_overwrite_recovers(capsys, tmp_path, smoke_cache, damage,
                                                                        where):
    args = [*ARGS, "--limit", "1", "--results", str(tmp_path)]
    assert run_cli(capsys, *args)[0] == 0
    (run_dir,) = _runs(tmp_path)
    damage(run_dir)
    code, _, err = run_cli(capsys, *args, "--resume")
    line = error_line(err)
    assert code == 2 and where in line and "--overwrite" in line
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert len(_lines(run_dir)) == 1 and json.loads((run_dir / "manifest.json").read_text())["config"]


def test_static_configuration_separates_grids_limits_and_methods():
    from oscar_eval.store.results import make_run_id
    from oscar_eval.store.run_identity import static_config

    base = dict(benchmark="niah", settings={"seed": 42}, subsets=["512"], limit=None,
                item_ids=["512/0", "512/50", "512/100"], data_files={"hay.txt": "a" * 64},
                model_revision="sha256:x", dtype="float32", device="cpu", method="oscar", params={"bits": 2})

    def run_id(**changes):
        return make_run_id("niah", "m", "oscar", static_config(**{**base, **changes}))

    ids = {run_id(), run_id(item_ids=["512/0", "512/100"]), run_id(limit=2), run_id(data_files={"hay.txt": "b"}),
           run_id(params={"bits": 3}), run_id(dtype="bfloat16"), run_id(device="cuda (NVIDIA H200)"),
           run_id(model_revision="sha256:y"), run_id(settings={"seed": 1})}
    assert len(ids) == 9 and run_id() == run_id()
