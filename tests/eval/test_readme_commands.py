"""Where commands write by default: never into the current folder. The README's cheap (smoke) commands,
run from a throwaway git copy of the checkout, leave `git status --porcelain` empty; the committed
`results/` and `reports/latest` are written only when a command names them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oscar_eval import paths
from oscar_eval.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
# Commands that need a real model, data, a GPU, or that name the committed folders on purpose.
EXPENSIVE = ("--model", "--data-dir", "--haystack", "--text", "--arch")
COMMITTED = ("--results results", "--out reports/latest")


def readme_commands() -> list[list[str]]:
    """``oscar-eval ...`` lines of the ```bash blocks in the README's "## Quick start", as argv."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = next(p for p in re.split(r"^## ", readme, flags=re.M) if p.startswith("Quick start\n"))
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", section, flags=re.M | re.S):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["oscar-eval"]:
                commands.append(argv[1:])
    return commands


def cheap(argv: list[str]) -> bool:
    line = " ".join(argv)
    return argv[0] not in ("speed", "tni", "calibrate") and not any(flag in argv for flag in EXPENSIVE) \
        and not any(c in line for c in COMMITTED)


def test_readme_lists_the_smoke_commands_and_names_committed_folders_explicitly():
    commands = readme_commands()
    chosen = [" ".join(a) for a in commands if cheap(a)]
    # The selection cannot silently shrink to nothing.
    assert {"list", "run longbench --method oscar", "run ocrbench --method oscar", "report"} <= set(chosen)
    # The committed report is re-rendered only by naming both folders.
    assert ["report", "--results", "results", "--out", "reports/latest"] in commands


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A user whose home is in tmp_path, with no oscar-eval variables set: the real defaults."""
    for var in ("OSCAR_EVAL_HOME", "XDG_CACHE_HOME", "OSCAR_EVAL_CALIBRATION_DIR", "OSCAR_EVAL_CACHE"):
        monkeypatch.delenv(var, raising=False)
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv("HOME", str(user))
    return user / ".cache" / "oscar-eval"


def test_defaults_are_under_oscar_eval_home(home, tmp_path, monkeypatch):
    from oscar_core.calibration import default_calibration_dir

    parser = build_parser()
    for argv in (["run", "longbench"], ["merge"], ["report"], ["speed"],
                 ["calibrate", "rotatekv", "--model", "m", "--text", "t"]):
        assert Path(parser.parse_args(argv).results) == home / "results", argv
    assert Path(parser.parse_args(["report"]).out) == home / "report"
    assert paths.results_root() == home / "results"
    assert default_calibration_dir() == paths.results_root() / "calibration"  # the core agrees with the CLI
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_calibration_dir() == paths.results_root() / "calibration" == tmp_path / "xdg/oscar-eval/results/calibration"
    monkeypatch.setenv("OSCAR_EVAL_HOME", str(tmp_path / "mine"))
    assert default_calibration_dir() == paths.results_root() / "calibration" == tmp_path / "mine/results/calibration"
    assert Path(build_parser().parse_args(["run", "longbench"]).results) == tmp_path / "mine/results"
    assert paths.results_root("results") == Path("results")  # named explicitly: used as given


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A committed git copy of this working tree (tracked and untracked, not ignored, files)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    files = _git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    copy = tmp_path / "checkout"
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / name)
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "commit", "-q", "-m", "snapshot")
    assert _git(copy, "status", "--porcelain") == ""
    return copy


def test_smoke_commands_leave_the_checkout_clean(checkout, home, monkeypatch, capsys):
    """In process, one item per subset: list, a smoke run and a report from the checkout's root, and the
    Python API's run_benchmark without ``results``."""
    from oscar_eval.api import run_benchmark

    monkeypatch.chdir(checkout)
    for argv in (["list"], ["run", "longbench", "--method", "oscar", "--limit", "1", "--no-progress"],
                 ["report"]):
        assert main(argv) == 0, argv
    (summary,) = run_benchmark(methods=["kivi"], limit=1, progress=False, log=lambda _msg: None)
    capsys.readouterr()
    assert _git(checkout, "status", "--porcelain") == ""
    runs = home / "results" / "runs"  # both went to the default store
    assert any(runs.glob("longbench_e-smoke-*-oscar-*")) and Path(summary["run_dir"]).parent == runs
    assert (home / "report" / "report.md").is_file()


@pytest.mark.slow
def test_readme_smoke_commands_as_written_leave_the_checkout_clean(checkout, home):
    """Every cheap README command as written, run by the checkout's own code (``python -m`` from its
    root), so a write relative to the package's files would show up too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    for argv in filter(cheap, readme_commands()):
        done = subprocess.run([sys.executable, "-m", "oscar_eval", *argv], cwd=checkout, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
    assert _git(checkout, "status", "--porcelain") == ""
    # the smoke runs landed in the default store, outside the checkout
    assert {p.name.split("-smoke-")[0] for p in (home / "results" / "runs").iterdir()} >= {"longbench_e", "ocrbench"}
