"""The lm-eval adapter: `oscar-hf` runs LongBench-E tasks on the local fixture through
lm_eval.simple_evaluate, with the oscar_core cache injected into every generation."""

from __future__ import annotations

import pytest

from .conftest import SMOKE_DATA

pytest.importorskip("lm_eval")
pytest.importorskip("rouge")
pytest.importorskip("fuzzywuzzy")
pytest.importorskip("jieba")


def test_write_tasks_for_jsonl_and_include_lm_eval_config(tmp_path):
    import yaml

    from oscar_eval.adapters import lm_eval as ad

    out = ad.write_longbench_e_tasks(SMOKE_DATA, tmp_path / "tasks", subsets=["trec_e"])
    cfg = yaml.safe_load((out / "oscar_longbench_trec_e.yaml").read_text())
    assert cfg["include"].endswith("longbench/trec_e.yaml") and cfg["dataset_path"] == "json"
    assert cfg["dataset_kwargs"]["data_files"]["test"] == [str(SMOKE_DATA / "trec_e.jsonl")]
    assert "{{input}}" in cfg["doc_to_text"] and "{{question}}" not in cfg["doc_to_text"]
    assert cfg["metadata"]["protocol"] == "lm-eval protocol"


@pytest.mark.parametrize("method", ["fp16", "kivi"])
def test_simple_evaluate_with_oscar_hf(tmp_path, smoke_model, monkeypatch, method):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import oscar_core
    from oscar_eval.adapters import lm_eval as ad

    calls = []
    real = oscar_core.make_cache

    def counting(model, name, **kw):
        calls.append(name)
        return real(model, name, **kw)

    monkeypatch.setattr(oscar_core, "make_cache", counting)
    task_dir = ad.write_longbench_e_tasks(SMOKE_DATA, tmp_path / "tasks", subsets=["trec_e", "lcc_e"])
    res = lm_eval.simple_evaluate(
        model="oscar-hf", model_args=f"pretrained={smoke_model},method={method},max_length=512",
        tasks=[ad.GROUP_NAME], task_manager=TaskManager(include_path=str(task_dir)), limit=1,
        device="cpu", batch_size=1)
    results = res["results"]
    assert set(results) >= {"oscar_longbench_trec_e", "oscar_longbench_lcc_e", ad.GROUP_NAME}
    for name in ("oscar_longbench_trec_e", "oscar_longbench_lcc_e"):
        assert 0.0 <= results[name]["score,none"] <= 1.0
    assert calls == [method, method]  # one fresh cache per generation request


def test_unknown_method_fails_before_loading(smoke_model):
    from oscar_eval.adapters.lm_eval import OscarHFLM

    with pytest.raises(ValueError, match="nosuch"):
        OscarHFLM(pretrained=str(smoke_model), method="nosuch")


def test_cache_overrides_from_model_args(smoke_model):
    from oscar_eval.adapters.lm_eval import OscarHFLM

    lm = OscarHFLM(pretrained=str(smoke_model), method="kivi", cache_group_size="64", cache_residual_length=128,
                   device="cpu")
    assert lm.oscar_spec.group_size == 64 and lm.oscar_overrides == {"group_size": 64, "residual_length": 128}


def test_lm_eval_builds_oscar_hf_from_model_args_like_hf(smoke_model):
    """The path `lm_eval --model oscar-hf --model_args ...` takes: the registry's class, built from the
    argument string, is an HFLM that loaded the model itself (what makes accelerate's data parallelism
    apply), with the method and its overrides from the same string."""
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    import oscar_eval.adapters.lm_eval as ad

    cls = get_model(ad.MODEL_NAME)
    assert cls is ad.OscarHFLM and issubclass(cls, HFLM)
    lm = cls.create_from_arg_string(f"pretrained={smoke_model},method=oscar,cache_residual_length=64",
                                    {"device": "cpu", "batch_size": 1})
    assert lm.oscar_method == "oscar" and lm.oscar_overrides == {"residual_length": 64}
    assert lm.oscar_spec.residual_length == 64
    assert (lm.rank, lm.world_size) == (0, 1) and str(lm.device) == "cpu"
    assert type(lm.model).__name__ == "LlamaForCausalLM"  # loaded by HFLM, not handed in
