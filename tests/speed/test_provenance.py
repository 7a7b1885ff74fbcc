"""The one provenance collector (oscar_eval.provenance.environment): the keys every result file and
its reader use, the git state of a checkout, and no GPU facts without a CUDA device."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from oscar_eval import provenance as pv
from oscar_eval.report.store import load_store
from oscar_eval.speed import results as rs

RESULTS = Path(__file__).resolve().parents[2] / "results"
#: What the report reads from a manifest's env (report/build.py) and test_cli asserts.
MANIFEST_KEYS = ("oscar_eval", "git_commit", "python", "torch", "transformers", "cuda", "gpu", "platform")
#: What the report reads from a kernels file's env (report/kernels.py, KernelFile.date).
KERNEL_KEYS = ("gpu", "git_commit", "kernel_defines", "date")


@pytest.fixture(scope="module")
def env():
    return pv.environment()


def test_environment_has_the_union_of_the_old_collectors_keys(env):
    for key in (*MANIFEST_KEYS, *rs.REQUIRED_ENV_KEYS, *KERNEL_KEYS, *pv.GPU_KEYS, "git_dirty", "source_sha256",
                "oscar_core", "torch_cuda_build", "packages", "argv", "host", "cpu", "threads",
                "cuda_visible_devices"):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["transformers"] and env["oscar_eval"]
    assert set(env["packages"]) == set(pv.OPTIONAL_PACKAGES)
    assert env["date"].endswith("+00:00") and env["threads"] == torch.get_num_threads()
    json.dumps(env, allow_nan=False)  # it goes into strict JSON files


def test_committed_files_keys_are_still_written(env):
    """A new file carries every env key of the committed speed files and accuracy manifests, and the keys
    the report reads from kernel files; so old and new files read alike."""
    speed = [json.loads(p.read_text())["env"] for p in sorted((RESULTS / "speed").glob("*.json"))]
    manifests = [json.loads(p.read_text())["env"] for p in sorted((RESULTS / "runs").glob("*/manifest.json"))]
    kernels = [json.loads(p.read_text()).get("env") for p in sorted((RESULTS / "kernels").glob("*.json"))]
    assert speed and manifests and any(kernels)
    for old in speed + manifests:
        assert set(old) <= set(env), set(old) - set(env)
    for old in filter(None, kernels):
        assert set(KERNEL_KEYS) <= set(old) and set(KERNEL_KEYS) <= set(env)


def test_the_report_reads_a_kernels_file_with_the_new_env(tmp_path, env):
    (tmp_path / "kernels").mkdir()
    doc = {"schema": 1, "kind": "kernels", "env": env, "peak_bandwidth_gbps": 4000.0, "rows": [], "pack": {}}
    (tmp_path / "kernels" / "k.json").write_text(json.dumps(doc))
    (kf,) = load_store(tmp_path).kernels
    assert kf.date == env["date"] and kf.env["git_commit"] == env["git_commit"]


def test_sha256_files_hashes_the_files_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    assert pv.sha256_files([a, b]) == hashlib.sha256(b"firstsecond").hexdigest()
    assert pv.sha256_files([b, a]) != pv.sha256_files([a, b])
    assert pv.sha256_file(a) == hashlib.sha256(b"first").hexdigest()


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a checkout above tmp_path
    monkeypatch.delenv("GIT_COMMIT", raising=False)
    root = tmp_path / "repo"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.py").write_text("x = 1\n")
    (root / "b" / "y.py").write_text("y = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "init")
    return root


def test_git_state_of_a_clean_then_changed_checkout(repo):
    head = _git(repo, "rev-parse", "HEAD")
    assert pv.git_info(repo) == {"git_commit": head, "git_dirty": False}
    (repo / "new.py").write_text("untracked\n")
    assert pv.git_info(repo)["git_dirty"] is False  # untracked files do not make the commit dirty
    assert pv.git_dirty(repo, untracked=True) is True
    (repo / "a" / "x.py").write_text("x = 2\n")
    assert pv.git_info(repo) == {"git_commit": head + "+dirty", "git_dirty": True}
    assert pv.git_commit(repo) == head + "+dirty"
    assert pv.git_dirty(repo, paths=("b",)) is False and pv.git_dirty(repo, paths=("a",)) is True


def test_outside_git_the_commit_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("GIT_COMMIT", raising=False)
    assert pv.git_info(tmp_path) == {"git_commit": None, "git_dirty": None}
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    assert pv.git_info(tmp_path) == {"git_commit": "abc123", "git_dirty": None}


def _recording_run(monkeypatch, answers: dict[str, str | None]) -> list[list[str]]:
    """Replace provenance._run: tools named in ``answers`` print that, others run for real; returns the calls."""
    calls: list[list[str]] = []
    real = pv._run

    def run(cmd, cwd=None):
        calls.append(cmd)
        return answers[cmd[0]] if cmd[0] in answers else real(cmd, cwd)

    monkeypatch.setattr(pv, "_run", run)
    return calls


def test_no_gpu_facts_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = _recording_run(monkeypatch, {"nvidia-smi": "NVIDIA H200, 580.1, 1, 2, 3, 4, 5, 6, P0", "nvcc": "x"})
    env = pv.environment()
    assert {k: env[k] for k in pv.GPU_KEYS} == dict.fromkeys(pv.GPU_KEYS)
    assert not [c for c in calls if c[0] in ("nvidia-smi", "nvcc")]  # the machine's GPU is not the run's
    assert env["torch_cuda_build"] == torch.version.cuda  # a fact of the torch build, device or not


def test_gpu_facts_from_the_device_nvidia_smi_and_nvcc(monkeypatch):
    props = SimpleNamespace(name="NVIDIA H200", total_memory=150 << 30, multi_processor_count=132, major=9, minor=0,
                            L2_cache_size=60 << 20)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    _recording_run(monkeypatch, {"nvidia-smi": "NVIDIA H200, 580.159.04, 345, 3201, 1980, 3201, 80.17, 36, P0",
                                 "nvcc": "nvcc: NVIDIA\nBuild cuda_13.0.r13.0/compiler.36424714_0"})
    info = pv.gpu_info()
    assert info["gpu"] == "NVIDIA H200" and info["driver"] == "580.159.04"
    assert info["clocks"] == {"sm_mhz": 345.0, "mem_mhz": 3201.0, "max_sm_mhz": 1980.0, "max_mem_mhz": 3201.0,
                              "power_w": 80.17, "temp_c": 36.0, "pstate": "P0"}
    assert (info["sm_count"], info["compute_capability"], info["l2_bytes"]) == (132, "9.0", 60 << 20)
    assert info["gpu_memory_bytes"] == 150 << 30 and info["cudnn"] == 91900
    assert info["nvcc"] == "Build cuda_13.0.r13.0/compiler.36424714_0"
    assert info["cuda"] == torch.version.cuda


def test_gpu_facts_survive_a_missing_nvidia_smi(monkeypatch):
    props = SimpleNamespace(name="NVIDIA H200", total_memory=1, multi_processor_count=1, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    _recording_run(monkeypatch, {"nvidia-smi": None, "nvcc": None})
    info = pv.gpu_info()
    assert info["gpu"] == "NVIDIA H200" and info["driver"] is None and info["clocks"] is None
    assert info["l2_bytes"] is None and info["nvcc"] is None
