"""Named decoder architectures: the published ``config.json`` values of the models the paper uses.

``oscar-eval speed --arch qwen3-8b`` builds a model from these values with random weights (timing and
memory do not depend on weight values). Values are copied from the models' released ``config.json``
files (Hugging Face ``Qwen/Qwen3-*`` and ``meta-llama/Llama-3.*``); only fields that change shapes or
numerics are kept. ``build_config(name, layers=N)`` cuts the depth for quick runs.
"""

from __future__ import annotations

import copy
from typing import Any

_LLAMA3_ROPE_8K = {"original_max_position_embeddings": 8192, "low_freq_factor": 1.0, "high_freq_factor": 4.0}

# Fields every released config of a family has in common; each model below adds its own.
_QWEN3 = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "attention_bias": False,
    "hidden_act": "silu",
}
_LLAMA3 = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
}


def _llama3(rope_factor: float, **fields: Any) -> dict[str, Any]:
    return {**_LLAMA3, "rope_scaling": {"rope_type": "llama3", "factor": rope_factor, **_LLAMA3_ROPE_8K}, **fields}


ARCHS: dict[str, dict[str, Any]] = {
    # Qwen/Qwen3-8B config.json
    "qwen3-8b": {**_QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "tie_word_embeddings": False},
    # Qwen/Qwen3-4B config.json
    "qwen3-4b": {**_QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "tie_word_embeddings": True},
    # Qwen/Qwen3-1.7B config.json
    "qwen3-1.7b": {**_QWEN3, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "tie_word_embeddings": True},
    # Qwen/Qwen3-14B config.json
    "qwen3-14b": {**_QWEN3, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "tie_word_embeddings": False},
    # meta-llama/Llama-3.1-8B(-Instruct) config.json
    "llama-3.1-8b": _llama3(8.0, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                            num_attention_heads=32, head_dim=128, tie_word_embeddings=False),
    # meta-llama/Llama-3.2-3B(-Instruct) config.json
    "llama-3.2-3b": _llama3(32.0, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                            num_attention_heads=24, head_dim=128, tie_word_embeddings=True),
    # meta-llama/Llama-3.2-1B(-Instruct) config.json
    "llama-3.2-1b": _llama3(32.0, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                            num_attention_heads=32, head_dim=64, tie_word_embeddings=True),
}

#: Other spellings accepted on the command line.
ALIASES = {
    "qwen3_8b": "qwen3-8b",
    "qwen/qwen3-8b": "qwen3-8b",
    "llama3.1-8b": "llama-3.1-8b",
    "llama-3-8b": "llama-3.1-8b",
    "meta-llama/llama-3.1-8b": "llama-3.1-8b",
    "meta-llama/llama-3.1-8b-instruct": "llama-3.1-8b",
    "llama3.2-1b": "llama-3.2-1b",
    "llama3.2-3b": "llama-3.2-3b",
}


class UnknownArchError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


def list_archs() -> list[str]:
    return sorted(ARCHS)


def canonical(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ARCHS:
        raise UnknownArchError(f"unknown architecture {name!r}; known: {', '.join(list_archs())}")
    return key


def get_arch(name: str, layers: int | None = None) -> dict[str, Any]:
    """The config values of ``name`` (a copy), with the depth cut to ``layers`` when given."""
    values = copy.deepcopy(ARCHS[canonical(name)])
    if layers is not None:
        if layers <= 0:
            raise ValueError(f"layers must be positive, got {layers}")
        values["num_hidden_layers"] = min(int(layers), values["num_hidden_layers"])
    return values


def shapes(name: str) -> dict[str, int]:
    """Attention shapes of one layer: query heads, KV heads, head dim, layers, hidden size."""
    a = ARCHS[canonical(name)]
    return {
        "num_q_heads": a["num_attention_heads"],
        "num_kv_heads": a["num_key_value_heads"],
        "head_dim": a.get("head_dim") or a["hidden_size"] // a["num_attention_heads"],
        "num_layers": a["num_hidden_layers"],
        "hidden_size": a["hidden_size"],
    }


def param_count(values: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen3 decoder built from ``values`` (embeddings and LM head included)."""
    h, i, v = values["hidden_size"], values["intermediate_size"], values["vocab_size"]
    nq, nkv = values["num_attention_heads"], values["num_key_value_heads"]
    d = values.get("head_dim") or h // nq
    attn = h * nq * d + 2 * h * nkv * d + nq * d * h
    if values.get("attention_bias"):
        attn += nq * d + 2 * nkv * d
    qk_norm = 2 * d if values.get("model_type") == "qwen3" else 0
    layer = attn + 3 * h * i + 2 * h + qk_norm
    embed = v * h
    head = 0 if values.get("tie_word_embeddings") else v * h
    return values["num_hidden_layers"] * layer + embed + head + h


def build_config(name: str, layers: int | None = None, dtype: str = "bfloat16"):
    """A transformers config object for ``name`` (imports transformers)."""
    from transformers import AutoConfig

    values = get_arch(name, layers)
    model_type = values.pop("model_type")
    values["dtype"] = dtype
    return AutoConfig.for_model(model_type, **values)
