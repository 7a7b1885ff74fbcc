"""transformers ``Cache`` backends that really store packed low-bit KV codes.

Window and flush policy (METHODS.md, shared by all methods):

* The prompt attends over its own unquantized K/V. Afterwards ``floor(T/R)*R`` prompt tokens are
  quantized and ``T mod R`` stay in the full-precision window (for KIVI's sliding value window, the
  last ``min(T, R)`` values stay).
* While decoding each new token enters the window; when the window would exceed ``R`` tokens its
  oldest ``R`` tokens are quantized as one block ("block flush"), so the step that fills the window
  attends all ``R`` in full precision, as official KIVI's keys. The sliding value window ("token
  flush") attends the last ``R + 1`` values at each decode step and quantizes its oldest one when the
  next token arrives (official KIVI quantizes it right after the step's attention: the same numbers).
  Every token is quantized exactly once.

Per-sequence alignment. With left padding, each sequence's tokens are stored left-aligned from its
first real token, so its quantization groups are exactly those of the sequence run alone and padded
positions never enter a group. The padded timeline transformers expects is rebuilt when K/V are
handed to attention (pads as zeros, masked anyway). The padding is read from the attention mask the
first time the layer attends (see :mod:`oscar_core.attention`).

Storage per layer and stream (keys, values): encoded units ``[batch, capacity, ...]`` (packed codes,
fp16 scales/zeros, token norms; or, with ``fake_quant=True``, the dequantized tensors in the model's
dtype) plus the full-precision window ``[batch, heads, <=R, head_dim]``.

Method hooks (generic, see :mod:`oscar_core.methods.base`): each layer holds a
:class:`~oscar_core.methods.base.LayerState` (shared part from ``spec.init_layer_states``, per-sequence
part reordered with the batch); the method sees the prompt once at commit (``spec.observe_prompt``,
with the decoder layer's input hidden states when ``spec.observes_layer_input``); units are encoded
and decoded with a :class:`~oscar_core.methods.base.BlockContext` (sequence rows and token positions);
tokens an encoder flags with ``KEEP_FULL`` are kept per sequence as full-precision *overrides* that
replace the dequantized token at their timeline position.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicSlidingWindowLayer

from oscar_core.methods import Block, MethodConfigError, MethodSpec, get_method
from oscar_core.methods.base import KEEP_FULL, BlockContext, LayerState


@dataclass
class _Stream:
    """One of K or V in one layer: encoded units plus a left-aligned full-precision window."""

    is_key: bool
    unit: int  # tokens per encoded unit
    window: int  # R
    units: dict[str, torch.Tensor] = field(default_factory=dict)
    n_units: list[int] = field(default_factory=list)
    buf: torch.Tensor | None = None  # [B, H, width, D], width = max(buf_len)
    buf_len: list[int] = field(default_factory=list)
    tokens_quantized: int = 0  # total over the batch, for tests of the "exactly once" rule
    # Full-precision overrides: (sequence, position within the sequence) and the token [P, H, D].
    ov_rows: list[int] = field(default_factory=list)
    ov_pos: list[int] = field(default_factory=list)
    ov_vals: torch.Tensor | None = None

    def quantized_tokens(self, b: int) -> int:
        return self.n_units[b] * self.unit

    def length(self, b: int) -> int:
        return self.quantized_tokens(b) + self.buf_len[b]


class PackedKVLayer(CacheLayerMixin):
    """One decoder layer's quantized KV cache (see the module docstring)."""

    is_sliding = False
    is_compileable = False
    is_croppable = True
    supports_early_init = False
    #: decode steps attend straight from the packed storage (:mod:`oscar_core.blockwise`); False: always
    #: rebuild the padded timeline (:meth:`attention_inputs`, the original path and the tests' oracle)
    blockwise_decode = True

    def __init__(self, spec: MethodSpec, fake_quant: bool = False, state: LayerState | None = None):
        super().__init__()
        self.spec = spec
        self.fake_quant = fake_quant
        #: the method's per-layer state (``shared`` kept across :meth:`reset`, ``per_seq`` per prompt)
        self.state = state if state is not None else LayerState()
        self.state.per_seq = []
        #: the decoder layer's input hidden states of the pending prompt (``spec.observes_layer_input``)
        self.layer_input: torch.Tensor | None = None
        r = spec.residual_length
        key_unit = spec.block_tokens
        value_unit = 1 if (spec.value_flush == "token" or r == 0) else r
        self.k = _Stream(True, key_unit, r)
        self.v = _Stream(False, value_unit, r)
        self.total_len = 0  # length of the padded timeline transformers sees
        self.pad: list[int] = []
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dtype: torch.dtype | None = None

    # -- CacheLayerMixin -------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.total_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.total_len + query_length, 0

    def get_max_length(self) -> int:
        return -1

    @property
    def batch_size(self) -> int:
        return len(self.pad) if self.pad else -1

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Take the new tokens (post-RoPE keys, values) and return them in the attention basis.

        Only the new tokens are returned; :meth:`attention_inputs` (called by the registered attention
        function) assembles the whole K/V. The prompt is held until the attention function has told
        us the padding, then quantized (:meth:`commit_prompt`).
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._pending is not None:  # the attention function never ran: assume no padding
            self.commit_prompt([0] * self._pending[0].shape[0])
        k_att = self.spec.keys_to_attention(key_states)
        if self.total_len == 0:
            self._pending = (k_att, value_states)
        else:
            self._append(k_att, value_states)
        self.total_len += key_states.shape[-2]
        return k_att, value_states

    # -- prompt ----------------------------------------------------------------------------
    @property
    def has_pending_prompt(self) -> bool:
        return self._pending is not None

    def commit_prompt(self, pad: list[int]) -> None:
        """Quantize the held prompt; ``pad[b]`` = left-padding tokens of sequence ``b``."""
        assert self._pending is not None
        k, v = self._pending
        self._pending = None
        self.pad = list(pad)
        self.state.per_seq = [{} for _ in range(k.shape[0])]
        layer_input, self.layer_input = self.layer_input, None
        self.spec.observe_prompt(self.state, k, v, self.pad, layer_input)
        for stream, x in ((self.k, k), (self.v, v)):
            self._init_stream(stream, x)

    def _prompt_quantized(self, stream: _Stream, length: int) -> int:
        r = stream.window
        if r == 0:
            return length
        if stream.unit == r:  # block flush
            return (length // r) * r
        return max(length - r, 0)  # sliding window

    def _init_stream(self, s: _Stream, x: torch.Tensor) -> None:
        batch, heads, total, dim = x.shape
        s.n_units, s.buf_len = [], []
        unit_batches, owners = [], []
        tails = []
        for b in range(batch):
            real = x[b, :, self.pad[b] :]
            n_q = self._prompt_quantized(s, real.shape[1])
            n_units = n_q // s.unit
            if n_units:
                unit_batches.append(real[:, :n_q].reshape(heads, n_units, s.unit, dim).transpose(0, 1))
                owners.extend((b, j) for j in range(n_units))
            s.n_units.append(n_units)
            tails.append(real[:, n_q:])
            s.buf_len.append(tails[-1].shape[1])
        width = max(s.buf_len)
        s.buf = x.new_zeros(batch, heads, width, dim)
        for b, tail in enumerate(tails):
            s.buf[b, :, : tail.shape[1]] = tail
        capacity = max(s.n_units)
        s.units = {}
        if unit_batches:
            self._store_units(s, torch.cat(unit_batches, dim=0), owners, capacity, batch)

    # -- decode ----------------------------------------------------------------------------
    def _append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        for t in range(k.shape[-2]):
            for stream, x in ((self.k, k), (self.v, v)):
                self._append_token(stream, x[:, :, t : t + 1])

    def _append_token(self, s: _Stream, x: torch.Tensor) -> None:
        batch = x.shape[0]
        if max(s.buf_len) + 1 > s.buf.shape[2]:
            s.buf = torch.cat([s.buf, s.buf.new_zeros(batch, s.buf.shape[1], 1, s.buf.shape[3])], dim=2)
        if len(set(s.buf_len)) == 1:  # the usual case: a slice, no index tensor (no host-device copy)
            s.buf[:, :, s.buf_len[0]] = x[:, :, 0]
        else:
            idx = torch.tensor(s.buf_len, device=x.device)
            s.buf[torch.arange(batch, device=x.device), :, idx] = x[:, :, 0]
        s.buf_len = [n + 1 for n in s.buf_len]
        # A sliding (token-flush) window attends R + 1 values, as official KIVI does: it quantizes the
        # oldest value *after* the step's attention; here that happens at the next append, before
        # anything could attend it, which is numerically the same.
        limit = s.window + 1 if (s.unit == 1 and s.window > 0) else s.window
        full = [b for b in range(batch) if s.buf_len[b] > limit]
        if full:
            self._flush(s, full)

    def _flush(self, s: _Stream, rows: list[int]) -> None:
        """Quantize the oldest ``unit`` window tokens of the given sequences (always a whole unit)."""
        rows_t = torch.tensor(rows, device=s.buf.device)
        chunk = s.buf[rows_t, :, : s.unit]
        capacity = max(s.n_units[b] + 1 for b in rows)
        self._store_units(s, chunk, [(b, s.n_units[b]) for b in rows], capacity, s.buf.shape[0])
        for b in rows:
            s.n_units[b] += 1
            s.buf_len[b] -= s.unit
        shifted = s.buf[rows_t, :, s.unit :]
        s.buf[rows_t, :, : shifted.shape[2]] = shifted
        s.buf = s.buf[:, :, : max(s.buf_len)].contiguous()

    # -- storage ---------------------------------------------------------------------------
    def _encode(self, s: _Stream, x: torch.Tensor, ctx: BlockContext) -> Block:
        block = self.spec.encode_keys_at(x, ctx) if s.is_key else self.spec.encode_values_at(x, ctx)
        keep = block.pop(KEEP_FULL, None)
        if keep is not None and bool(keep.any()):
            self._add_overrides(s, x, keep, ctx)
        if self.fake_quant:  # research/test mode: same numerics, stored dequantized
            return {"dense": self._decode_block(s, block, ctx)}
        return block

    def _decode_block(self, s: _Stream, block: Block, ctx: BlockContext) -> torch.Tensor:
        if "dense" in block:
            return block["dense"]
        if s.is_key:
            return self.spec.decode_keys_at(block, self.dtype, ctx)
        return self.spec.decode_values_at(block, self.dtype, ctx)

    def _add_overrides(self, s: _Stream, x: torch.Tensor, keep: torch.Tensor, ctx: BlockContext) -> None:
        """Keep the flagged tokens of units ``x`` ``[N, H, T, D]`` in full precision (see ``KEEP_FULL``)."""
        unit_idx, tok_idx = keep.nonzero(as_tuple=True)
        vals = x[unit_idx.to(x.device), :, tok_idx.to(x.device)].to(x.dtype)  # [P, H, D]
        s.ov_rows.extend(int(ctx.rows[i]) for i in unit_idx.tolist())
        s.ov_pos.extend(int(ctx.starts[i]) + t for i, t in zip(unit_idx.tolist(), tok_idx.tolist(), strict=True))
        s.ov_vals = vals if s.ov_vals is None else torch.cat([s.ov_vals, vals], dim=0)

    def _store_units(
        self, s: _Stream, x: torch.Tensor, owners: list[tuple[int, int]], capacity: int, batch: int
    ) -> None:
        ctx = BlockContext(self.state, torch.tensor([b for b, _ in owners], dtype=torch.long),
                           torch.tensor([j * s.unit for _, j in owners], dtype=torch.long))
        block = self._encode(s, x, ctx)
        s.tokens_quantized += x.shape[0] * x.shape[2]
        for name, t in block.items():
            store = s.units.get(name)
            if store is None:
                store = t.new_zeros(batch, capacity, *t.shape[1:])
            elif store.shape[1] < capacity:  # grow geometrically: amortised O(1) per unit
                grow = max(capacity, 2 * store.shape[1]) - store.shape[1]
                store = torch.cat([store, store.new_zeros(batch, grow, *store.shape[2:])], dim=1)
            rows = torch.tensor([b for b, _ in owners], device=t.device)
            slots = torch.tensor([j for _, j in owners], device=t.device)
            store[rows, slots] = t
            s.units[name] = store

    def _dense_quantized(self, s: _Stream) -> torch.Tensor | None:
        """All stored units decoded: ``[B, H, capacity*unit, D]`` (unused slots decode to garbage)."""
        if not s.units:
            return None
        batch, capacity = next(iter(s.units.values())).shape[:2]
        flat = {name: t.reshape(batch * capacity, *t.shape[2:]) for name, t in s.units.items()}
        ctx = BlockContext(self.state, torch.arange(batch).repeat_interleave(capacity),
                           torch.arange(capacity).repeat(batch) * s.unit)
        x = self._decode_block(s, flat, ctx)  # [B*cap, H, unit, D]
        heads, dim = x.shape[1], x.shape[3]
        return x.reshape(batch, capacity, heads, s.unit, dim).permute(0, 2, 1, 3, 4).reshape(
            batch, heads, capacity * s.unit, dim
        )

    def _timeline(self, s: _Stream) -> torch.Tensor:
        """The stream's K or V on the padded timeline ``[B, H, total_len, D]`` (pads are zeros)."""
        quant = self._dense_quantized(s)
        parts = ([quant.to(s.buf.dtype)] if quant is not None else []) + [s.buf]
        src = torch.cat(parts, dim=2)
        q_width = quant.shape[2] if quant is not None else 0
        batch, heads, _, dim = s.buf.shape
        index = torch.zeros(batch, self.total_len, dtype=torch.long)
        valid = torch.zeros(batch, self.total_len, dtype=torch.bool)
        for b in range(batch):
            length, n_q = s.length(b), s.quantized_tokens(b)
            if length != self.total_len - self.pad[b]:
                raise RuntimeError(f"internal cache inconsistency: sequence {b} holds {length} tokens")
            i = torch.arange(length)
            index[b, self.pad[b] :] = torch.where(i < n_q, i, q_width + i - n_q)
            valid[b, self.pad[b] :] = True
        index, valid = index.to(src.device), valid.to(src.device)
        out = torch.gather(src, 2, index[:, None, :, None].expand(batch, heads, self.total_len, dim))
        out = torch.where(valid[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        if s.ov_vals is not None:  # full-precision overrides replace their dequantized tokens
            rows = torch.tensor(s.ov_rows, device=out.device)
            cols = torch.tensor([self.pad[b] + p for b, p in zip(s.ov_rows, s.ov_pos, strict=True)], device=out.device)
            out[rows, :, cols] = s.ov_vals.to(device=out.device, dtype=out.dtype)
        return out

    def attention_inputs(
        self, key: torch.Tensor, value: torch.Tensor, pad: list[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V for this step's attention, in the attention basis, on the padded timeline.

        ``key``/``value`` are what :meth:`update` returned. At the prompt they are attended in full
        precision (unless ``quantized_prefill``), after the prompt has been quantized.
        """
        if self._pending is not None:
            self.commit_prompt(pad if pad is not None else [0] * key.shape[0])
            if not self.spec.quantized_prefill:
                return key, value
        return self._timeline(self.k), self._timeline(self.v)

    # -- transformers cache operations -----------------------------------------------------
    def reset(self) -> None:
        self.__init__(self.spec, self.fake_quant, LayerState(self.state.layer_idx, self.state.shared))

    def crop(self, max_length: int) -> None:
        """Remove tokens from the end (negative: how many; non-negative: the length to keep)."""
        if self._pending is not None:
            raise RuntimeError("crop() before the prompt was attended is not supported")
        remove = -max_length if max_length < 0 else self.total_len - max_length
        if remove <= 0 or self.total_len == 0:
            return
        for s in (self.k, self.v):
            if any(n < remove for n in s.buf_len):
                raise ValueError(
                    f"cannot crop {remove} tokens: only {min(s.buf_len)} are in the full-precision window and "
                    "quantized tokens cannot be un-quantized; crop at most the window"
                )
        for s in (self.k, self.v):
            s.buf_len = [n - remove for n in s.buf_len]
            s.buf = s.buf[:, :, : max(s.buf_len)].contiguous()
        self.total_len -= remove

    def _select_batch(self, index: torch.Tensor) -> None:
        idx = index.tolist()
        if self._pending is not None:
            self._pending = tuple(t.index_select(0, index.to(t.device)) for t in self._pending)
        self.pad = [self.pad[i] for i in idx] if self.pad else self.pad
        for s in (self.k, self.v):
            if s.buf is not None:
                s.buf = s.buf.index_select(0, index.to(s.buf.device))
            s.units = {n: t.index_select(0, index.to(t.device)) for n, t in s.units.items()}
            s.n_units = [s.n_units[i] for i in idx] if s.n_units else s.n_units
            s.buf_len = [s.buf_len[i] for i in idx] if s.buf_len else s.buf_len
            if s.ov_vals is not None:
                sel = [(new, j) for new, old in enumerate(idx) for j, r in enumerate(s.ov_rows) if r == old]
                s.ov_pos = [s.ov_pos[j] for _, j in sel]
                s.ov_rows = [new for new, _ in sel]
                keep = torch.tensor([j for _, j in sel], dtype=torch.long, device=s.ov_vals.device)
                s.ov_vals = s.ov_vals.index_select(0, keep) if sel else None
        if self.state.per_seq:  # deep copies: repeated rows (beams) must not share mutable state
            self.state.per_seq = [copy.deepcopy(self.state.per_seq[i]) for i in idx]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.total_len:
            self._select_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.total_len:
            self._select_batch(torch.as_tensor(indices).flatten())

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.total_len:
            self._select_batch(torch.arange(self.batch_size_now()).repeat_interleave(repeats))

    def batch_size_now(self) -> int:
        if self._pending is not None:
            return self._pending[0].shape[0]
        return len(self.pad)

    # -- accounting ------------------------------------------------------------------------
    def memory_bytes(self) -> dict[str, int]:
        """Bytes held, per component (allocated capacity, not only the used part)."""
        out: dict[str, int] = {}
        for tag, s in (("k", self.k), ("v", self.v)):
            for name, t in s.units.items():
                out[f"{tag}_{name}"] = t.numel() * t.element_size()
            out[f"{tag}_window"] = 0 if s.buf is None else s.buf.numel() * s.buf.element_size()
            if s.ov_vals is not None:
                out[f"{tag}_overrides"] = s.ov_vals.numel() * s.ov_vals.element_size()
        if self._pending is not None:
            out["pending_prompt"] = sum(t.numel() * t.element_size() for t in self._pending)
        return out


#: ``layer_policy`` entries: what one layer's cache stores.
QUANTIZED, WINDOW, FULL_PRECISION = "quantized", "full_precision_window", "full_precision"


def _dense_layer_bytes(layer) -> tuple[int, int, int]:
    """(bytes held, BF16-equivalent bytes, tokens held) of a transformers layer with dense K/V."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not getattr(layer, "is_initialized", False) or keys is None or keys.numel() == 0:
        return 0, 0, 0
    held = keys.numel() * keys.element_size() + values.numel() * values.element_size()
    return held, 2 * (keys.numel() + values.numel()), keys.shape[-2]


def _per_kind(kinds: list[str], policies: list[str], sizes: list[tuple[int, int, int]]) -> dict[str, dict]:
    """memory_report's ``layers``: per layer kind, its storage policy, bytes, BF16 bytes, tokens held."""
    out: dict[str, dict] = {}
    for kind, policy, (held, bf16, tokens) in zip(kinds, policies, sizes, strict=True):
        entry = out.setdefault(kind, {"layers": 0, "storage": policy, "bytes": 0, "bf16_equivalent_bytes": 0,
                                      "tokens": 0})
        entry["layers"] += 1
        entry["bytes"] += held
        entry["bf16_equivalent_bytes"] += bf16
        entry["tokens"] = max(entry["tokens"], tokens)
    return out


def _report(method: str, components: dict[str, int], bf16: int, seq_len: int, layers: dict) -> dict[str, object]:
    held = sum(components.values())
    return {"method": method, "bytes": held, "components": components, "bf16_equivalent_bytes": bf16,
            "compression": (bf16 / held) if held else None, "seq_len": seq_len, "layers": layers}


def _check_packed_attention(module: torch.nn.Module, layer: PackedKVLayer, layer_idx: int,
                            decode_handoff: bool) -> None:
    """Raise unless this layer's attention runs through the packed-KV attention function.

    The history lives only in the cache; any other attention function attends just the K/V that
    ``update`` returns (the new tokens), silently. Two signs: the attention implementation the module
    will dispatch on is not ``oscar_kv`` (e.g. ``model.config._attn_implementation`` changed after
    ``make_cache``), or the previous hand-off to this module was never taken (an attention function
    that is not ours ran in between) while the prompt is still uncommitted or it was a decode step's.
    """
    from oscar_core.attention import ATTN_NAME

    impl = getattr(getattr(module, "config", None), "_attn_implementation", ATTN_NAME)
    stale = module.__dict__.get("_oscar_kv_layer") is layer and (layer.has_pending_prompt or decode_handoff)
    if impl == ATTN_NAME and not stale:
        return
    why = (f"its attention implementation is {impl!r}, not {ATTN_NAME!r}" if impl != ATTN_NAME else
           "the previous step's keys/values were never taken by the packed-KV attention function")
    raise RuntimeError(
        f"oscar_core: layer {layer_idx} would attend without its packed KV history: {why}. The attention "
        "implementation was probably changed after make_cache (e.g. model.config._attn_implementation); "
        "another attention function sees only the new tokens. Call oscar_core.make_cache(model, ...) again "
        "after changing it (it sets the implementation back) and start the generation over."
    )


class QuantizedKVCache(Cache):
    """A transformers ``Cache`` of :class:`PackedKVLayer` for one method spec, under a per-layer policy.

    ``layer_types`` (``oscar_core.model.FULL``/``SLIDING`` per layer; default all full): full-attention
    layers are ``layer_cls`` (the packed layer, or the CUDA-kernel one). Sliding layers are transformers'
    own ``DynamicSlidingWindowLayer`` (bounded, full precision, the model's dtype), or with
    ``quantize_sliding=True`` reference packed layers (see :func:`make_cache`). ``layer_policy`` records
    what each layer stores (:data:`QUANTIZED` or :data:`WINDOW`).
    """

    def __init__(self, spec: MethodSpec, num_layers: int, attention_modules: dict[int, torch.nn.Module],
                 fake_quant: bool = False, head_shape: tuple[int, int] | None = None,
                 layer_states: list[dict] | None = None, layer_cls: type[PackedKVLayer] | None = None,
                 *, layer_types: list[str] | None = None, sliding_window: int | None = None,
                 quantize_sliding: bool = False, **layer_kwargs):
        from oscar_core.model import FULL, SLIDING

        shared = layer_states if layer_states is not None else [{} for _ in range(num_layers)]
        cls = layer_cls or PackedKVLayer
        kinds = list(layer_types) if layer_types is not None else [FULL] * num_layers
        if len(kinds) != num_layers:
            raise ValueError(f"layer_types has {len(kinds)} entries for {num_layers} layers")
        if SLIDING in kinds and not sliding_window:
            raise ValueError("sliding layers need sliding_window (the model's attention window)")
        layers: list[CacheLayerMixin] = []
        for i, kind in enumerate(kinds):
            if kind == SLIDING and not quantize_sliding:
                layers.append(DynamicSlidingWindowLayer(sliding_window=sliding_window))
            elif kind == SLIDING:  # the reference layer: the window lives in the mask, which the kernel ignores
                layers.append(PackedKVLayer(spec, fake_quant, LayerState(i, shared[i])))
            else:
                layers.append(cls(spec, fake_quant, LayerState(i, shared[i]), **layer_kwargs))
        super().__init__(layers=layers)
        self.spec = spec
        self.fake_quant = fake_quant
        self._attention_modules = attention_modules
        self._head_shape = head_shape
        #: per layer: its kind, and what its cache stores (provenance)
        self.layer_types = kinds
        self.layer_policy = [QUANTIZED if isinstance(layer, PackedKVLayer) else WINDOW for layer in layers]
        self.sliding_window = sliding_window
        self.quantize_sliding = quantize_sliding
        self._decode_handoffs: set[int] = set()  # layers handed to attention for a step after the prompt

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        module = self._attention_modules.get(layer_idx)
        layer = self.layers[layer_idx]
        if module is not None and isinstance(layer, PackedKVLayer):
            _check_packed_attention(module, layer, layer_idx, layer_idx in self._decode_handoffs)
            # a hand-off after the prompt must be taken by attention before the next update; the prompt's
            # may be committed without attention (filling a cache through update + commit_prompt)
            if layer.total_len:
                self._decode_handoffs.add(layer_idx)
            else:
                self._decode_handoffs.discard(layer_idx)
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if module is not None:
            # Captured by the pre-hook of oscar_core.model when spec.observes_layer_input.
            hidden = module.__dict__.pop("_oscar_layer_input", None)
            if not isinstance(layer, PackedKVLayer):  # a transformers layer: plain SDPA with its own mask
                module.__dict__.pop("_oscar_kv_layer", None)
                return keys, values
            if hidden is not None and layer.has_pending_prompt:
                layer.layer_input = hidden
            # The registered attention function picks this up for the call that follows.
            module._oscar_kv_layer = layer
        return keys, values

    def memory_report(self) -> dict[str, object]:
        """Bytes actually held, per component and per layer kind, and the equivalent BF16 cache's bytes.

        Held bytes are the tensors' real sizes (the full-precision windows in the model's dtype). The BF16
        equivalent is what transformers' default cache would hold for the same tokens at 2 bytes per
        element: every real token of a full-attention layer, the last ``W - 1`` of a sliding layer (a
        full-precision window layer: its own tensors, padding included, at 2 bytes).
        """
        from oscar_core.model import SLIDING, held_tokens

        components: dict[str, int] = {}
        sizes = []
        for kind, layer in zip(self.layer_types, self.layers, strict=True):
            if not isinstance(layer, PackedKVLayer):
                size = _dense_layer_bytes(layer)
                components["sliding_window_kv"] = components.get("sliding_window_kv", 0) + size[0]
                sizes.append(size)
                continue
            held = 0
            for name, n in layer.memory_bytes().items():
                components[name] = components.get(name, 0) + n
                held += n
            bf16 = tokens = 0
            if layer.pad and self._head_shape is not None:
                heads, dim = self._head_shape
                lengths = [layer.total_len - p for p in layer.pad]
                window = self.sliding_window if kind == SLIDING else None
                bf16 = sum(held_tokens(kind, n, window, False) for n in lengths) * heads * dim * 2 * 2
                tokens = max(lengths)
            sizes.append((held, bf16, tokens))
        seq_len = max((layer.get_seq_length() for layer in self.layers), default=0)
        return _report(self.spec.name, components, sum(s[1] for s in sizes), seq_len,
                       _per_kind(self.layer_types, self.layer_policy, sizes))


class FullPrecisionCache(DynamicCache):
    """transformers' own dynamic cache (the ``fp16`` method), plus :meth:`memory_report`.

    Sliding layers are transformers' bounded windows, as in the default cache."""

    spec = get_method("fp16")

    @property
    def layer_types(self) -> list[str]:
        from oscar_core.model import FULL, SLIDING

        return [SLIDING if getattr(layer, "is_sliding", False) else FULL for layer in self.layers]

    @property
    def layer_policy(self) -> list[str]:
        return [WINDOW if getattr(layer, "is_sliding", False) else FULL_PRECISION for layer in self.layers]

    def memory_report(self) -> dict[str, object]:
        """As :meth:`QuantizedKVCache.memory_report`: real bytes in the model's dtype, BF16 at 2 bytes."""
        sizes = [_dense_layer_bytes(layer) for layer in self.layers]
        return _report("fp16", {"kv": sum(s[0] for s in sizes)}, sum(s[1] for s in sizes), self.get_seq_length(),
                       _per_kind(self.layer_types, self.layer_policy, sizes))


def make_cache(model: torch.nn.Module, method: str | MethodSpec = "oscar", fake_quant: bool = False,
               kernels: str = "auto", quantize_sliding: bool = False, **overrides):
    """Prepare ``model`` for ``method`` (once; idempotent) and return a fresh transformers Cache.

    ``fake_quant=True`` stores dequantized tensors instead of packed codes (same numerics; for
    research and checks). Overrides are method parameters, e.g. ``residual_length=64``.

    ``kernels``: ``"auto"`` stores OScaR INT2 in the CUDA decode kernel's layout and attends through
    the kernel when the model is on a GPU and the extension builds (else the reference path, with a
    one-line notice why); ``"on"`` requires that (error otherwise); ``"fallback"`` uses the kernel
    layout with the kernels' PyTorch fallbacks (any device; for checks); ``"off"`` the reference path.
    The kernels serve full-attention layers only (they apply no window mask).

    Hybrid models (sliding-window and full-attention layers, e.g. Gemma 2/3): by default the sliding
    layers keep transformers' own ``DynamicSlidingWindowLayer`` (full precision, the model's dtype, the
    last ``W - 1`` tokens: memory bounded) and only the full-attention layers are quantized.
    ``quantize_sliding=True`` quantizes the sliding layers too, with the reference packed layer: it
    keeps *every* token (quantized, never evicted), and transformers' sliding mask, applied by SDPA over
    that whole timeline, restricts attention to the window. Memory then grows with the context like a
    full layer (at long contexts more than the bounded BF16 window); it measures the quantization error
    of the sliding layers. ``cache.layer_policy`` records what each layer stores. A model whose layers
    all slide needs ``quantize_sliding=True`` (else nothing would be quantized).
    """
    from oscar_core.model import FULL, inspect_model, prepare_model

    if kernels not in ("auto", "on", "off", "fallback"):
        raise ValueError(f"kernels must be 'auto', 'on', 'off' or 'fallback', got {kernels!r}")
    spec = get_method(method, **overrides)
    shape = inspect_model(model)  # model-dependent defaults (RotateKV's head group) made concrete: cache.spec
    spec = spec.resolve_for_model(shape.num_kv_heads, shape.head_dim)
    info = prepare_model(model, spec)
    if not spec.quantizes:
        return FullPrecisionCache(config=info.text_config)
    if FULL not in info.layer_types and not quantize_sliding:
        raise MethodConfigError(
            f"{spec.name}: every layer of {type(model).__name__} uses sliding-window attention, whose windows stay "
            "in full precision by default; pass quantize_sliding=True to quantize them"
        )
    layer_cls, layer_kwargs = None, {}
    if kernels != "off" and not fake_quant:
        from oscar_core.kernel_cache import kernel_layer_for

        # A model split over devices (device_map): the kernel layout when any attention layer is on a GPU;
        # each layer lives on its key_states' device and runs the kernel there (a CPU layer falls back).
        devices = [p.device for m in info.attention_modules.values() for p in m.parameters(recurse=True)]
        device = next((d for d in devices if d.type == "cuda"), next(model.parameters()).device)
        layer_cls, layer_kwargs = kernel_layer_for(spec, info.head_dim, device, kernels)
    return QuantizedKVCache(spec, info.num_layers, info.attention_modules, fake_quant,
                            (info.num_kv_heads, info.head_dim), spec.init_layer_states(model, info),
                            layer_cls, layer_types=info.layer_types, sliding_window=info.sliding_window,
                            quantize_sliding=quantize_sliding, **layer_kwargs)


__all__ = ["FullPrecisionCache", "PackedKVLayer", "QuantizedKVCache", "make_cache"]


def prepare_model(model: torch.nn.Module, method: str | MethodSpec = "oscar", **overrides):
    """See :func:`oscar_core.model.prepare_model`."""
    from oscar_core.model import prepare_model as _prepare

    return _prepare(model, get_method(method, **overrides))
