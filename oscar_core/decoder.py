"""The text decoder inside a transformers model (whose layers the KV cache serves).

Its own module, importing nothing of ours, so that the methods (RotateKV's RoPE lookup) and the
calibration store find the decoder without importing :mod:`oscar_core.model`, which imports the methods.
"""

from __future__ import annotations

import torch


def text_decoder(model: torch.nn.Module) -> torch.nn.Module:
    # Qwen3-Omni: the cache belongs to the thinker's text decoder.
    if hasattr(model, "thinker"):
        model = model.thinker
    if hasattr(model, "get_decoder"):
        try:
            decoder = model.get_decoder()
            if decoder is not None:
                return decoder
        except (AttributeError, NotImplementedError):
            pass
    return model
