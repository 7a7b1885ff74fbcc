"""QuaRot (Ashkboos et al., NeurIPS 2024), KV-cache part only.

Hadamard on Q and K after RoPE (online) and fused into ``v_proj``/``o_proj`` (as OScaR). Keys and
values are quantized per token with one group per head (``G = D = 128``), integer zero point, clip
ratio 0.95, ``b=2``. The original has no full-precision window and quantizes the prompt too
(``residual_length=0, quantized_prefill=True``); the default here is the paper's common setting
(``R=128``, full-precision prefill).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from oscar_core.methods.base import Block, BlockContext, MethodSpec, check_clip_ratio


@dataclass(frozen=True)
class QuaRotSpec(MethodSpec):
    name: ClassVar[str] = "quarot"
    description: ClassVar[str] = "QuaRot: Hadamard rotation, per-token groups of one head, clip 0.95"
    rotates_keys: ClassVar[bool] = True
    rotates_values: ClassVar[bool] = True
    key_axis: ClassVar[Literal["token", "channel"]] = "channel"
    value_axis: ClassVar[Literal["token", "channel"]] = "channel"

    #: None: one group per head (G = head_dim, 128 in the paper's models).
    group_size: int | None = None
    clip_ratio: float = 0.95

    def group_for(self, axis: str, head_dim: int) -> int:
        return self.group_size or head_dim

    def validate(self) -> None:
        super().validate()
        check_clip_ratio(self.name, self.clip_ratio)

    def encode_keys(self, k: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        return self._encode_affine(k, "channel", "integer", self.clip_ratio)

    def decode_keys(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode_affine(block, "channel", "integer", dtype)

    def encode_values(self, v: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        return self._encode_affine(v, "channel", "integer", self.clip_ratio)

    def decode_values(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        return self._decode_affine(block, "channel", "integer", dtype)
