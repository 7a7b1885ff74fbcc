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

The containers :class:`KernelKeys` / :class:`KernelValues` hold packed blocks; :func:`from_reference_blocks`
/ :func:`to_reference_blocks` convert between them and the reference Block dicts of
:class:`oscar_core.methods.oscar.OScaRSpec` (or, with ``method="kivi"``, :class:`oscar_core.methods.kivi.KIVISpec`),
bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from oscar_core.quant import pack_codes, unpack_codes

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


@lru_cache(maxsize=6)
def _inverse_slot_map_cpu(keys: bool, head_dim: int) -> torch.Tensor:
    return torch.argsort(_slot_map_cpu(keys, head_dim).flatten())


@lru_cache(maxsize=64)
def _index_on_device(make, keys: bool, head_dim: int, device: torch.device) -> torch.Tensor:
    return make(keys, head_dim).to(device)


def _index_on(make, keys: bool, head_dim: int, device: torch.device | str | None) -> torch.Tensor:
    """A constant index tensor of the layout on ``device``, copied there once (not at every call: a
    host -> device copy per call would make every decode step wait for the device). Read-only."""
    if device is None:
        return make(keys, head_dim)
    return _index_on_device(make, keys, head_dim, torch.device(device))


def load_index_tensors(device: torch.device | str, head_dim: int) -> None:
    """Copy the layout's constant index tensors for ``head_dim`` to ``device`` now. A cache does so
    before its first decode step, so that no decode step copies them from the host."""
    for keys in (True, False):
        for make in (_slot_map_cpu, _inverse_slot_map_cpu, _meta_perm_cpu, _meta_inverse_cpu):
            _index_on(make, keys, head_dim, device)
    _index_on(_unpack_shifts_cpu, False, HEAD_DIM, device)


def slot_map(keys: bool, device: torch.device | str | None = None, head_dim: int = HEAD_DIM) -> torch.Tensor:
    """``[32 tokens, D channels]`` int64: the slot (0 .. 32 D - 1) of each code in a key/value block."""
    return _index_on(_slot_map_cpu, keys, head_dim, device)


def inverse_slot_map(keys: bool, device: torch.device | str | None = None, head_dim: int = HEAD_DIM
                     ) -> torch.Tensor:
    """``[32 D]`` int64: for each slot, the flat index ``token * D + channel`` it holds."""
    return _index_on(_inverse_slot_map_cpu, keys, head_dim, device)


def _pack2(slots: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., 32 D]`` (slot order) -> bytes ``[..., 8 D]``."""
    c = slots.to(torch.uint8).reshape(*slots.shape[:-1], slots.shape[-1] // 4, 4)
    return c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)


@lru_cache(maxsize=1)
def _unpack_shifts_cpu(keys: bool, head_dim: int) -> torch.Tensor:
    return torch.tensor([0, 2, 4, 6], dtype=torch.uint8)  # the bit offsets of a byte's four codes


def _unpack2(packed: torch.Tensor) -> torch.Tensor:
    """bytes ``[..., 8 D]`` -> uint8 codes ``[..., 32 D]`` in slot order."""
    p = packed.unsqueeze(-1)
    shifts = _index_on(_unpack_shifts_cpu, False, HEAD_DIM, packed.device)
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


@lru_cache(maxsize=6)
def _meta_inverse_cpu(keys: bool, head_dim: int) -> torch.Tensor:
    return torch.argsort(_meta_perm_cpu(keys, head_dim))


def meta_perm(keys: bool, device: torch.device | str | None = None, head_dim: int = HEAD_DIM) -> torch.Tensor:
    """``[D]``: for each stored fp16 metadata slot, its reference index (keys: the channel; values:
    ``group * 32 + token``). Thread ``t4`` of the decode kernel reads its ``D/8`` pairs with ``D/32``
    16-byte loads."""
    return _index_on(_meta_perm_cpu, keys, head_dim, device)


def meta_to_stored(x: torch.Tensor, keys: bool) -> torch.Tensor:
    """Reference-ordered metadata ``[..., D]`` -> stored order."""
    return x[..., meta_perm(keys, x.device, check_head_dim(x.shape[-1], "metadata"))]


def meta_fp16(data: torch.Tensor, keys: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and biased zero (``1024 + z``) of blocks ``[..., 12 D]`` as fp16 ``[..., D]`` each, in
    reference order (keys: per channel; values: ``[D/32 groups * 32 tokens]``)."""
    d = head_dim_of_block(data)
    off = code_bytes(d)
    inv = _index_on(_meta_inverse_cpu, keys, d, data.device)
    scale = data[..., off : off + 2 * d].contiguous().view(torch.float16)[..., inv]
    zz = data[..., off + 2 * d : off + 4 * d].contiguous().view(torch.float16)[..., inv]
    return scale, zz


# -------------------------------------------------------------------------------------------------
# Packed containers
# -------------------------------------------------------------------------------------------------


ZERO_POINTS = ("integer", "float")


@dataclass
class KernelValues:
    """Packed values: ``data`` uint8 ``[N, H, G, 12 D]`` (1536 bytes for head dim 128). ``zero_point``:
    ``"integer"`` (OScaR, stored ``1024 + z``) or ``"float"`` (KIVI's group minimum ``mn``, stored as is)."""

    data: torch.Tensor
    zero_point: str = field(default="integer", kw_only=True)

    def __post_init__(self) -> None:
        if self.zero_point not in ZERO_POINTS:
            raise ValueError(f"zero_point must be one of {ZERO_POINTS}, got {self.zero_point!r}")

    @property
    def num_tokens(self) -> int:
        return self.data.shape[2] * GROUP

    @property
    def head_dim(self) -> int:
        return head_dim_of_block(self.data, "packed data")

    def copy_into(self, dst: KernelValues, token_start: int) -> None:
        """Write these tokens into a larger (capacity) buffer at ``token_start`` (a multiple of 32)."""
        if token_start % GROUP:
            raise ValueError(f"token_start {token_start} is not a multiple of {GROUP}")
        g0, n = token_start // GROUP, self.data.shape[2]
        dst.data[:, :, g0 : g0 + n].copy_(self.data)


@dataclass
class KernelKeys(KernelValues):
    """Packed keys: the values' layout plus OScaR's token norms ``norm`` fp32 ``[N, >= G*32]`` (None: no
    token scaling, KIVI) and whether the decode rotates the query (OScaR's keys are Hadamard-rotated)."""

    norm: torch.Tensor | None = None
    rotate_query: bool = field(default=True, kw_only=True)

    def copy_into(self, dst: KernelKeys, token_start: int) -> None:
        super().copy_into(dst, token_start)
        if self.norm is not None and dst.norm is not None:
            n = self.num_tokens
            dst.norm[:, token_start : token_start + n].copy_(self.norm[:, :n])


_FORMATS = {"oscar": ("integer", True), "kivi": ("float", False)}  # method -> (zero point, norms + rotation)


def _format(method: str) -> tuple[str, bool]:
    if method not in _FORMATS:
        raise ValueError(f"the kernel layout serves {', '.join(_FORMATS)}, not {method!r}")
    return _FORMATS[method]


def alloc_keys(batch: int, kv_heads: int, capacity: int, device: torch.device | str, method: str = "oscar",
               *, head_dim: int = HEAD_DIM) -> KernelKeys:
    """A zeroed capacity buffer for ``capacity`` tokens (rounded up to 32); OScaR's norms start at 1."""
    zp, scaled = _format(method)
    g = -(-capacity // GROUP)
    norm = torch.ones(batch, g * GROUP, dtype=torch.float32, device=device) if scaled else None
    data = torch.zeros(batch, kv_heads, g, block_bytes(head_dim), dtype=torch.uint8, device=device)
    return KernelKeys(data, norm, zero_point=zp, rotate_query=scaled)


def alloc_values(batch: int, kv_heads: int, capacity: int, device: torch.device | str, method: str = "oscar",
                 *, head_dim: int = HEAD_DIM) -> KernelValues:
    g = -(-capacity // GROUP)
    return KernelValues(torch.zeros(batch, kv_heads, g, block_bytes(head_dim), dtype=torch.uint8, device=device),
                        zero_point=_format(method)[0])


# -------------------------------------------------------------------------------------------------
# Converters between reference Block dicts and the kernel layout
# -------------------------------------------------------------------------------------------------


def _keys_ref_to_data(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, zero_point: str
                      ) -> torch.Tensor:
    n, h, g, d, _ = codes.shape
    c = unpack_codes(codes, 2)  # [N, H, G, D, 32] (channel, token)
    tc = c.transpose(-1, -2)  # [N, H, G, 32, D]
    off = code_bytes(d)
    out = torch.empty(n, h, g, block_bytes(d), dtype=torch.uint8, device=codes.device)
    out[..., :off] = codes_to_block_bytes(tc, keys=True)
    out[..., off : off + 2 * d] = meta_to_stored(scale, True).contiguous().view(torch.uint8)
    out[..., off + 2 * d :] = meta_to_stored(_bias_zero(zero, zero_point), True).contiguous().view(torch.uint8)
    return out


def _bias_zero(zero: torch.Tensor, zero_point: str) -> torch.Tensor:
    """Reference fp16 zero -> stored fp16: ``1024 + z`` for the integer zero point (exact: the scale floor
    keeps |z| <= 1024), KIVI's minimum ``mn`` unchanged."""
    return (zero.float() + ZERO_BIAS).half() if zero_point == "integer" else zero.half()


def _unbias_zero(zz: torch.Tensor, zero_point: str) -> torch.Tensor:
    return (zz.float() - ZERO_BIAS).half() if zero_point == "integer" else zz


def _values_ref_to_data(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, zero_point: str
                        ) -> torch.Tensor:
    n, h, t, ng, _ = codes.shape
    g, d = t // GROUP, ng * GROUP
    c = unpack_codes(codes, 2).reshape(n, h, g, GROUP, d)  # (token, channel)
    off = code_bytes(d)
    out = torch.empty(n, h, g, block_bytes(d), dtype=torch.uint8, device=codes.device)
    out[..., :off] = codes_to_block_bytes(c, keys=False)
    s = scale.reshape(n, h, g, GROUP, ng).transpose(-1, -2).contiguous()  # [.., D/32 groups, 32 tokens]
    z = _bias_zero(zero, zero_point).reshape(n, h, g, GROUP, ng).transpose(-1, -2).contiguous()
    out[..., off : off + 2 * d] = meta_to_stored(s.view(n, h, g, -1), False).contiguous().view(torch.uint8)
    out[..., off + 2 * d :] = meta_to_stored(z.view(n, h, g, -1), False).contiguous().view(torch.uint8)
    return out


def from_reference_blocks(
    key_block: dict[str, torch.Tensor] | None,
    value_block: dict[str, torch.Tensor] | None,
    *,
    method: str = "oscar",
) -> tuple[KernelKeys | None, KernelValues | None]:
    """Reference blocks (``OScaRSpec().encode_keys`` / ``encode_values``, or KIVI's with
    ``method="kivi"``) -> kernel layout.

    Key block: ``codes`` uint8 ``[N, H, T/32, D, 8]``, ``scale``/``zero`` fp16 ``[N, H, T/32, D]``,
    and for OScaR ``norm`` fp32 ``[N, T]``. Value block: ``codes`` ``[N, H, T, D/32, 8]``,
    ``scale``/``zero`` ``[N, H, T, D/32]``. ``D`` in :data:`HEAD_DIMS`. Either may be None.
    """
    zp, scaled = _format(method)
    keys = values = None
    if key_block is not None:
        codes = key_block["codes"]
        if codes.dim() != 5 or codes.shape[-2] not in HEAD_DIMS or codes.shape[-1] != GROUP // 4:
            raise ValueError(f"key codes must be [N, H, T/32, D, 8] with D in {HEAD_DIMS}, got {tuple(codes.shape)}")
        if scaled and "norm" not in key_block:
            raise ValueError("the key block has no 'norm': OScaR's kernel layout needs the token scaling")
        if not scaled and "norm" in key_block:
            raise ValueError(f"a {method} key block has no token norm; this one has (an OScaR block?)")
        data = _keys_ref_to_data(codes, key_block["scale"], key_block["zero"], zp)
        norm = key_block["norm"].float().contiguous() if scaled else None
        keys = KernelKeys(data, norm, zero_point=zp, rotate_query=scaled)
    if value_block is not None:
        codes = value_block["codes"]
        if (codes.dim() != 5 or codes.shape[-2] * GROUP not in HEAD_DIMS or codes.shape[-1] != GROUP // 4
                or codes.shape[2] % GROUP):
            raise ValueError(
                f"value codes must be [N, H, T, D/32, 8] with D in {HEAD_DIMS} and T % 32 == 0, "
                f"got {tuple(codes.shape)}"
            )
        values = KernelValues(_values_ref_to_data(codes, value_block["scale"], value_block["zero"], zp),
                              zero_point=zp)
    return keys, values


def to_reference_blocks(
    keys: KernelKeys | None, values: KernelValues | None
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """Inverse of :func:`from_reference_blocks` (bit for bit)."""
    kb = vb = None
    if keys is not None:
        d = keys.data
        n, h, g, _ = d.shape
        tc = block_bytes_to_codes(d[..., : code_bytes(keys.head_dim)], keys=True)  # [N, H, G, 32, D]
        scale, zz = meta_fp16(d, True)
        kb = {
            "codes": pack_codes(tc.transpose(-1, -2).contiguous(), 2),
            "scale": scale,
            "zero": _unbias_zero(zz, keys.zero_point),
        }
        if keys.norm is not None:
            kb["norm"] = keys.norm[:, : g * GROUP].contiguous()
    if values is not None:
        d = values.data
        n, h, g, _ = d.shape
        ng = values.head_dim // GROUP
        tc = block_bytes_to_codes(d[..., : code_bytes(values.head_dim)], keys=False)  # [N, H, G, 32, D]
        codes = tc.reshape(n, h, g * GROUP, ng, GROUP)
        scale, zz = meta_fp16(d, False)  # [N, H, G, D/32 * 32]
        zero = _unbias_zero(zz, values.zero_point)
        vb = {
            "codes": pack_codes(codes, 2),
            "scale": scale.view(n, h, g, ng, GROUP).transpose(-1, -2).reshape(n, h, g * GROUP, ng).contiguous(),
            "zero": zero.view(n, h, g, ng, GROUP).transpose(-1, -2).reshape(n, h, g * GROUP, ng).contiguous(),
        }
    return kb, vb
