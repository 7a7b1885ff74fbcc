"""Sharded data-parallel runs: rank detection, the length-balanced split, torchrun and SLURM launches
that merge to exactly a one-process run, a killed rank resumed, merges of incomplete runs, and the
``device_map`` plumbing (as far as a CPU allows; the two-GPU run is issue 19)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oscar_eval.cli import UserError
from oscar_eval.store.sharding import Shard, detect, item_weights, shard_items, split

from .conftest import run_cli

SUBSETS = ["hotpotqa_e", "passage_count_e", "trec_e", "lcc_e"]
# CPU (gloo) launches on purpose, also on a GPU machine: two ranks need two GPUs there (issue 19's run)
ARGS = ["run", "longbench", "--method", "oscar", "--subsets", *SUBSETS, "--limit", "2", "--max-input-len", "256",
        "--no-progress", "--device", "cpu"]
N_ITEMS = 8
COMPARED = ("item_id", "status", "subset", "index", "length", "prediction", "score", "references", "input_tokens",
            "truncated", "new_tokens", "prompt_sha256", "error")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


# -- rank detection and the split ----------------------------------------------------------------

def test_detect_reads_torchrun_then_slurm_variables():
    assert detect({}) == Shard()
    assert detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4, 1, "torchrun")
    assert detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == Shard(5, 8, 1, "slurm")
    # torchrun started by srun: torchrun's ranks (one per GPU process) win over SLURM's (one per node)
    both = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    assert detect(both) == Shard(2, 4, 0, "torchrun")
    assert detect({"SLURM_PROCID": "1"}) == Shard()  # no world size: not a launch
    with pytest.raises(UserError, match="rank 4 / world size 4"):
        detect({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="SLURM_NTASKS='two'"):
        detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "two"})


def test_split_is_contiguous_and_balances_the_weights():
    assert split([10, 1, 1, 1, 1, 10], 2) == [(0, 3), (3, 6)]
    assert split([30, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]  # one long item: a shard of its own
    assert split([1] * 7, 3) == [(0, 2), (2, 5), (5, 7)]  # nearest cut, ties to the earlier one
    assert split([5, 5], 4) == [(0, 0), (0, 1), (1, 1), (1, 2)]  # more ranks than items: some get nothing
    assert split([0, 0, 0, 0], 2) == [(0, 2), (2, 4)]  # nothing to balance: by count
    for weights, world in (([3, 9, 2, 7, 1, 8, 4], 3), ([1] * 13, 4), ([100, 1, 1], 5)):
        ranges = split(weights, world)
        assert [r[0] for r in ranges[1:]] == [r[1] for r in ranges[:-1]]  # contiguous, in order
        assert ranges[0][0] == 0 and ranges[-1][1] == len(weights)


class _It:
    def __init__(self, item_id, length, prompt=True):
        self.item_id, self.length = item_id, length
        if prompt:
            self.prompt = "p"


def test_weights_are_lengths_when_every_item_has_one_else_counts():
    items = [_It("a", 100), _It("b", 1), _It("c", 1), _It("bad", None, prompt=False), _It("d", 98)]
    assert item_weights(items) == [100.0, 1.0, 1.0, 0.0, 98.0]  # an unreadable row costs nothing
    assert item_weights([_It("a", 100), _It("b", None)]) == [1.0, 1.0]
    assert [it.item_id for it in shard_items(items, Shard(0, 2))] == ["a"]
    assert [it.item_id for it in shard_items(items, Shard(1, 2))] == ["b", "c", "bad", "d"]
    assert shard_items(items, Shard()) == items


# -- end to end on the smoke configuration ---------------------------------------------------------

def _env(cache: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**env, "OSCAR_EVAL_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **extra}


def _torchrun(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "oscar_eval.cli", *ARGS, "--results", str(results), *extra]


def _run_dir(results: Path) -> Path:
    (run_dir,) = (results / "runs").iterdir()
    return run_dir


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _compared(run_dir: Path) -> list[dict]:
    return [{k: r.get(k) for k in COMPARED} for r in _records(run_dir / "records.jsonl")]


def _summary(run_dir: Path) -> dict:
    """The summary without its wall-clock part (throughput: timings differ between any two runs)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    speed = summary.pop("throughput")
    assert speed["new_tokens"] > 0 and speed["seconds"] > 0
    summary["new_tokens"] = speed["new_tokens"]
    return summary


@pytest.fixture(scope="module")
def reference(smoke_cache, tmp_path_factory):
    """The one-process run (in-process: the same code path as the CLI)."""
    from oscar_eval.api import run_benchmark

    out = tmp_path_factory.mktemp("one_process")
    run_benchmark("longbench_e", methods=["oscar"], subsets=SUBSETS, limit=2, max_input_len=256, results=out,
                  device="cpu", progress=False, log=lambda msg: None, shard=Shard())
    run_dir = _run_dir(out)
    assert len(_compared(run_dir)) == N_ITEMS
    return run_dir


def test_torchrun_two_ranks_merge_to_the_one_process_run(tmp_path, smoke_cache, reference):
    proc = subprocess.run(_torchrun(tmp_path), env=_env(smoke_cache), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _run_dir(tmp_path)
    assert run_dir.name == reference.name  # sharding is not part of the run's identity
    shard0, shard1 = _records(run_dir / "records.rank0-of-2.jsonl"), _records(run_dir / "records.rank1-of-2.jsonl")
    assert shard0 and shard1 and len(shard0) + len(shard1) == N_ITEMS
    assert _compared(run_dir) == _compared(reference)
    merged, single = _summary(run_dir), _summary(reference)
    assert {k: v for k, v in merged.items()} == single
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["shards"]["world_size"] == 2 and manifest["coverage"] == json.loads(
        (reference / "manifest.json").read_text())["coverage"]
    assert "all 2 shards complete; merged" in proc.stderr


def test_killed_rank_resumes_with_nothing_lost_or_duplicated(tmp_path, smoke_cache, reference):
    env = _env(smoke_cache)
    proc = subprocess.Popen(_torchrun(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    rank1 = tmp_path / "runs"
    deadline = time.monotonic() + 300
    victim = None
    while proc.poll() is None and time.monotonic() < deadline:
        dirs = list(rank1.iterdir()) if rank1.is_dir() else []
        records = dirs[0] / "records.rank1-of-2.jsonl" if dirs else None
        if records is not None and records.exists() and records.read_bytes().count(b"\n") >= 1:
            victim = int((dirs[0] / ".lock.rank1-of-2").read_text())
            os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.communicate(timeout=120)
    assert victim is not None and proc.returncode != 0, "the launch finished before a rank could be killed"
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / "summary.json").exists()
    before = len(_records(run_dir / "records.rank1-of-2.jsonl"))
    assert before < len(json.loads((run_dir / "shard.rank1-of-2.json").read_text())["shard"]["item_ids"])

    resumed = subprocess.run(_torchrun(tmp_path, "--resume"), env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already recorded were skipped" in resumed.stderr
    for rank in (0, 1):
        ids = [r["item_id"] for r in _records(run_dir / f"records.rank{rank}-of-2.jsonl")]
        assert len(ids) == len(set(ids)), f"rank {rank} recorded an item twice"
    assert _compared(run_dir) == _compared(reference)
    assert _summary(run_dir) == _summary(reference)


def test_slurm_variables_shard_the_same_way_and_merge_names_missing_shards(tmp_path, smoke_cache, reference,
                                                                          monkeypatch, capsys):
    from oscar_eval.api import run_benchmark

    def rank(r: int) -> list[dict]:
        for var in LAUNCH_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("SLURM_PROCID", str(r))
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_LOCALID", "0")
        return run_benchmark("longbench_e", methods=["oscar"], subsets=SUBSETS, limit=2, max_input_len=256,
                             results=tmp_path, device="cpu", progress=False, log=lambda msg: None)

    (first,) = rank(0)
    run_dir = _run_dir(tmp_path)
    assert first["shard"] == {"rank": 0, "world_size": 2} and not (run_dir / "summary.json").exists()
    code, _, err = run_cli(capsys, "merge", "--results", str(tmp_path))
    assert code == 1 and "shard rank1-of-2 is missing" in err and "rank0-of-2" not in err

    for var in LAUNCH_VARS:  # one process on a half-done sharded run: refused before loading anything
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="sharded over 2 processes"):
        run_benchmark("longbench_e", methods=["oscar"], subsets=SUBSETS, limit=2, max_input_len=256,
                      results=tmp_path, device="cpu", progress=False, log=lambda msg: None, resume=True)

    (last,) = rank(1)  # the last shard to finish merges
    assert "shard" not in last and _compared(run_dir) == _compared(reference)
    assert _summary(run_dir) == _summary(reference)
    # the same split as torchrun's variables: rank 1's part under SLURM is rank 1's part under RANK/WORLD_SIZE
    part = json.loads((run_dir / "shard.rank1-of-2.json").read_text())["shard"]["item_ids"]
    items = [r["item_id"] for r in _compared(reference)]
    start, end = split(item_weights([_It(r["item_id"], r["length"]) for r in _compared(reference)]), 2)[1]
    assert part == items[start:end]

    code, out, _ = run_cli(capsys, "merge", "--results", str(tmp_path), run_dir.name)
    assert code == 0 and "merged 2 shards, 8 items (0 failed)" in out
    # a shard that lost its last record: the merge names it and how far it got, and writes nothing
    lines = (run_dir / "records.rank0-of-2.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "records.rank0-of-2.jsonl").write_text("".join(lines[:-1]))
    (run_dir / "summary.json").unlink()
    code, _, err = run_cli(capsys, "merge", "--results", str(tmp_path), run_dir.name)
    assert code == 1 and f"shard rank0-of-2 is incomplete ({len(lines) - 1} of {len(lines)} items" in err
    assert not (run_dir / "summary.json").exists()


def test_sharded_launch_of_another_world_size_is_refused(tmp_path, smoke_cache, monkeypatch):
    from oscar_eval.api import run_benchmark

    kw = dict(methods=["oscar"], subsets=["trec_e"], limit=2, max_input_len=256, results=tmp_path, progress=False,
              log=lambda msg: None)
    run_benchmark("longbench_e", shard=Shard(0, 2), **kw)
    with pytest.raises(UserError, match="sharded over 2 processes, not 3"):
        run_benchmark("longbench_e", shard=Shard(1, 3), resume=True, **kw)
    with pytest.raises(UserError, match="already exist"):  # the same shard again without --resume
        run_benchmark("longbench_e", shard=Shard(0, 2), **kw)


# -- device_map ------------------------------------------------------------------------------------

def test_device_map_reaches_from_pretrained_and_the_run_id(tmp_path, smoke_model, monkeypatch):
    import transformers

    from oscar_eval.api import run_benchmark
    from oscar_eval.models import load_model

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    loaded = load_model(smoke_model, device="cpu", device_map={"": "cpu"})
    assert seen == [{"": "cpu"}] and loaded.device == "cpu"
    kw = dict(methods=["fp16"], subsets=["trec_e"], limit=1, max_input_len=256, results=tmp_path, progress=False,
              log=lambda msg: None, shard=Shard())
    (split_run,) = run_benchmark("longbench_e", device="cpu", device_map="auto", **kw)
    assert seen[-1] == "auto"
    (plain,) = run_benchmark("longbench_e", device="cpu", **kw)
    assert seen[-1] is None and split_run["run_dir"] != plain["run_dir"]
    cfg = json.loads((Path(split_run["run_dir"]) / "manifest.json").read_text())["config"]
    assert cfg["model"]["device_map"] == "auto"
    assert "device_map" not in json.loads((Path(plain["run_dir"]) / "manifest.json").read_text())["config"]["model"]


@pytest.mark.parametrize("kernels", ["off", "fallback"])
def test_each_cache_layer_stores_on_its_key_states_device(kernels):
    """A model split over devices hands each cache layer its keys on that layer's device; the layer's
    storage (window and packed history) must stay there. "meta" stands in for a second device."""
    import torch
    from tiny_models import llama

    import oscar_core as oc

    model, _ = llama(head_dim=128)
    model = model.to(torch.bfloat16)
    cache = oc.make_cache(model, "oscar", kernels=kernels)
    for i, dev in enumerate(["cpu", "meta"]):
        k = torch.randn(1, 2, 300, 128, dtype=torch.bfloat16).to(dev)
        layer = cache.layers[i]
        layer.update(k, k.clone())
        layer.commit_prompt([0])
        for _ in range(40):  # past one flush of the window
            layer.update(k[:, :, :1], k[:, :, :1])
        assert layer.k.units and layer.v.units
        stored = [*layer.k.units.values(), *layer.v.units.values(), layer.k.buf, layer.v.buf]
        assert {t.device.type for t in stored} == {dev}, (i, dev)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_model_split_over_cpu_and_gpu_generates_with_each_layer_on_its_device():
    import torch
    from tiny_models import llama
    from transformers import LlamaForCausalLM

    import oscar_core as oc

    model, _ = llama(head_dim=128)
    model = model.to(torch.bfloat16)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        dmap = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": "cpu",
                "model.rotary_emb": 0, "lm_head": "cpu"}
        split_model = LlamaForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map=dmap).eval()
    cache = oc.make_cache(split_model, "oscar")  # kernels="auto": a layer on the GPU -> the kernel layout
    ids = torch.randint(3, 200, (1, 300), generator=torch.Generator().manual_seed(0)).to("cuda:0")
    ran_on: list = [None] * len(split_model.model.layers)

    def where(i):
        def hook(module, args, kwargs):
            ran_on[i] = kwargs["hidden_states"].device if "hidden_states" in kwargs else args[0].device
        return hook

    hooks = [layer.self_attn.register_forward_pre_hook(where(i), with_kwargs=True)
             for i, layer in enumerate(split_model.model.layers)]
    with torch.inference_mode():
        out = split_model.generate(input_ids=ids, max_new_tokens=40, do_sample=False, past_key_values=cache)
    for h in hooks:
        h.remove()
    assert out.shape[1] == 340
    # Each cache layer stores on the device its attention ran on: accelerate runs an offloaded ("cpu")
    # layer on the GPU with its weights streamed in (transformers 5.17), a resident one where it sits.
    assert [layer.k.buf.device.type for layer in cache.layers] == [d.type for d in ran_on]
    assert type(cache.layers[0]).__name__ == ("KernelOScaRLayer" if oc.kernels.available() else "PackedKVLayer")
