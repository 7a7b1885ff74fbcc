"""KIVI-2 (Liu et al., ICML 2024): per-channel keys, per-token values, float-minimum quantizer.

Defaults follow the paper's common setting: ``b=2, G=32, R=128``, no clipping, and the original
KIVI value policy ``value_flush="token"`` (a sliding full-precision window; the oldest value is
quantized as it leaves). Keys are flushed as whole R-token blocks.

Decode-step timing as official KIVI (``models/llama_kivi.py`` of jy-yuan/KIVI): a key block is
attended in full precision on the step that fills it and quantized afterwards; a decode step attends
the last ``R + 1`` values in full precision (the new one and the R kept after the prompt or the
previous step), and the oldest of them is quantized after that step's attention.

``arithmetic="fp16"`` quantizes with official KIVI's fp16 arithmetic bit for bit (its min, max, scale
and shifted values are fp16 tensors); the default computes in fp32 and stores fp16 metadata, which
puts about a quarter of the scales one fp16 step away from official KIVI's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from oscar_core.methods.base import Block, BlockContext, MethodSpec


@dataclass(frozen=True)
class KIVISpec(MethodSpec):
    name: ClassVar[str] = "kivi"
    description: ClassVar[str] = "KIVI: per-channel keys / per-token values, float minimum"

    value_flush: Literal["block", "token"] = "token"
    #: "fp16": quantize with official KIVI's fp16 arithmetic, bit for bit (see oscar_core.quant.quantize_groups)
    arithmetic: Literal["fp32", "fp16"] = "fp32"

    def encode_keys(self, k: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        return self._encode_affine(k, "token", "float", arithmetic=self.arithmetic)

    def decode_keys(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode_affine(block, "token", "float", dtype)

    def encode_values(self, v: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        return self._encode_affine(v, "channel", "float", arithmetic=self.arithmetic)

    def decode_values(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode_affine(block, "channel", "float", dtype)
