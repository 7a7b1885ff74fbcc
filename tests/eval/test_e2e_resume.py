"""End to end on the smoke configuration: a run killed by a real signal and resumed with --resume ends
with exactly the records of an uninterrupted run (predictions and scores; timings excluded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Short-answer subsets and a small input budget keep this fast; truncation is still exercised.
SUBSETS = ["hotpotqa_e", "passage_count_e", "trec_e", "lcc_e"]
ARGS = ["run", "longbench", "--subsets", *SUBSETS, "--limit", "2", "--max-input-len", "256", "--no-progress"]
N_ITEMS = 8
COMPARED = ("status", "subset", "index", "length", "prediction", "score", "references", "input_tokens",
            "truncated", "new_tokens", "prompt_sha256", "error")


def _cmd(method: str, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "oscar_eval.cli", *ARGS, "--method", method, "--results", str(results), *extra]


def _env(cache: Path) -> dict:
    return {**os.environ, "OSCAR_EVAL_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def _records(results: Path) -> dict[str, dict]:
    (run_dir,) = (results / "runs").iterdir()
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    recs = [json.loads(x) for x in lines]
    ids = [r["item_id"] for r in recs]
    assert len(ids) == len(set(ids)), "an item was recorded twice"
    return {r["item_id"]: {k: r.get(k) for k in COMPARED} for r in recs}


def _n_lines(results: Path) -> int:
    runs = results / "runs"
    if not runs.is_dir():
        return 0
    for run_dir in runs.iterdir():
        path = run_dir / "records.jsonl"
        if path.exists():
            return path.read_bytes().count(b"\n")
    return 0


@pytest.mark.parametrize("method, sig", [("fp16", signal.SIGTERM), ("kivi", signal.SIGKILL),
                                         ("oscar", signal.SIGKILL)])
def test_killed_run_resumes_to_identical_records(tmp_path, smoke_cache, method, sig):
    env = _env(smoke_cache)
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"

    # The uninterrupted reference runs in-process (same code path as the CLI, one interpreter fewer).
    from oscar_eval.api import run_benchmark

    run_benchmark("longbench_e", methods=[method], subsets=SUBSETS, limit=2, max_input_len=256, results=full,
                  progress=False, log=lambda msg: None)
    reference = _records(full)
    assert len(reference) == N_ITEMS

    proc = subprocess.Popen(_cmd(method, interrupted), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _n_lines(interrupted) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0, "the run finished before it could be interrupted"
    n_before = _n_lines(interrupted)
    assert 2 <= n_before < N_ITEMS

    resumed = subprocess.run(_cmd(method, interrupted, "--resume"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already recorded were skipped" in resumed.stderr
    assert _records(interrupted) == reference

    (run_a,) = (full / "runs").iterdir()
    (run_b,) = (interrupted / "runs").iterdir()
    assert run_a.name == run_b.name  # same settings -> same run id
    sa = json.loads((run_a / "summary.json").read_text())
    sb = json.loads((run_b / "summary.json").read_text())
    assert sa["subsets"] == sb["subsets"] and sa["average"] == sb["average"] and sb["n_items"] == N_ITEMS
