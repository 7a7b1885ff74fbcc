"""Reference numerics, pure PyTorch, any device.

``roundtrip_keys`` / ``roundtrip_values`` quantize one flushed block exactly as the cache does and
return it dequantized in the ORIGINAL basis (unrotated, unscaled), for ``[batch, kv_heads, tokens,
head_dim]`` tensors whose token count is a multiple of the key group size. They are the oracle the
CUDA kernels and the cache are tested against.

Numerics: a finite input never comes back NaN/inf (results past the dtype's range saturate to it);
inf/NaN inputs propagate (each comes back non-finite; see :mod:`oscar_core.quant` for which
neighbours it takes along).
"""

from __future__ import annotations

import torch

from oscar_core.methods import MethodSpec
from oscar_core.quant import saturate


def _check(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what} must be [batch, kv_heads, tokens, head_dim], got shape {tuple(x.shape)}")


def roundtrip_keys(spec: MethodSpec, k: torch.Tensor) -> torch.Tensor:
    """Post-RoPE keys -> quantized -> dequantized, in the original basis and dtype."""
    return _roundtrip(spec, k, "keys")


def roundtrip_values(spec: MethodSpec, v: torch.Tensor) -> torch.Tensor:
    """Values (as the unmodified ``v_proj`` produces them) -> quantized -> dequantized, original basis."""
    return _roundtrip(spec, v, "values")


def _roundtrip(spec: MethodSpec, x: torch.Tensor, what: str) -> torch.Tensor:
    _check(x, what)
    if not spec.quantizes:
        return x.clone()
    spec.check_model(num_kv_heads=x.shape[1], head_dim=x.shape[-1])
    if what == "keys":
        x_hat = spec.decode_keys(spec.encode_keys(spec.keys_to_attention(x)), torch.float32)
        return saturate(spec.keys_from_attention(x_hat), x.dtype)
    x_hat = spec.decode_values(spec.encode_values(spec.values_to_cache(x)), torch.float32)
    return saturate(spec.values_from_cache(x_hat), x.dtype)
