"""Named architectures carry the published config values."""

from __future__ import annotations

import pytest

from oscar_eval import archs


@pytest.mark.parametrize(
    "name,params_b",
    [("qwen3-8b", 8.19), ("llama-3.1-8b", 8.03), ("qwen3-4b", 4.02), ("llama-3.2-1b", 1.24), ("llama-3.2-3b", 3.21)],
)
def test_parameter_counts_match_the_published_sizes(name, params_b):
    assert archs.param_count(archs.get_arch(name)) / 1e9 == pytest.approx(params_b, abs=0.01)


def test_attention_shapes_of_the_papers_models():
    for name in ("qwen3-8b", "llama-3.1-8b"):
        sh = archs.shapes(name)
        assert (sh["num_q_heads"], sh["num_kv_heads"], sh["head_dim"]) == (32, 8, 128)
    assert archs.shapes("qwen3-8b")["num_layers"] == 36
    assert archs.shapes("llama-3.1-8b")["num_layers"] == 32


def test_layers_cut_and_aliases():
    assert archs.get_arch("Qwen/Qwen3-8B", layers=4)["num_hidden_layers"] == 4
    assert archs.get_arch("qwen3-8b", layers=1000)["num_hidden_layers"] == 36
    with pytest.raises(KeyError, match="known"):
        archs.canonical("gpt-5")
    with pytest.raises(ValueError):
        archs.get_arch("qwen3-8b", layers=0)


def test_build_config_is_a_transformers_config():
    cfg = archs.build_config("llama-3.1-8b", layers=2)
    assert type(cfg).__name__ == "LlamaConfig"
    assert cfg.num_hidden_layers == 2 and cfg.num_key_value_heads == 8 and cfg.head_dim == 128
    assert archs.build_config("qwen3-8b").intermediate_size == 12288


@pytest.mark.parametrize("name,factor", [("llama-3.1-8b", 8.0), ("llama-3.2-3b", 32.0), ("llama-3.2-1b", 32.0)])
def test_llama3_rope_scaling_per_model(name, factor):
    rope = archs.get_arch(name)["rope_scaling"]
    assert rope == {"rope_type": "llama3", "factor": factor, "original_max_position_embeddings": 8192,
                    "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    assert "rope_scaling" not in archs.get_arch("qwen3-8b")
