"""CUDA kernels for OScaR INT2 (csrc/), with pure-PyTorch fallbacks of the same signature and layout.

Functions (all take and return the packed layout of :mod:`oscar_core.kernels.layout`):

Head dims 64, 128 and 256 (:data:`HEAD_DIMS`; the kernels are templates on it, one instantiation each);
every function reads the head dim off its tensors.

* :func:`pack_oscar_keys` ``k [N, H, T, D]`` post-RoPE, *unrotated* keys (bf16/fp16, ``T`` a
  multiple of 32) -> :class:`KernelKeys`: Hadamard per head, fp32 token norm over all kv heads,
  per-channel groups of 32 tokens, integer zero point, 2 bits; one fused kernel.
* :func:`pack_values` ``v [N, H, T, D]`` (already rotated by the fused ``v_proj``) ->
  :class:`KernelValues`: per-token groups of 32 channels, integer zero point, 2 bits.
* :func:`decode_attention` one query token per sequence against the packed cache plus the
  full-precision residual window: split-KV, GQA, per-sequence device-side lengths, no host
  synchronisation and fixed shapes (CUDA-graph capturable).
* :func:`append_window` writes one decode token per sequence into the full-precision window at
  device-side slots, rotating the key (OScaR) in the same launch.
* :func:`from_reference_blocks` / :func:`to_reference_blocks` convert between the reference Block
  dicts of :class:`oscar_core.methods.oscar.OScaRSpec` (or, with ``method="kivi"``,
  :class:`oscar_core.methods.kivi.KIVISpec`) and this layout, bit for bit.
* :func:`pack_kivi_keys` / :func:`pack_kivi_values`: KIVI's format in the same layout (float minimum
  instead of the integer zero point, no token norm, no query rotation); the decode kernel reads both.
  They encode with the reference quantizer (no fused CUDA pack kernel for KIVI).

The CUDA path is used when :func:`available` is true and the tensors live on a CUDA device; the
extension is built just in time (``torch.utils.cpp_extension.load``, ninja) on first use and cached
in ``TORCH_EXTENSIONS_DIR``. Everything else runs the PyTorch fallbacks, whose numerics are the
reference quantizer's (:mod:`oscar_core.quant`), the oracle of the GPU tests.

Modules: :mod:`~oscar_core.kernels.loader` (build, availability), :mod:`~oscar_core.kernels.ops` (the
bound ops and their fallbacks), :mod:`~oscar_core.kernels.layout` (the packed layout, its containers,
and the converters to and from reference blocks). This package re-exports their public names.
"""

from oscar_core.kernels.layout import (
    BLOCK_BYTES,
    GROUP,
    HEAD_DIM,
    HEAD_DIMS,
    KernelKeys,
    KernelValues,
    alloc_keys,
    alloc_values,
    from_reference_blocks,
    to_reference_blocks,
)
from oscar_core.kernels.loader import available, unavailable_reason
from oscar_core.kernels.ops import (
    DecodeWorkspace,
    append_window,
    choose_splits,
    decode_attention,
    decode_attention_reference,
    dequantize_keys,
    dequantize_values,
    make_decode_workspace,
    max_pack_heads,
    pack_kivi_keys,
    pack_kivi_values,
    pack_oscar_keys,
    pack_values,
)

__all__ = [
    "BLOCK_BYTES",
    "GROUP",
    "HEAD_DIM",
    "HEAD_DIMS",
    "DecodeWorkspace",
    "KernelKeys",
    "KernelValues",
    "alloc_keys",
    "alloc_values",
    "append_window",
    "available",
    "choose_splits",
    "decode_attention",
    "decode_attention_reference",
    "dequantize_keys",
    "dequantize_values",
    "from_reference_blocks",
    "make_decode_workspace",
    "max_pack_heads",
    "pack_kivi_keys",
    "pack_kivi_values",
    "pack_oscar_keys",
    "pack_values",
    "to_reference_blocks",
    "unavailable_reason",
]
