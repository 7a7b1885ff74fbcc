"""What model loading and every runner share: the loaded model, a runner's result, the runner protocol.

Its own module (nothing of ours below it) so that the loaders and the runners import it, never each other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)



@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: Path
    device: str
    dtype: str

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return archs[0]

    def kv_shape(self) -> tuple[int, int]:
        """(num_kv_heads, head_dim) of the text decoder, for bits-per-element accounting."""
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        if not hasattr(cfg, "num_attention_heads") and hasattr(cfg, "get_text_config"):
            cfg = cfg.get_text_config()  # nested configs, e.g. Qwen3-Omni's thinker_config.text_config
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return int(kv), int(head_dim)


def eos_token_ids(model: Any, tok: Any, extra: Any = ()) -> list[int]:
    """The ids that end a generation: generation_config's EOS id(s), the tokenizer's EOS, then ``extra``
    (each once, in that order)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    for t in (getattr(tok, "eos_token_id", None), *extra):
        if t is not None and t not in ids:
            ids.append(t)
    return ids


def cut_at_stop(tokens: list[int], stops: set[int]) -> list[int]:
    """``tokens`` up to and including the first stop token: generate pads a row of a batch that finished
    early, where the item alone would have stopped."""
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i + 1]
    return tokens


def cache_kwarg() -> str:
    """Name of generate()'s cache argument: ``cache`` in newer transformers, else ``past_key_values``."""
    from oscar_core.compat import cache_kwarg as _name

    return _name()


@dataclass
class Generation:
    prediction: str
    input_tokens: int
    truncated: bool
    new_tokens: int
    prompt_sha256: str
    # Benchmarks that measure instead of generating (ppl): the runner's numbers, stored in the record and
    # handed to the benchmark's score() in place of the prediction.
    metrics: dict[str, Any] | None = None


class ModelRunner(Protocol):
    def generate(self, item: Any, cache: Any) -> Generation: ...
