"""fp16: no quantization; the model's own dtype. The reference row of every table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from oscar_core.methods.base import MethodConfigError, MethodSpec


@dataclass(frozen=True)
class FP16Spec(MethodSpec):
    name: ClassVar[str] = "fp16"
    description: ClassVar[str] = "full precision (the model's dtype), no quantization"
    quantizes: ClassVar[bool] = False

    bits: int = 16
    residual_length: int = 0

    def validate(self) -> None:
        if self.bits != 16:
            raise MethodConfigError("fp16: bits is fixed at 16")
