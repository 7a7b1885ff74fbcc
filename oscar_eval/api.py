"""Python API behind `oscar-eval run`: ``run_benchmark(...)`` evaluates one benchmark x model x methods.

    from oscar_eval.api import run_benchmark
    summaries = run_benchmark("longbench_e", model="/models/llama", methods=["fp16", "oscar"],
                              data_dir="/data/longbench")

With neither ``model`` nor ``data_dir`` it runs the built-in smoke configuration (tiny random Llama
+ a small LongBench-E fixture), which checks the whole pipeline in well under a minute on CPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from oscar_eval import models as _models  # noqa: F401 - sets the offline environment first
from oscar_eval.cli import UserError

PROTOCOL = "paper"


def parse_overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["bits=3", "oscar.group_size=64"]`` -> ``{"bits": 3, "oscar.group_size": 64}`` (YAML-typed)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def overrides_for(method: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Plain keys apply to every method; ``method.key`` only to that method."""
    out = {k: v for k, v in overrides.items() if "." not in k}
    prefix = method.lower() + "."
    out.update({k[len(prefix):]: v for k, v in overrides.items() if k.lower().startswith(prefix)})
    return out


def method_spec(name: str, overrides: Mapping[str, Any]):
    try:
        import oscar_core as oc
    except ImportError as exc:
        raise UserError(f"oscar_core is not importable ({exc})") from None
    if name.lower() not in [m.lower() for m in oc.list_methods()]:
        raise UserError(f"unknown method {name!r} (available: {', '.join(oc.list_methods())})")
    try:
        return oc.get_method(name, **overrides)
    except (ValueError, TypeError) as exc:
        raise UserError(f"method {name!r}: {str(exc).splitlines()[0]}") from None


def _spec_params(spec: Any) -> dict[str, Any]:
    d = spec.to_dict()
    return dict(d.get("params", d))


def _bits_per_element(spec: Any, seq_len: int, kv_shape: tuple[int, int]) -> float | None:
    try:
        return float(spec.bits_per_element(seq_len=seq_len, num_kv_heads=kv_shape[0], head_dim=kv_shape[1]))
    except Exception:  # noqa: BLE001 - accounting is informative, never fatal
        return None


def run_benchmark(
    benchmark: str = "longbench_e",
    model: str | Path | None = None,
    methods: Sequence[str] = ("oscar",),
    *,
    subsets: Sequence[str] | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    max_input_len: int | None = None,
    results: str | Path = "results",
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    chat_template: bool = False,
    model_label: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 42,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    benchmark_options: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Evaluate ``benchmark`` for each method; returns one summary per method (also on disk)."""
    from oscar_eval import provenance, smoke
    from oscar_eval.benchmarks import get_benchmark

    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            print(msg, file=sys.stderr)

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be positive, got {limit}")
    if not methods:
        raise UserError("no --method given")
    overrides = dict(overrides or {})
    bench_options = dict(benchmark_options or {})
    if data_dir is None and bench_options.get("haystack"):  # NIAH --haystack FILE: its folder is the data dir
        data_dir = Path(bench_options["haystack"]).expanduser().resolve().parent
    is_smoke = model is None and data_dir is None
    bench_smoke = _smoke_hook(benchmark) if is_smoke else None
    if bench_smoke is not None:  # a benchmark with its own smoke configuration (e.g. NIAH)
        cfg = bench_smoke()
        say(f"SMOKE CONFIGURATION: {cfg['description']}. Scores are meaningless; this only checks the "
            "pipeline. Pass --model and --data-dir for a real evaluation.")
        data_dir = cfg["data_dir"]
        model_label = model_label or cfg.get("model_label") or smoke.SMOKE_LABEL
        max_input_len = max_input_len or cfg.get("max_input_len")
        bench_options = {**cfg.get("options", {}), **bench_options}
    elif is_smoke:
        say("SMOKE CONFIGURATION: tiny random-weight Llama + built-in LongBench-E fixture "
            f"({smoke.SMOKE_DATA}). Scores are meaningless; this only checks the pipeline. "
            "Pass --model and --data-dir for a real evaluation.")
        data_dir = smoke.SMOKE_DATA
        model_label = model_label or smoke.SMOKE_LABEL
        max_input_len = max_input_len or smoke.SMOKE_MAX_INPUT_LEN
        subsets = subsets or sorted(p.stem for p in smoke.SMOKE_DATA.glob("*.jsonl"))
    elif model is None or data_dir is None:
        raise UserError("give both --model and --data-dir (or neither, for the built-in smoke configuration)")

    bench = get_benchmark(benchmark, data_dir=data_dir, subsets=list(subsets) if subsets else None,
                          **bench_options)
    gen_cfg = getattr(bench, "config", {}).get("generation", {})
    max_input_len = int(max_input_len or gen_cfg.get("max_input_len", 32768))

    # Validate everything cheap before loading any weights: methods, overrides, data files.
    specs = [(m, method_spec(m, overrides_for(m, overrides))) for m in methods]
    if hasattr(bench, "use_tokenizer"):  # prompts sized in the model's own tokens (NIAH)
        from oscar_eval.models import resolve_model_path

        bench.use_tokenizer(smoke.smoke_model_path() if is_smoke else resolve_model_path(model),
                            chat_template=bool(chat_template), max_input_len=max_input_len)
    items = [it for s in bench.subsets() for it in bench.items(s, limit)]
    data_files = {}
    for s in bench.subsets():
        for f in bench.data_files(s):
            data_files[str(Path(f).relative_to(Path(data_dir)))] = provenance.sha256_file(f)

    model_path = model
    if is_smoke:  # a benchmark's smoke configuration may bring its own model (e.g. OCRBench: tiny Qwen3-VL)
        model_path = (cfg.get("model_path") if bench_smoke is not None else None) or smoke.smoke_model_path
        model_path = model_path()
    env = provenance.environment()
    import torch

    threads = torch.get_num_threads()
    if is_smoke and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the smoke model is tiny: extra threads only add sync overhead
    try:
        plan = _Plan(bench=bench, items=items, data_dir=Path(data_dir), data_files=data_files,
                     model_path=model_path, is_smoke=is_smoke, env=env, results=Path(results), resume=resume,
                     overwrite=overwrite, device=device, dtype=dtype, chat_template=bool(chat_template),
                     model_label=model_label, overrides=overrides, seed=seed, progress=progress,
                     max_input_len=max_input_len, limit=limit, say=say)
        return [_run_method(plan, name, spec, reload=i > 0) for i, (name, spec) in enumerate(specs)]
    finally:
        torch.set_num_threads(threads)


def _smoke_hook(benchmark: str) -> Callable[[], dict] | None:
    """A benchmark class's own ``smoke_configuration()`` (dict: description, data_dir, max_input_len,
    options), or None for the default (LongBench-E fixture) smoke configuration."""
    import importlib

    from oscar_eval.benchmarks import ALIASES, BENCHMARKS

    module, cls, _, status = BENCHMARKS.get(ALIASES.get(benchmark, benchmark), ("", "", "", ""))
    if status != "available" or not module:
        return None
    return getattr(getattr(importlib.import_module(module), cls), "smoke_configuration", None)


@dataclass
class _Plan:
    """Everything validated up front, shared by the per-method runs."""

    bench: Any
    items: list
    data_dir: Path
    data_files: dict[str, str]
    model_path: Any
    is_smoke: bool
    env: dict
    results: Path
    resume: bool
    overwrite: bool
    device: str
    dtype: str
    chat_template: bool
    model_label: str | None
    overrides: dict
    seed: int
    progress: bool
    max_input_len: int
    limit: int | None
    say: Callable[[str], None]
    loaded: Any = None


def _check_method_on_model(model: Any, name: str, overrides: dict) -> None:
    """Build the method's cache once before any item: a method that cannot run on this model (rotatekv
    without a calibration, an unsupported head layout) is one clear error, not a failed record per item."""
    import oscar_core as oc
    from oscar_core.methods import MethodConfigError

    try:
        oc.make_cache(model, name, **overrides)
    except (MethodConfigError, ValueError) as exc:
        raise UserError(f"method {name!r} on this model: {str(exc).splitlines()[0]}") from None


def _run_method(plan: _Plan, name: str, spec: Any, reload: bool) -> dict:
    from oscar_eval import provenance
    from oscar_eval.models import load_model, runner_for
    from oscar_eval.results import RunStore, make_run_id
    from oscar_eval.runner import evaluate_items

    # Reload for every method after the first: a method may rewrite weights (fused rotations).
    if plan.loaded is None or reload:
        if plan.loaded is not None:
            import gc

            import torch

            plan.loaded = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        plan.loaded = load_model(plan.model_path, device=plan.device, dtype=plan.dtype)
    loaded = plan.loaded
    bench, items, data_files, data_dir = plan.bench, plan.items, plan.data_files, plan.data_dir
    is_smoke, env, results, resume, overwrite = plan.is_smoke, plan.env, plan.results, plan.resume, plan.overwrite
    chat_template, model_label, overrides, seed = plan.chat_template, plan.model_label, plan.overrides, plan.seed
    progress, max_input_len, limit, say = plan.progress, plan.max_input_len, plan.limit, plan.say
    label = model_label or loaded.path.name
    revision = provenance.model_revision(loaded.path)
    params = _spec_params(spec)
    settings = {"max_input_len": max_input_len, "chat_template": bool(chat_template), "seed": seed,
                "greedy": True, "batch_size": 1, "protocol": PROTOCOL, **getattr(bench, "settings", {})}
    run_id = make_run_id(bench.name, label, spec.name, {
        "settings": settings, "model": revision, "dtype": loaded.dtype, "method": params})
    store = RunStore(results, run_id)
    old_manifest = store.read_manifest() if store.manifest_path.exists() else None
    n_old = len(store.records())
    if n_old and not resume and not overwrite:
        raise UserError(f"results for {run_id} already exist ({n_old} records in {store.dir}); "
                        "pass --resume to continue or --overwrite to start over")
    if resume and old_manifest:
        for fname, digest in data_files.items():
            before = old_manifest.get("data", {}).get("files", {}).get(fname)
            if before and before != digest:
                raise UserError(f"data file {fname} changed since run {run_id} started; "
                                "rerun with --overwrite")
    method_overrides = overrides_for(name, overrides)
    _check_method_on_model(loaded.model, name, method_overrides)
    bpe = _bits_per_element(spec, max_input_len, loaded.kv_shape())
    all_subsets = list(bench.subsets())
    all_files = dict(data_files)
    if resume and old_manifest:
        all_subsets = list(dict.fromkeys(old_manifest.get("subsets", []) + all_subsets))
        all_files = {**old_manifest.get("data", {}).get("files", {}), **data_files}
    created = (old_manifest or {}).get("created") if resume else None
    store.write_manifest({
        "benchmark": bench.name,
        "subsets": all_subsets,
        "configuration": "smoke" if is_smoke else "user",
        "model": {"label": label, "path": str(loaded.path), "revision": revision,
                  "architecture": loaded.architecture, "dtype": loaded.dtype, "device": loaded.device},
        "method": {"name": spec.name, "params": params, "bits_per_element": bpe},
        "settings": {**settings, "limit": limit},
        "data": {"dir": str(Path(data_dir).resolve()), "files": all_files},
        "env": env,
        "created": created or provenance.now(),
        "updated": provenance.now(),
    })
    runner = runner_for(bench.kind, loaded, max_input_len=max_input_len, chat_template=chat_template)

    def generate(item, _runner=runner, _loaded=loaded, _name=name, _ov=method_overrides):
        import oscar_core as oc

        return _runner.generate(item, oc.make_cache(_loaded.model, _name, **_ov))

    store.open(resume=resume)
    done = store.done_ids() if resume else set()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=f"{bench.name} {spec.name}", unit="item", file=sys.stderr)
    try:
        stats = evaluate_items(items, store, generate, bench.score, seed=seed, done_ids=done, progress=bar)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    if stats.skipped:
        say(f"{spec.name}: resumed, {stats.skipped} item(s) already recorded were skipped")
    summary = store.recompute_summary(bench.summarize, benchmark=bench.name, model_label=label,
                                      method=spec.name, bits_per_element=bpe, protocol=PROTOCOL,
                                      configuration="smoke" if is_smoke else "user")
    summary["run_dir"] = str(store.dir)
    return summary
