"""KIVI-2 (Liu et al., ICML 2024): per-channel keys, per-token values, float-minimum quantizer.

Defaults follow the paper's common setting: ``b=2, G=32, R=128``, no clipping, and the original
KIVI value policy ``value_flush="token"`` (a sliding full-precision window of the last R values; the
oldest value is quantized as it leaves). Keys are flushed as whole R-token blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from oscar_core.methods.base import Block, MethodSpec


@dataclass(frozen=True)
class KIVISpec(MethodSpec):
    name: ClassVar[str] = "kivi"
    description: ClassVar[str] = "KIVI: per-channel keys / per-token values, float minimum"

    value_flush: Literal["block", "token"] = "token"

    def encode_keys(self, k: torch.Tensor) -> Block:
        return self._encode_affine(k, "token", "float")

    def decode_keys(self, block: Block, dtype: torch.dtype) -> torch.Tensor:
        return self._decode_affine(block, "token", "float", dtype)

    def encode_values(self, v: torch.Tensor) -> Block:
        return self._encode_affine(v, "channel", "float")

    def decode_values(self, block: Block, dtype: torch.dtype) -> torch.Tensor:
        return self._decode_affine(block, "channel", "float", dtype)
