"""What every KV-cache method is: a frozen spec with the paper defaults, plus its numerics.

A method turns a *block* of keys/values (``[N, H, T, D]``, post-RoPE keys, values as the model's
``v_proj`` produces them) into an encoded block (a dict of tensors, batch-first) and back. The cache
(:mod:`oscar_core.cache`) decides *when* blocks are encoded; the method decides *how*.

Bases. Keys live in three bases: the model's (post-RoPE), the *attention basis* (what the cache
returns to attention, after :meth:`keys_to_attention`; the query goes through
:meth:`query_to_attention` so that scores are unchanged), and whatever the method quantizes in.
Values live in the basis the (possibly rotated) ``v_proj`` produces; :meth:`values_to_cache`
emulates that rotation for the reference round trip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from oscar_core.hadamard import check_hadamard_size, hadamard_transform
from oscar_core.quant import PackedGroups, ZeroPoint, dequantize, quantize

Block = dict[str, torch.Tensor]


class MethodConfigError(ValueError):
    """A method parameter (or a model it is applied to) that the method cannot accept."""


@dataclass(frozen=True)
class MethodSpec:
    """Base spec: residual window and flush policy shared by all methods (METHODS.md)."""

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    #: True when keys/values are really quantized (False only for the full-precision reference).
    quantizes: ClassVar[bool] = True
    #: True when the per-head Hadamard is fused into v_proj/o_proj by :meth:`prepare_model`.
    rotates_values: ClassVar[bool] = False

    bits: int = 2
    group_size: int = 32
    residual_length: int = 128
    #: "block": the value buffer is quantized as a whole block; "token": sliding window (KIVI).
    value_flush: Literal["block", "token"] = "block"
    #: Quantize the prompt's K/V before the prompt's own attention (original QuaRot).
    quantized_prefill: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # -- configuration ---------------------------------------------------------------------
    def validate(self) -> None:
        if self.bits not in (1, 2, 3, 4, 8):
            raise MethodConfigError(f"{self.name}: bits={self.bits} is not supported (1, 2, 3, 4 or 8)")
        if self.group_size is not None and self.group_size <= 0:
            raise MethodConfigError(f"{self.name}: group_size must be positive, got {self.group_size}")
        if self.residual_length < 0:
            raise MethodConfigError(f"{self.name}: residual_length must be >= 0, got {self.residual_length}")
        if self.value_flush not in ("block", "token"):
            raise MethodConfigError(f"{self.name}: value_flush must be 'block' or 'token', got {self.value_flush!r}")
        if self.key_axis == "token":
            if self.residual_length == 0 or self.residual_length % self.group_size:
                raise MethodConfigError(
                    f"{self.name}: residual_length ({self.residual_length}) must be a positive multiple of "
                    f"group_size ({self.group_size}): per-channel key groups are flushed as whole blocks"
                )

    def check_model(self, num_kv_heads: int, head_dim: int) -> None:
        """Raise :class:`MethodConfigError` if a layer of this shape cannot be handled."""
        for axis, what in ((self.key_axis, "keys"), (self.value_axis, "values")):
            if axis == "channel" and self.quantizes and head_dim % self.group_for(axis, head_dim):
                raise MethodConfigError(
                    f"{self.name}: head_dim {head_dim} is not a multiple of the {what} group size "
                    f"{self.group_for(axis, head_dim)}"
                )
        if self.rotates_keys or self.rotates_values:
            try:
                check_hadamard_size(head_dim, "head_dim")
            except ValueError as exc:
                raise MethodConfigError(f"{self.name}: {exc}") from None

    def replace(self, **overrides: Any) -> MethodSpec:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise MethodConfigError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.to_dict()['params'])}"
            )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dataclasses.asdict(self)}

    # -- layout ----------------------------------------------------------------------------
    #: "token": keys grouped per channel over consecutive tokens; "channel": per-token groups.
    key_axis: ClassVar[Literal["token", "channel"]] = "token"
    value_axis: ClassVar[Literal["token", "channel"]] = "channel"
    rotates_keys: ClassVar[bool] = False

    def group_for(self, axis: str, head_dim: int) -> int:
        """Group size along ``axis`` for a layer of ``head_dim`` (a method may tie it to the head)."""
        return self.group_size

    @property
    def block_tokens(self) -> int:
        """Tokens per key flush: the whole residual window (1 when there is no window)."""
        return self.residual_length if self.residual_length > 0 else 1

    # -- numerics (override in methods) ------------------------------------------------------
    def query_to_attention(self, q: torch.Tensor) -> torch.Tensor:
        return hadamard_transform(q) if self.rotates_keys else q

    def keys_to_attention(self, k: torch.Tensor) -> torch.Tensor:
        """Model basis -> attention basis (the basis of full-precision buffered keys)."""
        return hadamard_transform(k) if self.rotates_keys else k

    def keys_from_attention(self, k: torch.Tensor) -> torch.Tensor:
        return hadamard_transform(k) if self.rotates_keys else k

    def values_to_cache(self, v: torch.Tensor) -> torch.Tensor:
        """What the (possibly rotated) v_proj would produce from original values."""
        return hadamard_transform(v) if self.rotates_values else v

    def values_from_cache(self, v: torch.Tensor) -> torch.Tensor:
        return hadamard_transform(v) if self.rotates_values else v

    def encode_keys(self, k: torch.Tensor) -> Block:
        """Quantize a block of attention-basis keys ``[N, H, T, D]`` (T a multiple of the key group)."""
        raise NotImplementedError

    def decode_keys(self, block: Block, dtype: torch.dtype) -> torch.Tensor:
        """Attention-basis keys ``[N, H, T, D]`` from an encoded block (token norms applied)."""
        raise NotImplementedError

    def encode_values(self, v: torch.Tensor) -> Block:
        raise NotImplementedError

    def decode_values(self, block: Block, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    # -- storage accounting ----------------------------------------------------------------
    def side_bits_per_token(self, num_kv_heads: int, head_dim: int) -> float:
        """Per-token side data (e.g. OScaR's fp32 token norm), all heads of one layer together."""
        return 0.0

    def bits_per_element(self, seq_len: int, num_kv_heads: int, head_dim: int) -> float:
        """Effective storage bits per K/V element at ``seq_len`` tokens, metadata and window included.

        After the prompt ``floor(T/R)*R`` tokens are quantized and ``T mod R`` are kept in 16 bits
        (for the sliding value window, the last ``min(T, R)`` values).
        """
        if not self.quantizes:
            return 16.0
        r = self.residual_length
        t = seq_len
        k_quant = (t // r) * r if r > 0 else t
        v_quant = max(t - r, 0) if self.value_flush == "token" else k_quant
        meta = 32  # one fp16 scale + one fp16 zero/minimum per group
        k_bits = self.bits + meta / self.group_for(self.key_axis, head_dim)
        v_bits = self.bits + meta / self.group_for(self.value_axis, head_dim)
        per_head = num_kv_heads * head_dim
        total = (
            k_quant * per_head * k_bits
            + v_quant * per_head * v_bits
            + (t - k_quant) * per_head * 16
            + (t - v_quant) * per_head * 16
            + k_quant * self.side_bits_per_token(num_kv_heads, head_dim)
        )
        return total / (2 * t * per_head)

    # -- shared group-quantization helpers (all affine methods use the one quantizer) -------
    def _encode_affine(
        self, x: torch.Tensor, axis: Literal["token", "channel"], zero_point: ZeroPoint, clip_ratio: float = 1.0
    ) -> Block:
        gq = quantize(x, self.bits, self.group_for(axis, x.shape[-1]), axis, zero_point, clip_ratio)
        packed = PackedGroups.from_quant(gq)
        return {"codes": packed.packed, "scale": packed.scale, "zero": packed.zero}

    def _decode_affine(
        self, block: Block, axis: Literal["token", "channel"], zero_point: ZeroPoint, dtype: torch.dtype
    ) -> torch.Tensor:
        packed = PackedGroups(block["codes"], block["scale"], block["zero"], self.bits, zero_point)
        return dequantize(packed.unpack(), axis, dtype)

    # -- model preparation -----------------------------------------------------------------
    def prepare_model(self, model: torch.nn.Module) -> None:
        """One-time, idempotent model changes (V/O rotation); see :func:`oscar_core.model.prepare_model`."""
