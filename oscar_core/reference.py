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
    _check(k, "keys")
    if not spec.quantizes:
        return k.clone()
    spec.check_model(num_kv_heads=k.shape[1], head_dim=k.shape[-1])
    k_att = spec.keys_to_attention(k)
    k_hat = spec.decode_keys(spec.encode_keys(k_att), torch.float32)
    return saturate(spec.keys_from_attention(k_hat), k.dtype)


def roundtrip_values(spec: MethodSpec, v: torch.Tensor) -> torch.Tensor:
    """Values (as the unmodified ``v_proj`` produces them) -> quantized -> dequantized, original basis."""
    _check(v, "values")
    if not spec.quantizes:
        return v.clone()
    spec.check_model(num_kv_heads=v.shape[1], head_dim=v.shape[-1])
    v_cache = spec.values_to_cache(v)
    v_hat = spec.decode_values(spec.encode_values(v_cache), torch.float32)
    return saturate(spec.values_from_cache(v_hat), v.dtype)
