"""A benchmark declares its own options; `oscar-eval run` builds their flags and passes them through (issue 18)."""

from __future__ import annotations

import argparse
import inspect

import pytest

from oscar_eval.benchmarks import BENCHMARKS, benchmark_class, options_of
from oscar_eval.benchmarks.options import Option
from oscar_eval.commands import run as run_cmd

from .conftest import error_line, run_cli

AVAILABLE = [k for k, (_, _, _, status) in BENCHMARKS.items() if status == "available"]
DECLARED = [(k, o) for k in AVAILABLE for o in options_of(k)]
ALL_FLAGS = sorted({o.flag for _, o in DECLARED})
STRAY = [(k, flag) for k in AVAILABLE for flag in ALL_FLAGS if flag not in {o.flag for o in options_of(k)}]


class Constructed(Exception):
    """Raised by the recording constructor: the run stops right there, before any data or model."""


def record_constructor(monkeypatch, key: str) -> dict:
    seen: dict = {}

    def init(self, **kwargs):
        seen.update(kwargs)
        raise Constructed

    monkeypatch.setattr(benchmark_class(key), "__init__", init)
    return seen


def sample(opt: Option) -> tuple[list[str], object]:
    """Command-line words for ``opt`` and the value the constructor must receive."""
    if opt.nargs == "+":
        return ["a.txt", "b.txt"], ["a.txt", "b.txt"]
    if opt.type is int:
        return ["7"], 7
    return ["some-value"], "some-value"


def test_the_registry_declares_options():
    # the CLI's flags come from here; an empty list would make the tests below vacuous
    assert {"--contexts", "--depths", "--haystack", "--tasks", "--text", "--prompt-tokens", "--scored-tokens",
            "--judge-model", "--judge-cache"} <= set(ALL_FLAGS)


@pytest.mark.parametrize("key", AVAILABLE)
def test_every_declared_option_is_a_keyword_of_the_constructor(key):
    params = inspect.signature(benchmark_class(key)).parameters
    names = [o.name for o in options_of(key)]
    assert len(names) == len(set(names)), key
    assert [n for n in names if n not in params] == [], key


@pytest.mark.parametrize("key, opt", DECLARED, ids=[f"{k}{o.flag}" for k, o in DECLARED])
def test_every_declared_option_is_a_flag_that_reaches_the_constructor(key, opt, monkeypatch, capsys, tmp_path):
    seen = record_constructor(monkeypatch, key)
    words, value = sample(opt)
    with pytest.raises(Constructed):
        run_cli(capsys, "run", key, "--model", "m", "--data-dir", str(tmp_path), "--method", "fp16",
                "--results", str(tmp_path / "res"), opt.flag, *words)
    assert seen[opt.name] == value
    others = {o.name for o in options_of(key)} - {opt.name}
    # a flag not given is not passed (the benchmark's own default applies), except a results-store folder
    assert {n for n in others if n in seen} == {o.name for o in options_of(key) if o.in_results and o is not opt}


def test_not_given_options_are_not_passed(monkeypatch, capsys, tmp_path):
    seen = record_constructor(monkeypatch, "niah")
    with pytest.raises(Constructed):
        run_cli(capsys, "run", "niah", "--model", "m", "--data-dir", str(tmp_path), "--method", "fp16",
                "--results", str(tmp_path / "res"))
    assert not {o.name for o in options_of("niah")} & set(seen)


def test_judge_cache_defaults_to_the_results_store_in_the_api_too(monkeypatch, tmp_path):
    from oscar_eval.api import run_benchmark

    seen = record_constructor(monkeypatch, "mmau_pro")
    with pytest.raises(Constructed):
        run_benchmark("mmau", model="m", data_dir=tmp_path, methods=["fp16"], results=tmp_path / "res")
    assert seen["judge_cache"] == str(tmp_path / "res" / "judge_cache")
    with pytest.raises(Constructed):
        run_benchmark("mmau_pro", model="m", data_dir=tmp_path, methods=["fp16"], results=tmp_path / "res",
                      benchmark_options={"judge_cache": "elsewhere"})
    assert seen["judge_cache"] == "elsewhere"


@pytest.mark.parametrize("key, flag", STRAY, ids=[f"{k}{f}" for k, f in STRAY])
def test_a_flag_of_another_benchmark_is_an_error_naming_flag_and_benchmark(key, flag, monkeypatch, capsys,
                                                                           tmp_path):
    from oscar_eval import api

    monkeypatch.setattr(api, "run_benchmark", lambda *a, **k: pytest.fail("the run started"))
    opt = next(o for _, o in DECLARED if o.flag == flag)
    code, _, err = run_cli(capsys, "run", key, flag, *sample(opt)[0], "--results", str(tmp_path))
    line = error_line(err)
    takers = [k for k, o in DECLARED if o.flag == flag]
    assert code == 2 and f"{flag}: only for " in line and f"not {key} (" in line
    assert all(f"the {t} benchmark" in line for t in takers)
    assert all(o.flag in line for o in options_of(key))  # what it does take
    assert not (tmp_path / "runs").exists()


def test_an_alias_is_named_by_its_benchmark(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "longbench", "--contexts", "1k", "--results", str(tmp_path))
    assert code == 2 and error_line(err).endswith(
        "--contexts: only for the niah benchmark or the ruler benchmark, not longbench_e "
        "(longbench_e has no options of its own)")


def test_help_names_each_benchmark_with_its_own_text():
    parser = argparse.ArgumentParser()
    run_cmd.add_benchmark_flags(parser)
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for key, opt in DECLARED:
        action = actions[opt.flag]
        assert (action.metavar, action.nargs, action.type) == (opt.metavar, opt.nargs, opt.type)
        text = opt.text().replace("%", "%%")
        assert text in action.help, opt.flag
        label = action.help[:action.help.index(text)].rsplit("; ", 1)[-1]  # "niah: " or "niah, ruler: "
        assert key in label.removesuffix(": ").split(", "), (opt.flag, label)
    assert "--haystack" in actions and "ruler:" in actions["--haystack"].help  # niah's and ruler's, both
    assert "from 0% to 100%" in " ".join(parser.format_help().split())  # argparse's %-formatting is escaped


def test_one_help_for_benchmarks_that_say_the_same():
    same = [("niah", Option("x", "a thing", default="d")), ("ruler", Option("x", "a thing", default="d")),
            ("ppl", Option("x", "another", default="e"))]
    assert run_cmd._flag_help(same) == "niah, ruler: a thing (default: d); ppl: another (default: e)"


def test_one_flag_declared_two_ways_is_refused(monkeypatch):
    clash = {"--x": [("niah", Option("x", "h", default="d", type=int)), ("ruler", Option("x", "h", default="d"))]}
    monkeypatch.setattr(run_cmd, "declared_flags", lambda: clash)
    with pytest.raises(ValueError, match=r"--x: niah and ruler declare it with a different type"):
        run_cmd.add_benchmark_flags(argparse.ArgumentParser())


def test_an_option_name_must_be_a_keyword():
    with pytest.raises(ValueError, match="prompt-tokens"):
        Option("prompt-tokens", "h", default="d")


def test_list_shows_every_declared_option_with_its_help(capsys):
    code, out, _ = run_cli(capsys, "list", "benchmarks")
    assert code == 0
    blocks: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        if not line.startswith(" " * 3):
            name = line.split()[0]
        blocks[name] = blocks.get(name, "") + " " + line
    for key in AVAILABLE:
        flat = " ".join(blocks[key].split())
        own = options_of(key)
        if own:
            assert "options: " + ", ".join(o.flag for o in own) in flat, key
        else:
            assert "options:" not in flat, key
        for o in own:
            assert f"{o.flag} {o.metavar}" in flat and " ".join(o.text().split()) in flat, (key, o.flag)
