"""lm-eval adapter: the ``oscar-hf`` model (HFLM + an oscar_core KV cache) and LongBench-E tasks on
local files.

    import oscar_eval.adapters.lm_eval as ad          # registers "oscar-hf"
    task_dir = ad.write_longbench_e_tasks("/data/longbench", "/tmp/oscar_tasks")
    lm_eval.simple_evaluate(model="oscar-hf", model_args="pretrained=/models/llama,method=oscar",
                            tasks=["oscar_longbench_e"], task_manager=TaskManager(include_path=task_dir))

From the shell (lm-eval 0.4 has no model plug-in discovery, so this wrapper registers the model and
then hands over to lm-eval's own command line):

    python -m oscar_eval.adapters.lm_eval write-tasks /data/longbench /tmp/oscar_tasks
    python -m oscar_eval.adapters.lm_eval --model oscar-hf \
        --model_args pretrained=/models/llama,method=kivi,cache_bits=2 \
        --include_path /tmp/oscar_tasks --tasks oscar_longbench_e

lm-eval builds ``oscar-hf`` from ``--model_args`` like ``hf`` (``pretrained`` is a path, never a built
model), so HFLM's own data parallelism applies: under ``accelerate launch -m oscar_eval.adapters.lm_eval
--model oscar-hf ...`` each process takes ``cuda:<local rank>`` and its share of the requests, and each
generation gets a fresh cache on that process's model.

Numbers from this path follow lm-eval's protocol (its prompts, left truncation, no length buckets)
and are labelled "lm-eval protocol"; they are never mixed with the paper-protocol runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from oscar_eval.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROTOCOL = "lm-eval protocol"
MODEL_NAME = "oscar-hf"
TASK_PREFIX = "oscar_longbench_"
GROUP_NAME = "oscar_longbench_e"
CACHE_PREFIX = "cache_"  # model_args keys with this prefix are method overrides: cache_bits=3

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as exc:  # pragma: no cover - exercised only without lm-eval
    raise ImportError("the lm-eval adapter needs lm-eval: pip install 'lm-eval>=0.4.5'") from exc


def _coerce(value: Any) -> Any:
    """model_args values arrive as strings (or already typed); give ints/floats/bools their type."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


@register_model(MODEL_NAME)
class OscarHFLM(HFLM):
    """HFLM whose generations run with a fresh oscar_core cache (``method=...``) per batch."""

    def __init__(self, pretrained: Any, method: str = "oscar", **kwargs: Any) -> None:
        import oscar_core as oc

        overrides = {k[len(CACHE_PREFIX):]: _coerce(kwargs.pop(k)) for k in list(kwargs)
                     if k.startswith(CACHE_PREFIX)}
        self.oscar_spec = oc.get_method(method, **overrides)  # validates before loading weights
        self.oscar_method = method
        self.oscar_overrides = overrides
        super().__init__(pretrained=pretrained, **kwargs)

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs: Any):
        import oscar_core as oc
        from oscar_eval.models import cache_kwarg

        generation_kwargs[cache_kwarg()] = oc.make_cache(self.model, self.oscar_method, **self.oscar_overrides)
        return super()._model_generate(context, max_length, stop, **generation_kwargs)


# -- LongBench-E tasks on local files --------------------------------------------------------------

def _lm_eval_longbench_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent / "longbench"


def write_longbench_e_tasks(data_dir: str | Path, out_dir: str | Path,
                            subsets: list[str] | None = None) -> Path:
    """Write lm-eval task YAMLs that read LongBench-E from local files; returns ``out_dir``.

    Each task includes lm-eval's own ``longbench/<subset>.yaml`` (prompt, generation settings,
    metric functions) and replaces only where the data comes from: ``json`` for the THUDM
    ``<subset>.jsonl`` files (their question field is ``input``, so the template's ``{{question}}``
    becomes ``{{input}}``) or ``parquet`` for the lm-eval mirror. Tasks are named
    ``oscar_longbench_<subset>`` and grouped as ``oscar_longbench_e``. Without ``subsets``, every
    subset that has data under ``data_dir`` is written.
    """
    from oscar_eval.benchmarks.longbench_e import LongBenchE

    bench = LongBenchE(data_dir=data_dir, subsets=subsets)
    found: dict[str, list[str]] = {}
    for subset in bench.subsets():
        try:
            found[subset] = [str(Path(f).resolve()) for f in bench.data_files(subset)]
        except UserError:
            if subsets:  # asked for explicitly: a missing file is an error
                raise
    if not found:
        raise UserError(f"no LongBench-E data files under {data_dir}")
    src = _lm_eval_longbench_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for subset, files in found.items():
        base = src / f"{subset}.yaml"
        if not base.is_file():
            raise FileNotFoundError(f"lm-eval has no task file {base}")
        cfg: dict[str, Any] = {
            "include": str(base),
            "task": TASK_PREFIX + subset,
            "tag": [],
            "dataset_path": "json" if files[0].endswith(".jsonl") else "parquet",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": files}},
            "test_split": "test",
            "metadata": {"protocol": PROTOCOL},
        }
        if files[0].endswith(".jsonl"):
            with open(base, encoding="utf-8") as f:
                text = yaml.load(f, Loader=_IgnoreTags)["doc_to_text"]
            cfg["doc_to_text"] = text.replace("{{question}}", "{{input}}")
        (out / f"{TASK_PREFIX}{subset}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True),
                                                         encoding="utf-8")
        names.append(TASK_PREFIX + subset)
    group = {"group": GROUP_NAME, "task": names,
             "aggregate_metric_list": [{"metric": "score", "weight_by_size": False}],
             "metadata": {"version": 0.0, "protocol": PROTOCOL}}
    (out / f"_{GROUP_NAME}.yaml").write_text(yaml.safe_dump(group, sort_keys=False), encoding="utf-8")
    return out


class _IgnoreTags(yaml.SafeLoader):
    """Reads lm-eval YAMLs without resolving ``!function`` tags (we only need plain fields)."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def main(argv: list[str] | None = None) -> None:
    """`python -m oscar_eval.adapters.lm_eval ...`: lm-eval's CLI with ``oscar-hf`` registered.

    ``python -m oscar_eval.adapters.lm_eval write-tasks DATA_DIR OUT_DIR [SUBSET ...]`` writes the
    local-file LongBench-E task YAMLs instead (pass OUT_DIR to lm-eval's ``--include_path``).
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["write-tasks"]:
        if len(args) < 3:
            sys.exit("usage: python -m oscar_eval.adapters.lm_eval write-tasks DATA_DIR OUT_DIR [SUBSET ...]")

        try:
            out = write_longbench_e_tasks(args[1], args[2], subsets=args[3:] or None)
        except UserError as exc:
            sys.exit(f"error: {exc}")
        print(f"wrote LongBench-E tasks to {out}: use --include_path {out} --tasks {GROUP_NAME}")
        return
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
