"""One decode step of attention straight from a :class:`~oscar_core.cache.layer.PackedKVLayer`'s packed storage.

The timeline path (``PackedKVLayer.attention_inputs``) dequantizes every stored unit into a padded
``[B, H, T, D]`` K and V at every step and hands them to SDPA. Here, for one query token per sequence:

1. **scores**: ``q . k`` for each stored key slot (quantized units chunk by chunk, then the
   full-precision window), gathered onto the padded timeline (pads score 0, as the timeline path's
   zero keys); full-precision overrides replace their tokens' scores;
2. the row ``[B, Hq, T]`` is scaled, masked with the mask transformers passes (whatever its pattern:
   causal, padding, sliding window) and soft-maxed in fp32, exactly SDPA's math;
3. **output**: the probabilities are gathered onto the value slots and ``sum_t p_t v_t`` is taken chunk
   by chunk (overrides: their slot's weight moves to the full-precision copy).

Two passes over the packed storage rather than an online softmax: keys and values may be laid out
differently (KIVI's sliding value window), and one softmax over the whole row is SDPA's own. The
score row is ``T`` floats per head, negligible next to K/V; nothing is kept between steps.

Affine fast path (:func:`affine_form`): for the quantizer of :mod:`oscar_core.quant` the scale and zero
fold into the query or the probabilities, so the inner products run on the unpacked codes:
per-channel key groups ``q . k_t = sum_c (q_c s_cg) code_tc - sum_c q_c s_cg z_cg`` (float minimum:
``+ sum_c q_c mn_cg``), times OScaR's token norm; per-token value groups
``sum_t p_t s_tg (code_tg - z_tg)``. Other layouts (TurboQuant's codebooks, RotateKV's rotations,
``fake_quant``) use the method's own decode per chunk (the generic path).

:func:`decode_attention` returns None where it does not apply (the prompt, several query tokens, a
layer with another storage layout, a per-head mask); the caller then takes the timeline path.
"""

from __future__ import annotations

from typing import Literal

import torch

from oscar_core.cache import policy
from oscar_core.cache.layer import PackedKVLayer
from oscar_core.cache.storage import ReferenceLayout, decode_slots
from oscar_core.methods.base import MethodSpec
from oscar_core.methods.kivi import KIVISpec
from oscar_core.methods.oscar import OScaRSpec
from oscar_core.methods.ott import OTTSpec
from oscar_core.methods.quarot import QuaRotSpec
from oscar_core.quant import codes_per_byte

#: Quantized tokens handled per chunk: large BLAS calls, bounded temporaries at long contexts.
CHUNK_TOKENS = 4096

Axis = Literal["token", "channel"]
ZeroPoint = Literal["integer", "float"]

# The decoders known to be exactly ``_decode_affine(block, axis, zero_point)`` (OScaR's keys: times the
# token norm when the block has one). Keyed by the function itself, so a subclass that overrides a
# decoder falls back to the generic path instead of being misread.
_AFFINE_KEYS = {
    OScaRSpec.decode_keys: ("token", "integer"),
    KIVISpec.decode_keys: ("token", "float"),
    OTTSpec.decode_keys: ("token", "float"),
    QuaRotSpec.decode_keys: ("channel", "integer"),
}
_AFFINE_VALUES = {
    OScaRSpec.decode_values: ("channel", "integer"),
    KIVISpec.decode_values: ("channel", "float"),
    OTTSpec.decode_values: ("channel", "float"),
    QuaRotSpec.decode_values: ("channel", "integer"),
}


def affine_form(spec: MethodSpec, is_key: bool) -> tuple[Axis, ZeroPoint] | None:
    """``(group axis, zero point)`` when the stream's decoder is the plain affine dequantizer, else None."""
    cls = type(spec)
    table = _AFFINE_KEYS if is_key else _AFFINE_VALUES
    return table.get(cls.decode_keys if is_key else cls.decode_values)


def decode_attention(layer, query: torch.Tensor, mask: torch.Tensor | None, scaling: float | None,
                     fast: bool = True) -> torch.Tensor | None:
    """Attention output ``[B, 1, Hq, D]`` (SDPA's, transposed as transformers returns it) for one query
    token per sequence in the attention basis, or None when this path does not apply.
    ``fast=False`` uses the generic path for every method (a check of the fast one)."""
    if layer.has_pending_prompt or query.shape[2] != 1 or layer.k.buf is None:
        return None
    if type(layer.layout) is not ReferenceLayout:  # another storage layout
        return None
    if type(layer)._timeline is not PackedKVLayer._timeline:
        return None
    total = layer.total_len
    if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[-1] < total):
        return None
    batch, q_heads, _, dim = query.shape
    kv_heads = layer.k.buf.shape[1]
    rep = q_heads // kv_heads
    q = query.float().reshape(batch, kv_heads, rep, dim)  # query head h*rep + r attends KV head h
    for s in (layer.k, layer.v):
        for b in range(batch):
            if s.length(b) != total - layer.pad[b]:
                raise RuntimeError(f"internal cache inconsistency: sequence {b} holds {s.length(b)} tokens")

    scores = _key_scores(layer, q, fast)  # [B, Hkv, rep, T] on the padded timeline
    scores = scores * (scaling if scaling is not None else dim**-0.5)
    if mask is not None:
        m = mask[:, :, :, :total].reshape(mask.shape[0], 1, 1, total)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    probs = torch.softmax(scores, dim=-1)
    out = _weighted_values(layer, probs, fast)  # [B, Hkv, rep, D]
    return out.reshape(batch, q_heads, 1, dim).transpose(1, 2).to(query.dtype).contiguous()


# -- layout of one stream's stored slots ----------------------------------------------------------
#: index maps of recent layouts: every layer of a model has the same one at a step (bounded: cleared)
_MAPS: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}


def _index_maps(layer, s, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(slot of each padded-timeline position [B, T], timeline position of each stored slot
    [B, su + width], su)``: stored slots are the attended unit slots (``su`` tokens) then the window.
    Pads point one slot past the end and unused slots one position past the end (the caller appends a
    zero column to each)."""
    width = s.buf.shape[2]
    key = (tuple(layer.pad), tuple(s.n_units), s.unit, tuple(s.buf_len), width, layer.total_len, str(device))
    maps = _MAPS.get(key)
    if maps is not None:
        return maps
    total = layer.total_len
    su = max(s.n_units, default=0) * s.unit
    nq = torch.tensor([n * s.unit for n in s.n_units]).view(-1, 1)
    nw = torch.tensor(s.buf_len).view(-1, 1)
    pad = torch.tensor(layer.pad).view(-1, 1)
    i = torch.arange(total)[None, :] - pad  # position within the sequence
    to_slot = torch.where(i >= 0, torch.where(i < nq, i, su + i - nq), su + width)
    j = torch.arange(su)[None, :]
    w = torch.arange(width)[None, :]
    to_timeline = torch.cat([torch.where(j < nq, pad + j, total), torch.where(w < nw, pad + nq + w, total)], dim=1)
    if len(_MAPS) > 64:
        _MAPS.clear()
    maps = _MAPS[key] = (to_slot.to(device), to_timeline.to(device), su)
    return maps


def _chunks(s, su: int):
    step = max(1, CHUNK_TOKENS // s.unit)
    for u0 in range(0, su // s.unit, step):
        yield u0, min(u0 + step, su // s.unit)


def _block(s, u0: int, u1: int) -> dict[str, torch.Tensor]:
    return {name: t[:, u0:u1] for name, t in s.units.items()}


def _fast_form(layer, s, fast: bool) -> tuple[Axis, ZeroPoint] | None:
    if not fast or "codes" not in s.units:
        return None
    form = affine_form(layer.spec, s.is_key)
    if form is None or set(s.units) - {"codes", "scale", "zero", "norm"}:
        return None
    if "norm" in s.units and not (s.is_key and type(layer.spec).decode_keys is OScaRSpec.decode_keys):
        return None
    if not s.is_key and form[0] != "channel":
        return None
    return form


# -- pass 1: scores --------------------------------------------------------------------------------
_SHIFTS: dict[tuple, torch.Tensor] = {}


def code_planes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed codes ``[..., n]`` as fp32 *planes* ``[k, ..., n]`` (``k`` codes per byte): plane ``i``
    holds code ``j*k + i`` at byte ``j``. The shift broadcasts over the leading axis, so each plane is
    one contiguous vectorised pass (unpacking into the last axis is ~10x slower on CPU)."""
    per_byte = codes_per_byte(bits)
    if per_byte == 1:
        return packed.float()[None]
    key = (bits, packed.ndim, str(packed.device))
    shifts = _SHIFTS.get(key)
    if shifts is None:
        shifts = _SHIFTS[key] = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device).view(
            per_byte, *([1] * packed.ndim))
    return ((packed[None] >> shifts) & ((1 << bits) - 1)).float()


def _affine_key_scores(q: torch.Tensor, block: dict[str, torch.Tensor], axis: Axis, zp: ZeroPoint,
                       bits: int) -> torch.Tensor:
    """``q . k_hat`` from codes: ``q`` ``[B, H, M, D]``, block slots ``[B, n, ...]`` -> ``[B, H, M, n*unit]``."""
    packed = block["codes"]
    scale, zero = block["scale"].float(), block["zero"].float()
    batch, n, heads = packed.shape[:3]
    m = q.shape[2]
    if axis == "token":  # packed [B, n, H, groups, D, G/k]: channel d of a group, G tokens
        pt = packed.permute(0, 2, 1, 3, 5, 4).contiguous()  # [B, H, n, g, G/k, D]: D innermost
        x = code_planes(pt, bits)  # [k, B, H, n, g, G/k, D]; token j*k + i of the group
        st = scale.permute(0, 2, 1, 3, 4)  # [B, H, n, g, D]
        x.mul_(st[:, :, :, :, None, :])  # s * code: the zero goes into one offset per group
        offset = -st * zero.permute(0, 2, 1, 3, 4) if zp == "integer" else zero.permute(0, 2, 1, 3, 4)
        k, groups, nb = x.shape[0], x.shape[4], x.shape[5]
        sc = torch.matmul(q[None], x.reshape(k, batch, heads, -1, x.shape[-1]).transpose(-1, -2))
        off = torch.matmul(q, offset.reshape(batch, heads, -1, offset.shape[-1]).transpose(-1, -2))
        sc = sc.reshape(k, batch, heads, m, n, groups, nb) + off.reshape(batch, heads, m, n, groups, 1)
        sc = sc.permute(1, 2, 3, 4, 5, 6, 0).reshape(batch, heads, m, -1)
        if "norm" in block:
            sc = sc * block["norm"].float().reshape(batch, 1, 1, -1)
        return sc
    # channel axis: packed [B, n, H, unit, groups, G/k], scale/zero [B, n, H, unit, groups]
    groups, nb = packed.shape[4], packed.shape[5]
    planes = code_planes(packed.permute(0, 2, 4, 1, 3, 5).reshape(batch, heads, groups, -1, nb), bits)
    k = planes.shape[0]  # planes [k, B, H, g, t, G/k]; channel j*k + i of the group
    qg = q.reshape(batch, heads, m, groups, nb, k).permute(5, 0, 1, 3, 4, 2)  # [k, B, H, g, G/k, M]
    qc = torch.matmul(planes, qg).sum(0)  # [B, H, groups, t, M]
    s_ = scale.permute(0, 2, 4, 1, 3).reshape(batch, heads, groups, -1, 1)
    z_ = zero.permute(0, 2, 4, 1, 3).reshape(batch, heads, groups, -1, 1)
    qsum = q.reshape(batch, heads, m, groups, -1).sum(-1).permute(0, 1, 3, 2)[:, :, :, None, :]  # [B, H, g, 1, M]
    sc = s_ * (qc - z_ * qsum) if zp == "integer" else s_ * qc + z_ * qsum
    return sc.sum(2).transpose(2, 3)


def _stream_key_scores(layer, s, q: torch.Tensor, su: int, fast: bool) -> torch.Tensor:
    """Scores of the stored slots, units then window: ``[B, H, M, su + width]``."""
    parts = []
    if su:
        form = _fast_form(layer, s, fast)
        for u0, u1 in _chunks(s, su):
            if form is not None:
                parts.append(_affine_key_scores(q, _block(s, u0, u1), *form, layer.spec.bits))
            else:
                parts.append(torch.matmul(q, decode_slots(layer, s, u0, u1).float().transpose(2, 3)))
    parts.append(torch.matmul(q, s.buf.float().transpose(2, 3)))
    return torch.cat(parts, dim=3)


def _key_scores(layer, q: torch.Tensor, fast: bool) -> torch.Tensor:
    s = layer.k
    index, _, su = _index_maps(layer, s, q.device)
    slot_scores = _stream_key_scores(layer, s, q, su, fast)
    slot_scores = torch.cat([slot_scores, slot_scores.new_zeros(*slot_scores.shape[:3], 1)], dim=3)
    batch, heads, m = slot_scores.shape[:3]
    index = index[:, None, None, :].expand(batch, heads, m, layer.total_len)
    scores = torch.gather(slot_scores, 3, index)
    if s.ov_vals is not None:  # full-precision overrides: their own scores
        rows, cols = policy.override_index(layer.pad, s.ov_rows, s.ov_pos, q.device)
        scores[rows, :, :, cols] = torch.matmul(q[rows], s.ov_vals.float()[:, :, :, None].to(q.device))[..., 0]
    return scores


# -- pass 2: weighted values -----------------------------------------------------------------------
def _affine_weighted_values(p: torch.Tensor, block: dict[str, torch.Tensor], zp: ZeroPoint,
                            bits: int) -> torch.Tensor:
    """``sum_t p_t v_hat_t`` from codes of per-token channel groups: ``p`` ``[B, H, M, n*unit]``,
    codes ``[B, n, H, unit, groups, G/k]`` -> ``[B, H, M, D]``."""
    packed = block["codes"].permute(0, 2, 4, 1, 3, 5)  # [B, H, groups, n, unit, G/k]
    batch, heads, groups = packed.shape[:3]
    planes = code_planes(packed.reshape(batch, heads, groups, -1, packed.shape[-1]), bits)  # [k, B, H, g, t, G/k]
    scale = block["scale"].float().permute(0, 2, 4, 1, 3).reshape(batch, heads, groups, 1, -1)
    zero = block["zero"].float().permute(0, 2, 4, 1, 3).reshape(batch, heads, groups, 1, -1)
    ps = p[:, :, None] * scale  # [B, H, groups, M, t]
    out = torch.matmul(ps, planes)  # [k, B, H, groups, M, G/k]; channel j*k + i of the group
    off = -(ps * zero).sum(-1) if zp == "integer" else (p[:, :, None] * zero).sum(-1)
    out = out + off[..., None]
    return out.permute(1, 2, 4, 3, 5, 0).reshape(batch, heads, p.shape[2], -1)


def _weighted_values(layer, probs: torch.Tensor, fast: bool) -> torch.Tensor:
    s = layer.v
    _, slot_pos, su = _index_maps(layer, s, probs.device)
    batch, heads, m, total = probs.shape
    padded = torch.cat([probs, probs.new_zeros(batch, heads, m, 1)], dim=3)
    index = slot_pos[:, None, None, :].expand(batch, heads, m, slot_pos.shape[1])
    p = torch.gather(padded, 3, index)  # [B, H, M, su + width]; unused slots weigh 0
    out = torch.matmul(p[..., su:], s.buf.float())
    if s.ov_vals is not None:  # the weight of an overridden token goes to its full-precision copy
        rows, cols = policy.override_index(layer.pad, s.ov_rows, s.ov_pos, probs.device)
        w = probs[rows, :, :, cols]  # [P, H, M]
        out = out.index_add(0, rows, w[..., None] * s.ov_vals.float().to(probs.device)[:, :, None, :])
        p[rows, :, :, torch.tensor(s.ov_pos, device=probs.device)] = 0.0
    if su:
        form = _fast_form(layer, s, fast)
        for u0, u1 in _chunks(s, su):
            pc = p[..., u0 * s.unit : u1 * s.unit]
            if form is not None:
                out = out + _affine_weighted_values(pc, _block(s, u0, u1), form[1], layer.spec.bits)
            else:
                v = decode_slots(layer, s, u0, u1).float()
                used = slot_pos[:, u0 * s.unit : u1 * s.unit] < total
                if not bool(used.all()):  # unused slots may decode to anything (0 * inf would be NaN)
                    v = torch.where(used[:, None, :, None], v, 0.0)
                out = out + torch.matmul(pc, v)
    return out
