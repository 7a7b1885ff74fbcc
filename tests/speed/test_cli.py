"""`oscar-eval speed` on a machine without a GPU, and its argument checking."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oscar_eval import cli
from oscar_eval.speed import NO_CUDA_MESSAGE

pytestmark = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the behaviour without a CUDA device"
)


def test_no_gpu_exit_code_and_message(capsys):
    assert cli.main(["speed", "--arch", "qwen3-8b"]) == 2
    err = capsys.readouterr().err
    assert NO_CUDA_MESSAGE in err
    assert err.count("\n") == 1  # one line, no traceback


def test_no_gpu_in_a_real_process():
    # as the `oscar-eval` console script runs it (entry point oscar_eval.cli:main)
    code = "import sys; from oscar_eval.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "speed"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "oscar-eval speed needs a CUDA GPU; none found (torch.cuda.is_available() is False)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_api_raises_no_cuda_error(tmp_path):
    from oscar_eval.speed import NoCudaError, run_speed

    with pytest.raises(NoCudaError, match="needs a CUDA GPU"):
        run_speed(results_dir=str(tmp_path))
    assert not (tmp_path / "speed").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--arch", "gpt-5"], "unknown architecture"),
        (["--level", "fast"], "unknown level"),
        (["--contexts", "1k,abc"], "not a list of integers"),
        (["--kernel-impls", "bf16-magic"], "unknown kernel impl"),
        (["--layers", "0"], "--layers must be positive"),
        (["--min-reps", "5"], "at least 20"),
        (["--name", "../escape"], "bad results name"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(capsys, argv, needle):
    assert cli.main(["speed", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_k_suffix_and_options(tmp_path):
    from oscar_eval.commands.speed import options_from_args

    parser = cli.build_parser()
    args = parser.parse_args(["speed", "--arch", "qwen3-8b,llama-3.1-8b", "--contexts", "1k,128k",
                              "--batches", "1,48", "--layers", "4", "--memory-budget-gb", "40",
                              "--results", str(tmp_path), "--name", "t1"])
    opts = options_from_args(args)
    assert opts.contexts == (1024, 131072) and opts.batches == (1, 48)
    assert opts.archs == ("qwen3-8b", "llama-3.1-8b") and opts.layers == 4
    assert opts.memory_budget_gb == 40 and opts.name == "t1"
