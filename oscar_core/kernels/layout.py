"""The packed layout shared by the CUDA kernels (csrc/oscar_kernels.cu) and the PyTorch fallbacks.

Head dim ``D`` in :data:`HEAD_DIMS` (64, 128, 256), blocks of ``G = 32`` tokens. One ``12 * D``-byte
block per (sequence, kv head, group) (1536 bytes for ``D = 128``):

* keys: bytes ``[0, 8D)`` hold the 2-bit codes of the 32xD (token x channel) tile in
  ``mma.m16n8k16`` A-fragment order (rows = tokens, columns = channels); ``[8D, 10D)`` the fp16
  scale of each channel, ``[10D, 12D)`` its fp16 integer zero point *plus 1024* (per-channel groups
  of the 32 tokens, exactly :func:`oscar_core.quant.quantize` with ``axis="token"``);
* values: ``[0, 8D)`` the codes of the Dx32 (channel x token) tile in A-fragment order (rows =
  channels, columns = tokens); ``[8D, 10D)`` fp16 scale ``[D/32 channel groups][32 tokens]``,
  ``[10D, 12D)`` the zero points plus 1024 in the same order (per-token groups of 32 channels);
* token norms (OScaR's omni-token scaling): fp32 ``[N, T]``, shared by all kv heads.

The zero point is stored as ``1024 + z``: exact in fp16 (the quantizer's scale floor keeps
``|z| <= 1024``), and it is what the decode kernel subtracts from its ``1024 + code`` fp16 operands.

Within each ``2D``-byte metadata array the ``D`` fp16 values are stored in the order of
:func:`meta_perm` (pairs grouped by the decode kernel's thread), not in the reference order.

Codes are numbered by *slot*: byte ``j`` of the ``8D`` holds slots ``4j .. 4j+3``, slot ``i`` at bits
``2*(i % 4)`` (the convention of :func:`oscar_core.quant.pack_codes`). :func:`slot_map` gives the slot
of each (token, channel) code; the CUDA pack kernel uses the same formula.

The head dim is read off the tensors (a block's last axis is ``12 * D`` bytes); the functions that
take no tensor take ``head_dim`` (default 128).
"""

from __future__ import annotations

from functools import lru_cache

import torch

#: Head dims the kernels are compiled for (SmolLM2 / Qwen2.5-0.5B: 64, Llama / Qwen2.5-1.5B: 128, Gemma 3: 256).
HEAD_DIMS = (64, 128, 256)
GROUP = 32
ZERO_BIAS = 1024.0
#: The sizes for head dim 128 (kept for callers of the original single-head-dim layout).
HEAD_DIM = 128
BLOCK_BYTES = 1536
CODE_BYTES = 1024
META_OFFSET = 1024


def check_head_dim(head_dim: int, what: str = "head_dim") -> int:
    """``head_dim`` if the kernel layout has it, else a ValueError naming ``what``."""
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"{what}: the kernel layout supports head_dim {', '.join(map(str, HEAD_DIMS))}, "
                         f"got {head_dim}")
    return head_dim


def block_bytes(head_dim: int) -> int:
    """Bytes per (head, 32-token group) block: codes ``8 D``, then scales and zeros ``2 D`` each."""
    return 12 * check_head_dim(head_dim)


def code_bytes(head_dim: int) -> int:
    """Bytes of 2-bit codes per block (the metadata starts there)."""
    return 8 * check_head_dim(head_dim)


def head_dim_of_block(data: torch.Tensor, what: str = "block data") -> int:
    """The head dim of packed blocks ``[..., 12 D]`` (ValueError naming ``what`` for another size)."""
    n = data.shape[-1]
    if n % 12 or n // 12 not in HEAD_DIMS:
        raise ValueError(f"{what}: the last axis must be 12 * head_dim bytes (head_dim in {HEAD_DIMS}), got {n}")
    return n // 12


@lru_cache(maxsize=6)
def _slot_map_cpu(keys: bool, head_dim: int) -> torch.Tensor:
    d = check_head_dim(head_dim)
    t = torch.arange(GROUP).view(GROUP, 1).expand(GROUP, d)
    c = torch.arange(d).view(1, d).expand(GROUP, d)
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


def slot_map(keys: bool, device: torch.device | str | None = None, head_dim: int = HEAD_DIM) -> torch.Tensor:
    """``[32 tokens, D channels]`` int64: the slot (0 .. 32 D - 1) of each code in a key/value block."""
    return _slot_map_cpu(keys, head_dim).to(device)


def inverse_slot_map(keys: bool, device: torch.device | str | None = None, head_dim: int = HEAD_DIM
                     ) -> torch.Tensor:
    """``[32 D]`` int64: for each slot, the flat index ``token * D + channel`` it holds."""
    return torch.argsort(_slot_map_cpu(keys, head_dim).flatten()).to(device)


def _pack2(slots: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., 32 D]`` (slot order) -> bytes ``[..., 8 D]``."""
    c = slots.to(torch.uint8).reshape(*slots.shape[:-1], slots.shape[-1] // 4, 4)
    return c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)


def _unpack2(packed: torch.Tensor) -> torch.Tensor:
    """bytes ``[..., 8 D]`` -> uint8 codes ``[..., 32 D]`` in slot order."""
    p = packed.unsqueeze(-1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    return ((p >> shifts) & 3).reshape(*packed.shape[:-1], 4 * packed.shape[-1])


def codes_to_block_bytes(codes_tc: torch.Tensor, keys: bool) -> torch.Tensor:
    """Codes ``[..., 32 tokens, D channels]`` -> packed bytes ``[..., 8 D]``."""
    d = check_head_dim(codes_tc.shape[-1], "codes")
    flat = codes_tc.reshape(*codes_tc.shape[:-2], GROUP * d)
    return _pack2(flat[..., inverse_slot_map(keys, codes_tc.device, d)])


def block_bytes_to_codes(packed: torch.Tensor, keys: bool) -> torch.Tensor:
    """Packed bytes ``[..., 8 D]`` -> codes ``[..., 32 tokens, D channels]`` (uint8)."""
    d = check_head_dim(packed.shape[-1] // 8, "packed codes")
    slots = _unpack2(packed)
    return slots[..., slot_map(keys, packed.device, d)]


@lru_cache(maxsize=6)
def _meta_perm_cpu(keys: bool, head_dim: int) -> torch.Tensor:
    m = torch.arange(check_head_dim(head_dim))
    pair, e = m // 2, m % 2
    r, t4, q = pair % 4, (pair // 4) % 4, pair // 16
    j = q * 4 + r
    if keys:  # j = kt * 2 + hi -> channel
        return 16 * (j // 2) + 8 * (j % 2) + 2 * t4 + e
    grp, mt, hi = j // 4, (j // 2) % 2, j % 2  # j = grp * 4 + mt * 2 + hi -> group * 32 + token
    return grp * 32 + 16 * mt + 8 * hi + 2 * t4 + e


def meta_perm(keys: bool, device: torch.device | str | None = None, head_dim: int = HEAD_DIM) -> torch.Tensor:
    """``[D]``: for each stored fp16 metadata slot, its reference index (keys: the channel; values:
    ``group * 32 + token``). Thread ``t4`` of the decode kernel reads its ``D/8`` pairs with ``D/32``
    16-byte loads."""
    return _meta_perm_cpu(keys, head_dim).to(device)


def meta_to_stored(x: torch.Tensor, keys: bool) -> torch.Tensor:
    """Reference-ordered metadata ``[..., D]`` -> stored order."""
    return x[..., meta_perm(keys, x.device, check_head_dim(x.shape[-1], "metadata"))]


def meta_fp16(data: torch.Tensor, keys: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and biased zero (``1024 + z``) of blocks ``[..., 12 D]`` as fp16 ``[..., D]`` each, in
    reference order (keys: per channel; values: ``[D/32 groups * 32 tokens]``)."""
    d = head_dim_of_block(data)
    off = code_bytes(d)
    inv = torch.argsort(_meta_perm_cpu(keys, d)).to(data.device)
    scale = data[..., off : off + 2 * d].contiguous().view(torch.float16)[..., inv]
    zz = data[..., off + 2 * d : off + 4 * d].contiguous().view(torch.float16)[..., inv]
    return scale, zz
