"""What each benchmark declares for the API and `oscar-eval list` (which have no per-benchmark branches):
its data files, its default data folder, its smoke configuration, its selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from oscar_eval.benchmarks import BENCHMARKS, benchmark_class
from oscar_eval.benchmarks.base import data_file
from oscar_eval.errors import UserError


# -- data_file: the one lookup of --haystack / --text files -------------------------------------------
def test_data_file_looks_a_relative_name_up_in_the_data_dir(tmp_path, monkeypatch):
    (tmp_path / "hay.txt").write_text("x")
    monkeypatch.chdir(tmp_path.parent)
    assert data_file("hay.txt", tmp_path, "haystack file", "hint") == (tmp_path / "hay.txt").resolve()
    assert data_file(tmp_path / "hay.txt", None, "haystack file", "hint") == (tmp_path / "hay.txt").resolve()


def test_data_file_errors_name_what_and_where(tmp_path):
    with pytest.raises(UserError, match=r"^text file .*nope\.txt not found; put it there$"):
        data_file("nope.txt", tmp_path, "text file", "put it there")
    inside, outside = tmp_path / "data", tmp_path / "elsewhere.txt"
    inside.mkdir()
    outside.write_text("x")
    with pytest.raises(UserError, match=r"haystack file .*elsewhere\.txt is not inside --data-dir .*data$"):
        data_file(outside, inside, "haystack file", "hint")


def test_ruler_haystack_outside_the_data_dir_is_a_clear_error(tmp_path):
    from oscar_eval.benchmarks.ruler import Ruler

    (tmp_path / "data").mkdir()
    (tmp_path / "essays.txt").write_text("An essay. Another sentence.")
    with pytest.raises(UserError, match="is not inside --data-dir"):
        Ruler(data_dir=tmp_path / "data", contexts=[4096], haystack=str(tmp_path / "essays.txt"))


# -- default_data: the data folder without --data-dir ------------------------------------------------
@pytest.mark.parametrize("name", ["niah", "ruler"])
def test_a_haystack_file_names_the_data_dir(name, tmp_path):
    hay = tmp_path / "hay.txt"
    data_dir, options = benchmark_class(name).default_data({"haystack": str(hay)}, None)
    assert data_dir == tmp_path.resolve() and options == {"haystack": str(hay)}


def test_ruler_stdlib_haystack_is_not_a_file():
    from oscar_eval.benchmarks.ruler import STDLIB_HAYSTACK, Ruler

    assert Ruler.default_data({"haystack": STDLIB_HAYSTACK}, None) == (None, {"haystack": STDLIB_HAYSTACK})
    data_dir, _ = Ruler.default_data({"haystack": STDLIB_HAYSTACK}, "some-model")
    assert data_dir is not None and data_dir.name == "assets" and data_dir != Path.cwd()


# -- smoke configuration and selection: declared by every benchmark ------------------------------------
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_declares_its_smoke_run_and_selection(name, tmp_path, monkeypatch):
    monkeypatch.setenv("OSCAR_EVAL_CACHE", str(tmp_path))  # MMAU-Pro writes its generated fixture there
    cls = benchmark_class(name)
    lines = cls.selection()
    assert lines and all(isinstance(x, str) and x for x in lines)
    cfg = cls.smoke_configuration()
    assert cfg["description"] and Path(cfg["data_dir"]).is_dir()


def test_longbench_smoke_run_selects_the_fixture_subsets():
    from oscar_eval.benchmarks.longbench_e import LongBenchE
    from oscar_eval.smoke import SMOKE_DATA, SMOKE_MAX_INPUT_LEN

    cfg = LongBenchE.smoke_configuration()
    assert cfg["data_dir"] == SMOKE_DATA and cfg["max_input_len"] == SMOKE_MAX_INPUT_LEN
    assert cfg["subsets"] == sorted(p.stem for p in SMOKE_DATA.glob("*.jsonl")) and "trec_e" in cfg["subsets"]
