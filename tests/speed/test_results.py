"""The speed results file: schema, provenance keys, write/read round trip."""

from __future__ import annotations

import json

import pytest

from oscar_eval.provenance import environment
from oscar_eval.report.store import load_store
from oscar_eval.speed import results as rs


@pytest.fixture(scope="module")
def env():
    return environment()


def _row(**over):
    row = {
        "level": "kernel", "arch": "qwen3-8b", "impl": "oscar-int2", "batch": 1, "context": 131072,
        "num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128, "median_us": 30.1, "min_us": 29.8,
        "max_us": 31.0, "bytes": 101_000_000, "gbps": 3355.0, "roofline_fraction": 0.78,
        "kv_bytes": 101_000_000, "peak_mem_bytes": 2_000_000_000,
    }
    row.update(over)
    return row


def test_the_environment_has_every_required_speed_key(env):
    for key in rs.REQUIRED_ENV_KEYS:
        assert key in env
    assert env["torch"] and env["transformers"] and env["oscar_eval"]
    assert len(env["source_sha256"]) == 64  # identifies the code even before the first commit


def test_round_trip(tmp_path, env):
    doc = rs.make_document("qwen3-8b-test", env, 4300.0, [_row()], notes=["x"])
    path = rs.write_speed(tmp_path, doc)
    assert path == tmp_path / "speed" / "qwen3-8b-test.json"
    back = rs.read_speed(path)
    assert back == json.loads(json.dumps(doc))
    assert back["schema"] == 1 and back["kind"] == "speed"
    # the report's reader sees the same file
    store = load_store(tmp_path)
    assert not store.problems
    assert store.speed[0].rows[0]["impl"] == "oscar-int2"
    assert store.speed[0].peak_bandwidth_gbps == 4300.0


def test_missing_row_and_env_keys_are_refused(tmp_path, env):
    bad = _row()
    del bad["roofline_fraction"]
    with pytest.raises(rs.SpeedResultError, match="roofline_fraction"):
        rs.write_speed(tmp_path, rs.make_document("n", env, 1.0, [bad]))
    env2 = dict(env)
    del env2["driver"]
    with pytest.raises(rs.SpeedResultError, match="driver"):
        rs.write_speed(tmp_path, rs.make_document("n", env2, 1.0, [_row()]))
    assert not (tmp_path / "speed" / "n.json").exists()


def test_skipped_rows_keep_the_schema_with_nulls(tmp_path, env):
    row = _row(median_us=None, min_us=None, max_us=None, gbps=None, roofline_fraction=None, skip="does not fit")
    path = rs.write_speed(tmp_path, rs.make_document("skips", env, 4300.0, [row]))
    assert rs.read_speed(path)["rows"][0]["skip"] == "does not fit"


def test_nan_is_not_written(tmp_path, env):
    with pytest.raises(ValueError):
        rs.write_speed(tmp_path, rs.make_document("nan", env, float("nan"), [_row()]))


@pytest.mark.parametrize("name", ["../x", "a/b", "", " x", "x y"])
def test_bad_names(name):
    with pytest.raises(rs.SpeedResultError):
        rs.check_name(name)


def test_read_reports_a_broken_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{", encoding="utf-8")
    with pytest.raises(rs.SpeedResultError, match="unreadable"):
        rs.read_speed(p)
    p.write_text(json.dumps({"schema": 1, "kind": "speed"}), encoding="utf-8")
    with pytest.raises(rs.SpeedResultError, match="rows"):
        rs.read_speed(p)


def test_summary_speedups_and_paper_view():
    from oscar_eval.speed.runner import summarize

    rows = [
        _row(impl="bf16-sdpa-cudnn", median_us=140.0, kv_bytes=530),
        _row(impl="bf16-dynamic-flash", median_us=420.0, kv_bytes=530),
        _row(impl="oscar-int2", median_us=35.0, kv_bytes=100),
        _row(impl="oscar-ref", median_us=None),  # skipped rows are ignored
    ]
    s = summarize(rows)
    (point,) = s["points"]
    assert point["fastest_bf16"] == "bf16-sdpa-cudnn"
    p = point["packed"]["oscar-int2"]
    assert p["speedup_vs_fastest_bf16"] == 4.0
    assert p["speedup_vs"]["bf16-dynamic-flash"] == 12.0
    assert p["kv_bytes_ratio_bf16_over_packed"] == 5.3
    assert s["paper_settings"]["latency_128k_b1"][0]["speedup_vs_fastest_bf16"] == 4.0
    assert s["paper"]["throughput_4k_b48_tok_s"]["speedup"] == 4.1


def test_default_names_are_valid_results_names():
    from oscar_eval.speed.runner import SpeedOptions, default_name

    name = default_name(SpeedOptions(archs=("qwen3-8b", "/models/Llama 3.1"), levels=("kernel", "e2e")))
    assert rs.check_name(name) == name
    assert name.startswith("qwen3-8b_Llama_3.1-kernel_e2e-")


def test_committed_speed_results_are_valid():
    """Every file under results/speed/ satisfies the schema and names the GPU it ran on."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "results" / "speed"
    files = sorted(root.glob("*.json"))
    for path in files:
        doc = rs.read_speed(path)
        assert doc["env"]["gpu"] and doc["env"]["driver"] and doc["env"]["clocks"]
        assert doc["peak_bandwidth_gbps"] > 0
        for row in doc["rows"]:
            if row.get("median_us") is not None:
                assert row["min_us"] <= row["median_us"] <= row["max_us"]
                assert row["reps"] >= 20
