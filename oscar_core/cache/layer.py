"""One decoder layer's packed KV cache: :class:`PackedKVLayer`.

It applies the window/flush policy and the per-sequence alignment of :mod:`oscar_core.cache.policy`
to two :class:`~oscar_core.cache.storage.Stream` s (keys, values) whose encoded units live in the
layer's ``layout`` (:mod:`oscar_core.cache.storage`).

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

import torch
from transformers.cache_utils import CacheLayerMixin

from oscar_core.cache import policy
from oscar_core.cache.memory import packed_layer_bytes
from oscar_core.cache.storage import PackedLayout, ReferenceLayout, Stream
from oscar_core.methods.base import KEEP_FULL, Block, BlockContext, LayerState, MethodSpec


class PackedKVLayer(CacheLayerMixin):
    """One decoder layer's quantized KV cache (see the module docstring)."""

    is_sliding = False
    is_compileable = False
    is_croppable = True
    supports_early_init = False
    #: decode steps attend straight from the packed storage (:mod:`oscar_core.cache.blockwise`); False:
    #: always rebuild the padded timeline (:meth:`attention_inputs`, the original path and the tests' oracle)
    blockwise_decode = True
    #: where the encoded units live (the storage interface; the kernel layer has its own)
    layout: PackedLayout = ReferenceLayout()
    #: the stream type of the keys and values (the kernel layer's window lengths advance in O(1))
    stream_cls: type[Stream] = Stream

    def __init__(self, spec: MethodSpec, fake_quant: bool = False, state: LayerState | None = None):
        super().__init__()
        self.spec = spec
        self.fake_quant = fake_quant
        #: the method's per-layer state (``shared`` kept across :meth:`reset`, ``per_seq`` per prompt)
        self.state = state if state is not None else LayerState()
        self.state.per_seq = []
        #: the decoder layer's input hidden states of the pending prompt (``spec.observes_layer_input``)
        self.layer_input: torch.Tensor | None = None
        #: the pending prompt's queries (attention basis), when ``spec.observes_prompt_queries``
        self.prompt_queries: torch.Tensor | None = None
        key_unit, value_unit = policy.stream_units(spec)
        self.k = self.stream_cls(True, key_unit, spec.residual_length)
        self.v = self.stream_cls(False, value_unit, spec.residual_length)
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
            self.append_tokens(k_att, value_states)
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
        self.state.prompt_queries, self.prompt_queries = self.prompt_queries, None
        try:
            self.spec.observe_prompt(self.state, k, v, self.pad, layer_input)
        finally:
            self.state.prompt_queries = None  # seen once; never kept past the commit
        for stream, x in ((self.k, k), (self.v, v)):
            self._init_stream(stream, x)

    def _init_stream(self, s: Stream, x: torch.Tensor) -> None:
        batch, heads, total, dim = x.shape
        s.n_units, s.buf_len = [], []
        unit_batches, owners = [], []
        tails = []
        for b in range(batch):
            real = x[b, :, self.pad[b] :]
            n_q = policy.prompt_quantized(real.shape[1], s.unit, s.window)
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
            self.layout.store(self, s, torch.cat(unit_batches, dim=0), owners, capacity, batch)

    # -- decode ----------------------------------------------------------------------------
    def append_tokens(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Take decode-step tokens into the windows, flushing whole units as the policy says."""
        for t in range(k.shape[-2]):
            for stream, x in ((self.k, k), (self.v, v)):
                self._append_token(stream, x[:, :, t : t + 1])

    def _append_token(self, s: Stream, x: torch.Tensor) -> None:
        batch = x.shape[0]
        if max(s.buf_len) + 1 > s.buf.shape[2]:
            s.buf = torch.cat([s.buf, s.buf.new_zeros(batch, s.buf.shape[1], 1, s.buf.shape[3])], dim=2)
        if len(set(s.buf_len)) == 1:  # the usual case: a slice, no index tensor (no host-device copy)
            s.buf[:, :, s.buf_len[0]] = x[:, :, 0]
        else:
            idx = torch.tensor(s.buf_len, device=x.device)
            s.buf[torch.arange(batch, device=x.device), :, idx] = x[:, :, 0]
        s.buf_len = [n + 1 for n in s.buf_len]
        limit = policy.window_limit(s.unit, s.window)
        full = [b for b in range(batch) if s.buf_len[b] > limit]
        if full:
            self._flush(s, full)

    def _flush(self, s: Stream, rows: list[int]) -> None:
        """Quantize the oldest ``unit`` window tokens of the given sequences (always a whole unit)."""
        rows_t = torch.tensor(rows, device=s.buf.device)
        chunk = s.buf[rows_t, :, : s.unit]
        capacity = max(s.n_units[b] + 1 for b in rows)
        self.layout.store(self, s, chunk, [(b, s.n_units[b]) for b in rows], capacity, s.buf.shape[0])
        for b in rows:
            s.n_units[b] += 1
            s.buf_len[b] -= s.unit
        shifted = s.buf[rows_t, :, s.unit :]
        s.buf[rows_t, :, : shifted.shape[2]] = shifted
        s.buf = s.buf[:, :, : max(s.buf_len)].contiguous()

    # -- the method's encode/decode of units -------------------------------------------------
    def encode_units(self, s: Stream, x: torch.Tensor, ctx: BlockContext) -> Block:
        """The method's block of units ``x`` ``[N, H, unit, D]``; flagged tokens become overrides."""
        block = self.spec.encode_keys(x, ctx) if s.is_key else self.spec.encode_values(x, ctx)
        keep = block.pop(KEEP_FULL, None)
        if keep is not None and bool(keep.any()):
            self._add_overrides(s, x, keep, ctx)
        if self.fake_quant:  # research/test mode: same numerics, stored dequantized
            return {"dense": self.decode_block(s, block, ctx)}
        return block

    def decode_block(self, s: Stream, block: Block, ctx: BlockContext) -> torch.Tensor:
        if "dense" in block:
            return block["dense"]
        if s.is_key:
            return self.spec.decode_keys(block, self.dtype, ctx)
        return self.spec.decode_values(block, self.dtype, ctx)

    def _add_overrides(self, s: Stream, x: torch.Tensor, keep: torch.Tensor, ctx: BlockContext) -> None:
        """Keep the flagged tokens of units ``x`` ``[N, H, T, D]`` in full precision (see ``KEEP_FULL``)."""
        unit_idx, tok_idx = keep.nonzero(as_tuple=True)
        vals = x[unit_idx.to(x.device), :, tok_idx.to(x.device)].to(x.dtype)  # [P, H, D]
        s.ov_rows.extend(int(ctx.rows[i]) for i in unit_idx.tolist())
        s.ov_pos.extend(int(ctx.starts[i]) + t for i, t in zip(unit_idx.tolist(), tok_idx.tolist(), strict=True))
        s.ov_vals = vals if s.ov_vals is None else torch.cat([s.ov_vals, vals], dim=0)

    # -- the padded timeline -------------------------------------------------------------------
    def _dense_quantized(self, s: Stream) -> torch.Tensor | None:
        """All stored units decoded: ``[B, H, capacity*unit, D]`` (unused slots decode to garbage)."""
        return self.layout.dense(self, s)

    def _timeline(self, s: Stream) -> torch.Tensor:
        """The stream's K or V on the padded timeline ``[B, H, total_len, D]`` (pads are zeros)."""
        quant = self._dense_quantized(s)
        parts = ([quant.to(s.buf.dtype)] if quant is not None else []) + [s.buf]
        src = torch.cat(parts, dim=2)
        q_width = quant.shape[2] if quant is not None else 0
        batch, heads, _, dim = s.buf.shape
        index, valid = policy.timeline_index(self.pad, [s.quantized_tokens(b) for b in range(batch)],
                                             [s.length(b) for b in range(batch)], q_width, self.total_len)
        index, valid = index.to(src.device), valid.to(src.device)
        out = torch.gather(src, 2, index[:, None, :, None].expand(batch, heads, self.total_len, dim))
        out = torch.where(valid[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        if s.ov_vals is not None:  # full-precision overrides replace their dequantized tokens
            rows, cols = policy.override_index(self.pad, s.ov_rows, s.ov_pos, out.device)
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
            policy.check_crop(s.buf_len, remove)
        for s in (self.k, self.v):
            s.buf_len = [n - remove for n in s.buf_len]
            s.buf = s.buf[:, :, : max(s.buf_len)].contiguous()
        self.total_len -= remove

    def select_batch(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (reordered, possibly repeated), method state included."""
        idx = index.tolist()
        if self._pending is not None:
            self._pending = tuple(t.index_select(0, index.to(t.device)) for t in self._pending)
        self.pad = [self.pad[i] for i in idx] if self.pad else self.pad
        for s in (self.k, self.v):
            s.select(index)
        if self.state.per_seq:  # deep copies: repeated rows (beams) must not share mutable state
            self.state.per_seq = [copy.deepcopy(self.state.per_seq[i]) for i in idx]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.total_len:
            self.select_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.total_len:
            self.select_batch(torch.as_tensor(indices).flatten())

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.total_len:
            self.select_batch(torch.arange(self.batch_size_now()).repeat_interleave(repeats))

    def batch_size_now(self) -> int:
        if self._pending is not None:
            return self._pending[0].shape[0]
        return len(self.pad)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held, per component (allocated capacity, not only the used part)."""
        return packed_layer_bytes(self.k, self.v, self._pending)
