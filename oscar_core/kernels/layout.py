"""The packed layout shared by the CUDA kernels (csrc/oscar_kernels.cu) and the PyTorch fallbacks.

Head dim ``D = 128``, blocks of ``G = 32`` tokens. One 1536-byte block per (sequence, kv head, group):

* keys: bytes ``[0, 1024)`` hold the 2-bit codes of the 32x128 (token x channel) tile in
  ``mma.m16n8k16`` A-fragment order (rows = tokens, columns = channels); ``[1024, 1280)`` the fp16
  scale of each channel, ``[1280, 1536)`` its fp16 integer zero point *plus 1024* (per-channel groups
  of the 32 tokens, exactly :func:`oscar_core.quant.quantize` with ``axis="token"``);
* values: ``[0, 1024)`` the codes of the 128x32 (channel x token) tile in A-fragment order (rows =
  channels, columns = tokens); ``[1024, 1280)`` fp16 scale ``[4 channel groups][32 tokens]``,
  ``[1280, 1536)`` the zero points plus 1024 in the same order (per-token groups of 32 channels);
* token norms (OScaR's omni-token scaling): fp32 ``[N, T]``, shared by all kv heads.

The zero point is stored as ``1024 + z``: exact in fp16 (the quantizer's scale floor keeps
``|z| <= 1024``), and it is what the decode kernel subtracts from its ``1024 + code`` fp16 operands.

Within each 256-byte metadata array the 128 fp16 values are stored in the order of
:func:`meta_perm` (pairs grouped by the decode kernel's thread), not in the reference order.

Codes are numbered by *slot*: byte ``j`` of the 1024 holds slots ``4j .. 4j+3``, slot ``i`` at bits
``2*(i % 4)`` (the convention of :func:`oscar_core.quant.pack_codes`). :func:`slot_map` gives the slot
of each (token, channel) code; the CUDA pack kernel uses the same formula.
"""

from __future__ import annotations

from functools import lru_cache

import torch

HEAD_DIM = 128
GROUP = 32
BLOCK_BYTES = 1536
CODE_BYTES = 1024
META_OFFSET = 1024
ZERO_BIAS = 1024.0


@lru_cache(maxsize=2)
def _slot_map_cpu(keys: bool) -> torch.Tensor:
    t = torch.arange(GROUP).view(GROUP, 1).expand(GROUP, HEAD_DIM)
    c = torch.arange(HEAD_DIM).view(1, HEAD_DIM).expand(GROUP, HEAD_DIM)
    row, col = (t, c) if keys else (c, t)
    rt, r, ct, cc = row // 16, row % 16, col // 16, col % 16
    lane = (r % 8) * 4 + (cc % 8) // 2
    reg = r // 8 + 2 * (cc // 8)
    half = cc % 2
    word = ct if keys else rt
    field = (rt if keys else ct) * 4 + reg
    bit = half * 16 + 2 * field
    byte = ((word // 4) * 32 + lane) * 16 + (word % 4) * 4 + bit // 8
    return (byte * 4 + (bit % 8) // 2).contiguous()


def slot_map(keys: bool, device: torch.device | str | None = None) -> torch.Tensor:
    """``[32 tokens, 128 channels]`` int64: the slot (0..4095) of each code in a key/value block."""
    return _slot_map_cpu(keys).to(device)


def inverse_slot_map(keys: bool, device: torch.device | str | None = None) -> torch.Tensor:
    """``[4096]`` int64: for each slot, the flat index ``token * 128 + channel`` it holds."""
    return torch.argsort(_slot_map_cpu(keys).flatten()).to(device)


def _pack2(slots: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., 4096]`` (slot order) -> bytes ``[..., 1024]``."""
    c = slots.to(torch.uint8).reshape(*slots.shape[:-1], CODE_BYTES, 4)
    return c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)


def _unpack2(packed: torch.Tensor) -> torch.Tensor:
    """bytes ``[..., 1024]`` -> uint8 codes ``[..., 4096]`` in slot order."""
    p = packed.unsqueeze(-1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    return ((p >> shifts) & 3).reshape(*packed.shape[:-1], 4 * CODE_BYTES)


def codes_to_block_bytes(codes_tc: torch.Tensor, keys: bool) -> torch.Tensor:
    """Codes ``[..., 32 tokens, 128 channels]`` -> packed bytes ``[..., 1024]``."""
    flat = codes_tc.reshape(*codes_tc.shape[:-2], GROUP * HEAD_DIM)
    return _pack2(flat[..., inverse_slot_map(keys, codes_tc.device)])


def block_bytes_to_codes(packed: torch.Tensor, keys: bool) -> torch.Tensor:
    """Packed bytes ``[..., 1024]`` -> codes ``[..., 32 tokens, 128 channels]`` (uint8)."""
    slots = _unpack2(packed)
    return slots[..., slot_map(keys, packed.device)]


@lru_cache(maxsize=2)
def _meta_perm_cpu(keys: bool) -> torch.Tensor:
    m = torch.arange(128)
    pair, e = m // 2, m % 2
    r, t4, q = pair % 4, (pair // 4) % 4, pair // 16
    j = q * 4 + r
    if keys:  # j = kt * 2 + hi -> channel
        return 16 * (j // 2) + 8 * (j % 2) + 2 * t4 + e
    grp, mt, hi = j // 4, (j // 2) % 2, j % 2  # j = grp * 4 + mt * 2 + hi -> group * 32 + token
    return grp * 32 + 16 * mt + 8 * hi + 2 * t4 + e


def meta_perm(keys: bool, device: torch.device | str | None = None) -> torch.Tensor:
    """``[128]``: for each stored fp16 metadata slot, its reference index (keys: the channel; values:
    ``group * 32 + token``). Thread ``t4`` of the decode kernel reads its 16 pairs with four 16-byte loads."""
    return _meta_perm_cpu(keys).to(device)


def meta_to_stored(x: torch.Tensor, keys: bool) -> torch.Tensor:
    """Reference-ordered metadata ``[..., 128]`` -> stored order."""
    return x[..., meta_perm(keys, x.device)]


def meta_fp16(data: torch.Tensor, keys: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and biased zero (``1024 + z``) of blocks ``[..., 1536]`` as fp16 ``[..., 128]`` each, in
    reference order (keys: per channel; values: ``[4 groups * 32 tokens]``)."""
    inv = torch.argsort(_meta_perm_cpu(keys)).to(data.device)
    scale = data[..., META_OFFSET : META_OFFSET + 256].contiguous().view(torch.float16)[..., inv]
    zz = data[..., META_OFFSET + 256 : BLOCK_BYTES].contiguous().view(torch.float16)[..., inv]
    return scale, zz
