"""Python API behind `oscar-eval run`: ``run_benchmark(...)`` evaluates one benchmark x model x methods.

    from oscar_eval.api import run_benchmark
    summaries = run_benchmark("longbench_e", model="/models/llama", methods=["fp16", "oscar"],
                              data_dir="/data/longbench")

With neither ``model`` nor ``data_dir`` it runs the built-in smoke configuration (tiny random Llama
+ a small LongBench-E fixture), which checks the whole pipeline in well under a minute on CPU.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from oscar_eval import models as _models  # noqa: F401 - sets the offline environment first
from oscar_eval.errors import UserError
from oscar_eval.selection import describe_selection

PROTOCOL = "paper"
# Benchmarks whose runners generate left-padded batches (--batch-size); ppl measures one document at a time.
BATCHED_KINDS = ("text", "vision", "audio")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["bits=3", "oscar.group_size=64"]`` -> ``{"bits": 3, "oscar.group_size": 64}`` (YAML-typed).

    ``true``/``false`` are bools, ``3`` an int, ``3.0`` and ``1e-3`` floats, anything else a string; the
    method spec then checks each value's type. A key given twice is an error (no silent last-wins).
    """
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected key=value")
        if key in given:
            raise UserError(f"--set {key} is given twice ({given[key]} and {pair})")
        given[key] = pair
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str) and _NUMBER.fullmatch(parsed.strip()):  # YAML 1.1 reads 1e-3 as a string
            parsed = float(parsed)
        out[key] = parsed
    return out


def check_overrides(methods: Sequence[str], overrides: Mapping[str, Any]) -> None:
    """Every ``--set`` key must reach a parameter: ``method.key`` names a method of this run that has
    ``key``; a plain key is a parameter of every method of the run (it applies to all of them)."""
    import oscar_core as oc
    from oscar_core.methods import MethodConfigError

    run = {m.lower(): m for m in methods}
    known: dict[str, set[str]] = {}
    for low, m in run.items():
        try:
            # the spec's fields: to_dict may leave out an extension parameter left at its default
            known[low] = {f.name for f in dataclasses.fields(oc.get_method(m))}
        except MethodConfigError:  # an unknown method: method_spec names it
            continue
    names = ", ".join(methods)
    for key in overrides:
        prefix, dot, param = key.partition(".")
        if not dot:
            prefix, param = "", key
        elif not prefix or not param:
            raise UserError(f"--set {key}: expected key or method.key")
        if prefix:
            if prefix.lower() not in run:
                raise UserError(f"--set {key}: unknown method prefix {prefix!r} (methods in this run: {names})")
            targets = [prefix.lower()]
        else:
            targets = list(run)
        lacking = [t for t in targets if t in known and param not in known[t]]
        if lacking and len(lacking) == len(targets):
            where = "; ".join(f"{run[t]} has {', '.join(sorted(known[t]))}" for t in lacking)
            scope = f"method {run[targets[0]]!r}" if prefix else f"every method of this run ({names})"
            raise UserError(f"--set {key}: unknown parameter {param!r} for {scope} ({where})")
        if lacking:
            raise UserError(f"--set {key}: {param!r} is not a parameter of {', '.join(run[t] for t in lacking)}, "
                            f"and a plain key applies to every method of the run; use METHOD.{param}=... "
                            "to set it for one method")


def overrides_for(method: str, overrides: Mapping[str, Any], methods: Sequence[str] | None = None
                  ) -> dict[str, Any]:
    """Plain keys apply to every method; ``method.key`` only to that method. With ``methods`` (all the
    methods of the run), every key is checked first (:func:`check_overrides`)."""
    if methods is not None:
        check_overrides(methods, overrides)
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
        msg = str(exc).splitlines()[0]
        own = name.lower() + ": "
        raise UserError(f"method {name!r}: {msg[len(own):] if msg.lower().startswith(own) else msg}") from None


def _spec_params(spec: Any) -> dict[str, Any]:
    d = spec.to_dict()
    return dict(d.get("params", d))


def _bits_per_element(spec: Any, seq_len: int, model: Any) -> float | None:
    """Bits per cached element of the whole model under make_cache's per-layer policy (sliding windows)."""
    import oscar_core as oc

    try:
        return float(oc.bits_per_element_for_model(spec, model, seq_len))
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
    results: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retry_failed: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    chat_template: bool = False,
    model_label: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 42,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    benchmark_options: Mapping[str, Any] | None = None,
    device_map: str | None = None,
    shard: Any = None,
    batch_size: int = 1,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Evaluate ``benchmark`` for each method; returns one summary per method (also on disk).

    ``resume`` runs the items without an ok record (failed ones again); ``retry_failed`` (implies
    ``resume``) only the items whose latest record failed. ``device_map`` (e.g. ``"auto"``) spreads
    the model's layers over the visible GPUs (transformers' ``from_pretrained(device_map=...)``).
    ``shard`` (:class:`oscar_eval.store.sharding.Shard`; default: from the launcher's environment, e.g.
    torchrun's RANK/WORLD_SIZE) makes this process evaluate its shard of the items; the last shard to
    finish merges them (docs/results.md, "Sharded runs"). ``results``: the results store (default
    ``$OSCAR_EVAL_HOME/results``, see :mod:`oscar_eval.paths`). ``batch_size`` > 1 generates that many items at
    once (left padding, items grouped by prompt length; text benchmarks), with batch 1's greedy tokens.
    ``on_result(summary)`` is called as each method finishes (the list comes back after the last one).
    ``benchmark_options``: keywords of the benchmark's constructor, e.g. ``{"contexts": "4k,8k", "depths": 5}``
    for niah; those it declares (its class's ``options``) are the `oscar-eval run` flags."""
    from oscar_eval import provenance, smoke
    from oscar_eval.benchmarks import benchmark_key, get_benchmark, options_of
    from oscar_eval.paths import results_root
    from oscar_eval.store import sharding

    results = results_root(results)  # default: $OSCAR_EVAL_HOME/results, never the current folder

    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            print(msg, file=sys.stderr)

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be positive, got {limit}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if not methods:
        raise UserError("no --method given")
    benchmark_key(benchmark)  # an unknown benchmark is named before any banner or default data
    overrides = dict(overrides or {})
    # Methods and --set first: they need neither data nor a model.
    specs = [(m, method_spec(m, overrides_for(m, overrides, methods))) for m in methods]
    resume = resume or retry_failed
    shard = sharding.detect() if shard is None else shard
    if device_map is not None and shard.sharded and device in ("auto", "cuda"):
        raise UserError("--device-map with a sharded launch: every rank would spread over every GPU; give each "
                        "rank its own GPUs (CUDA_VISIBLE_DEVICES) and --device cuda, or run one process")
    device = sharding.bind_device(device, shard)
    requested_subsets = subsets
    bench_options = dict(benchmark_options or {})
    for opt in options_of(benchmark):  # a cache that belongs with the results (MMAU-Pro's judge outputs)
        if opt.in_results and bench_options.get(opt.name) is None:
            bench_options[opt.name] = str(Path(results) / opt.in_results)
    default_data = _smoke_hook(benchmark, "default_data")
    if data_dir is None and default_data is not None:  # a benchmark that finds its own data (--haystack, --text)
        data_dir, bench_options = default_data(bench_options, model)
    is_smoke = model is None and data_dir is None
    cfg: dict = {}
    if is_smoke:  # the benchmark's own smoke configuration: fixture data, tiny model, options
        bench_smoke = _smoke_hook(benchmark)
        if bench_smoke is None:
            raise UserError(f"{benchmark} has no built-in smoke configuration; give --model and --data-dir")
        cfg = bench_smoke()
        smoke_what = cfg["description"]
        data_dir = cfg["data_dir"]
        model_label = model_label or cfg.get("model_label") or smoke.SMOKE_LABEL
        max_input_len = max_input_len or cfg.get("max_input_len")
        bench_options = {**cfg.get("options", {}), **bench_options}
        subsets = subsets or cfg.get("subsets")
    elif model is None or data_dir is None:
        raise UserError("give both --model and --data-dir (or neither, for the built-in smoke configuration)")

    bench = get_benchmark(benchmark, data_dir=data_dir, subsets=list(subsets) if subsets else None,
                          **bench_options)
    if batch_size > 1 and getattr(bench, "kind", "text") not in BATCHED_KINDS:
        kind = getattr(bench, "kind", "?")
        raise UserError(f"--batch-size {batch_size}: {benchmark} runs its items one at a time ({kind} inputs); "
                        f"batching is for the {', '.join(BATCHED_KINDS)} generation benchmarks")
    gen_cfg = getattr(bench, "config", {}).get("generation", {})
    max_input_len = int(max_input_len or gen_cfg.get("max_input_len", 32768))

    # Validate everything cheap before loading any weights: data files, then the existing-run checks.
    if hasattr(bench, "use_tokenizer"):  # prompts sized in the model's own tokens (NIAH)
        from oscar_eval.models import resolve_model_path

        bench.use_tokenizer(smoke.smoke_model_path() if is_smoke else resolve_model_path(model),
                            chat_template=bool(chat_template), max_input_len=max_input_len)
    items = [it for s in bench.subsets() for it in bench.items(s, limit)]
    data_files = {}
    for s in bench.subsets():
        for f in bench.data_files(s):
            # absolute, not resolved: a relative --data-dir works, and symlinked data files keep their names
            data_files[str(Path(f).absolute().relative_to(Path(data_dir).absolute()))] = provenance.sha256_file(f)

    model_path = model
    if is_smoke:  # a benchmark's smoke configuration may bring its own model (e.g. OCRBench: tiny Qwen3-VL)
        model_path = (cfg.get("model_path") or smoke.smoke_model_path)()
    env = provenance.environment()
    mine = sharding.shard_items(items, shard)
    prepared = _prepare_runs(benchmark, bench, specs, items, data_files, model_path, model_label,
                             requested_subsets, bench_options, is_smoke, results, max_input_len,
                             chat_template, seed, limit, device, dtype, resume, overwrite, retry_failed,
                             shard=shard, shard_items=mine, device_map=device_map, batch_size=batch_size,
                             smoke_subsets=cfg.get("subsets"))
    # Only now, with every cheap check passed: what runs (the grid after any overrides).
    selection = describe_selection(bench, len(items))
    if is_smoke:
        say(f"SMOKE CONFIGURATION: {smoke_what}; {selection}. Scores are meaningless; this only checks the "
            "pipeline. Pass --model and --data-dir for a real evaluation.")
    else:
        say(f"{bench.name}: {selection}; methods {', '.join(methods)}")
    if shard.sharded:
        say(f"shard {shard.tag} ({shard.source}): items {len(mine)} of {len(items)} on {device}")
    import torch

    threads = torch.get_num_threads()
    if is_smoke and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the smoke model is tiny: extra threads only add sync overhead
    try:
        plan = _Plan(bench=bench, items=items, data_dir=Path(data_dir), data_files=data_files,
                     model_path=model_path, is_smoke=is_smoke, env=env, results=Path(results), resume=resume,
                     overwrite=overwrite, device=device, dtype=dtype, chat_template=bool(chat_template),
                     model_label=model_label, overrides=overrides, seed=seed, progress=progress,
                     max_input_len=max_input_len, limit=limit, say=say, shard=shard, shard_items=mine,
                     device_map=device_map, batch_size=batch_size,
                     benchmark_args={"name": benchmark, "data_dir": str(Path(data_dir).resolve()),
                                     "subsets": list(bench.subsets()),
                                     "options": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in bench_options.items()}})
        summaries = []
        for i, run in enumerate(prepared):
            summaries.append(_run_method(plan, run, reload=i > 0))
            if on_result is not None:
                on_result(summaries[-1])
        return summaries
    finally:
        torch.set_num_threads(threads)
        for run in prepared:
            run.store.unlock()


def _settings(bench: Any, max_input_len: int, chat_template: bool, seed: int, batch_size: int = 1) -> dict:
    return {"max_input_len": max_input_len, "chat_template": bool(chat_template), "seed": seed,
            "greedy": True, "batch_size": batch_size, "protocol": PROTOCOL, **getattr(bench, "settings", {})}


def _prepare_runs(benchmark, bench, specs, items, data_files, model_path, model_label, requested_subsets,
                  bench_options, is_smoke, results, max_input_len, chat_template, seed, limit, device,
                  dtype, resume, overwrite, retry_failed, shard=None, shard_items=None, device_map=None,
                  batch_size=1, smoke_subsets=None) -> list:
    """Before any weights load: every method's run id (static configuration), lock, existing-run checks.
    ``smoke_subsets``: the subsets a smoke configuration selects by default (its fixture's)."""
    from oscar_eval import provenance, run_setup
    from oscar_eval.benchmarks import get_benchmark
    from oscar_eval.models import resolve_device, resolve_dtype, resolve_model_path
    from oscar_eval.store.run_identity import device_identity

    path = resolve_model_path(model_path)
    dev = resolve_device(device)
    if requested_subsets is None:  # the default selection is the whole data set
        default_subsets = list(bench.subsets())
    elif smoke_subsets is not None:
        default_subsets = list(smoke_subsets)
    else:
        default_subsets = get_benchmark(benchmark, data_dir=getattr(bench, "data_dir", None),
                                        **bench_options).subsets()
    target = run_setup.coverage_target(bench, items, limit, default_subsets)
    prepared = run_setup.prepare(
        bench=bench, specs=specs, items=items, results=Path(results), label=model_label or path.name,
        settings=_settings(bench, max_input_len, chat_template, seed, batch_size), limit=limit, data_files=data_files,
        revision=provenance.model_revision(path), dtype=str(resolve_dtype(dtype, dev)).removeprefix("torch."),
        device=device_identity(dev), params_of=_spec_params, resume=resume, overwrite=overwrite,
        retry_failed=retry_failed, shard=shard, shard_items=shard_items, device_map=device_map)
    for run in prepared:
        run.coverage_target = target
    return prepared


def _smoke_hook(benchmark: str, attr: str = "smoke_configuration") -> Callable[..., Any] | None:
    """A benchmark class's own ``smoke_configuration()`` (dict: description, data_dir, and optionally
    max_input_len, options, subsets, model_label, model_path), or None. ``attr="default_data"``:
    its ``default_data(options, model) -> (data_dir or None, options)`` for runs without --data-dir."""
    import importlib

    from oscar_eval.benchmarks import ALIASES, BENCHMARKS

    module, cls, _, status = BENCHMARKS.get(ALIASES.get(benchmark, benchmark), ("", "", "", ""))
    if status != "available" or not module:
        return None
    return getattr(getattr(importlib.import_module(module), cls), attr, None)


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
    shard: Any = None
    shard_items: list | None = None  # this process's items (all of them without a launch)
    device_map: str | None = None
    batch_size: int = 1
    benchmark_args: dict | None = None  # how `oscar-eval merge` rebuilds the benchmark (for summarize)
    loaded: Any = None


def _check_method_on_model(model: Any, name: str, overrides: dict) -> Any:
    """Build the method's cache once before any item: a method that cannot run on this model (rotatekv
    without a calibration, an unsupported head layout) is one clear error, not a failed record per item.
    Returns that cache: its ``spec`` is resolved for the model (e.g. RotateKV's head group), for
    provenance, and it tells the decode path the run takes."""
    import oscar_core as oc
    from oscar_core.methods import MethodConfigError

    try:
        return oc.make_cache(model, name, **overrides)
    except (MethodConfigError, ValueError) as exc:
        raise UserError(f"method {name!r} on this model: {str(exc).splitlines()[0]}") from None


def _run_method(plan: _Plan, run: Any, reload: bool) -> dict:
    from oscar_eval import provenance, run_setup
    from oscar_eval.models import load_model, runner_for
    from oscar_eval.runner import evaluate_items
    from oscar_eval.store import run_identity
    from oscar_eval.store.results import coverage

    name, spec, store = run.name, run.spec, run.store

    # Reload for every method after the first: a method may rewrite weights (fused rotations).
    if plan.loaded is None or reload:
        if plan.loaded is not None:
            import gc

            import torch

            plan.loaded = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        plan.loaded = load_model(plan.model_path, device=plan.device, dtype=plan.dtype, device_map=plan.device_map)
    loaded = plan.loaded
    bench, items, data_files, data_dir = plan.bench, plan.items, plan.data_files, plan.data_dir
    is_smoke, env, resume = plan.is_smoke, plan.env, plan.resume
    chat_template, model_label, overrides, seed = plan.chat_template, plan.model_label, plan.overrides, plan.seed
    progress, max_input_len, limit, say = plan.progress, plan.max_input_len, plan.limit, plan.say
    label = model_label or loaded.path.name
    revision = run.config["model"]["revision"]
    settings = run.config["settings"]
    if loaded.dtype != run.config["model"]["dtype"]:  # the run id promised this dtype
        raise UserError(f"model loaded as {loaded.dtype}, not the {run.config['model']['dtype']} of the run id")
    method_overrides = overrides_for(name, overrides)
    probe = _check_method_on_model(loaded.model, name, method_overrides)
    spec = probe.spec  # the values the cache uses
    bpe = _bits_per_element(spec, max_input_len, loaded.model)
    runner = runner_for(bench.kind, loaded, max_input_len=max_input_len, chat_template=chat_template)
    runtime = run_identity.runtime_config(probe, runner, loaded)
    run_setup.check_runtime(run, runtime)
    config = {**run.config, "runtime": runtime}
    old_manifest = run.old_manifest
    created = (old_manifest or {}).get("created") if resume else None
    target = run.coverage_target
    shard = plan.shard
    mine = items if plan.shard_items is None else plan.shard_items
    done_before = len(mine) - len(run.to_run) if resume else 0
    manifest = {
        "benchmark": bench.name,
        "subsets": list(bench.subsets()),
        "configuration": "smoke" if is_smoke else "user",
        "model": {"label": label, "path": str(loaded.path), "revision": revision,
                  "architecture": loaded.architecture, "dtype": loaded.dtype, "device": loaded.device,
                  "source": provenance.model_source(loaded.path)},
        "method": {"name": spec.name, "params": _spec_params(spec), "bits_per_element": bpe},
        "settings": {**settings, "limit": limit},
        "data": {"dir": str(Path(data_dir).resolve()), "files": dict(data_files)},
        "config": config,
        "config_hash": run_identity.config_hash(config),
        "coverage": coverage(done_before, target["total"], target["missing_subsets"]),
        "env": env,
        "created": created or provenance.now(),
        "updated": provenance.now(),
    }
    if getattr(bench, "contexts", None):  # lengths in tokens; on the command line 1k = 1024 (NIAH's was 1000)
        from oscar_eval.token_counts import K

        given = ((plan.benchmark_args or {}).get("options") or {}).get("contexts")
        manifest["contexts"] = {"tokens": list(bench.contexts), "k": K,
                                "given": given if isinstance(given, str) else None}
    header = {"benchmark": bench.name, "model_label": label, "method": spec.name, "bits_per_element": bpe,
              "protocol": PROTOCOL, "configuration": "smoke" if is_smoke else "user"}
    if store.shard is not None:  # what the merge needs: this shard's part, the whole run's target, the header
        import socket

        manifest.update({
            "coverage": coverage(done_before, len(mine)),
            "shard": {"rank": shard.rank, "world_size": shard.world_size, "launcher": shard.source,
                      "host": socket.gethostname(), "item_ids": [it.item_id for it in mine]},
            "coverage_target": target, "summary_header": header, "benchmark_args": plan.benchmark_args})
    store.write_manifest(manifest)

    def generate(item, _runner=runner, _loaded=loaded, _name=name, _ov=method_overrides):
        import oscar_core as oc

        return _runner.generate(item, oc.make_cache(_loaded.model, _name, **_ov))

    def generate_batch(batch, _runner=runner, _loaded=loaded, _name=name, _ov=method_overrides):
        import oscar_core as oc

        return _runner.generate_batch(batch, oc.make_cache(_loaded.model, _name, **_ov))

    store.open(resume=resume)
    todo = {it.item_id for it in run.to_run}
    done = {it.item_id for it in mine if it.item_id not in todo}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        where = f" [{store.shard.tag}]" if store.shard is not None else ""
        bar = tqdm(total=len(mine), desc=f"{bench.name} {spec.name}{where}", unit="item", file=sys.stderr)
    try:
        batched = plan.batch_size > 1
        stats = evaluate_items(mine, store, generate, bench.score, seed=seed, done_ids=done, progress=bar,
                               generate_batch=generate_batch if batched else None, batch_size=plan.batch_size,
                               batch_key=runner.batch_key if batched else None)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    if stats.skipped:
        say(f"{spec.name}: resumed, {stats.skipped} item(s) already recorded were skipped")
    n_recorded = len(store.latest_records())
    if store.shard is not None:
        store.write_manifest({**manifest, "coverage": coverage(n_recorded, len(mine)), "updated": provenance.now()})
        return _finish_shard(plan, run, header)
    store.write_manifest({**manifest, "coverage": coverage(n_recorded, target["total"], target["missing_subsets"]),
                          "updated": provenance.now()})
    summary = store.recompute_summary(bench.summarize, **header)
    if not summary["coverage"]["complete"]:
        c = summary["coverage"]
        say(f"{spec.name}: partial run, {c['done']} of {c['total']} items"
            + (f"; subsets not run: {', '.join(c['missing_subsets'])}" if c["missing_subsets"] else "")
            + " (reports keep it out of the paper tables)")
    summary["run_dir"] = str(store.dir)
    return summary


def merge_run(results: str | Path, run_id: str) -> dict:
    """`oscar-eval merge RUN_ID`: write a complete sharded run's records, manifest and summary; returns the
    summary. The benchmark (for its ``summarize``) is rebuilt from the shards' ``benchmark_args``. Raises
    :class:`oscar_eval.store.merge.MergeIncomplete` naming the missing or incomplete shards."""
    from oscar_eval.benchmarks import get_benchmark
    from oscar_eval.store import merge
    from oscar_eval.store.results import StoreError

    _, shards = merge.check(results, run_id)  # missing shards are named before any benchmark is built
    args = shards[0][0].get("benchmark_args")
    if not isinstance(args, dict):
        raise StoreError(f"run {run_id}: its shard manifests have no benchmark_args (not written by a sharded run)")
    bench = get_benchmark(args["name"], data_dir=args["data_dir"], subsets=args.get("subsets"),
                          **(args.get("options") or {}))
    return merge.merge(results, run_id, bench.summarize)


def _finish_shard(plan: _Plan, run: Any, header: dict) -> dict:
    """After this shard's items: merge when every shard is complete (this one finished last), else say
    which are still running. Returns the merged summary, or this shard's own (not written to disk)."""
    from oscar_eval.store import merge

    store = run.store
    try:
        summary = merge.merge(store.root, store.run_id, plan.bench.summarize)
    except ValueError as exc:  # shards that do not belong together (a StoreError is a ValueError too)
        raise UserError(f"{exc}; the shard's records are kept") from None
    except merge.MergeIncomplete as exc:
        plan.say(f"{header['method']}: shard {store.shard.tag} done; not merged yet ({exc}). The last shard to "
                 f"finish merges; or run `oscar-eval merge --results {store.root} {store.run_id}`")
        records = store.latest_records()
        summary = {**header, "n_items": len(records), "n_failed": sum(r.get("status") != "ok" for r in records),
                   **plan.bench.summarize(records), "shard": {"rank": store.shard.rank,
                                                              "world_size": store.shard.world_size}}
    else:
        plan.say(f"{header['method']}: all {store.shard.world_size} shards complete; merged into {store.dir}")
    summary["run_dir"] = str(store.dir)
    return summary
