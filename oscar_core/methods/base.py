"""What every KV-cache method is: a frozen spec with the paper defaults, plus its numerics.

A method turns a *block* of keys/values (``[N, H, T, D]``, post-RoPE keys, values as the model's
``v_proj`` produces them) into an encoded block (a dict of tensors, batch-first) and back, through one
API: ``encode_keys/decode_keys/encode_values/decode_values`` with an optional :class:`BlockContext`.
The cache (:mod:`oscar_core.cache`) decides *when* blocks are encoded; the method decides *how*.

Bases. Keys live in three bases: the model's (post-RoPE), the *attention basis* (what the cache
returns to attention, after :meth:`keys_to_attention`; the query goes through
:meth:`query_to_attention` so that scores are unchanged), and whatever the method quantizes in.
Values live in the basis the (possibly rotated) ``v_proj`` produces; :meth:`values_to_cache`
emulates that rotation for the reference round trip.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from oscar_core.hadamard import check_hadamard_size, hadamard_transform
from oscar_core.quant import PackedGroups, ZeroPoint, codes_per_byte, dequantize, quantize

Block = dict[str, torch.Tensor]

#: Reserved entry of a block returned by ``encode_*`` with a context: bool ``[N, T]``, True for tokens the cache must
#: keep in full precision. The cache removes it from the block, stores those tokens (the encode input,
#: i.e. the stream's own basis) as per-sequence *overrides* at their timeline positions, and uses them
#: instead of the dequantized token whenever the timeline is rebuilt (OTT's pools, RotateKV's sinks).
KEEP_FULL = "keep_full"


class MethodConfigError(ValueError):
    """A method parameter (or a model it is applied to) that the method cannot accept."""


class MethodParameterTypeError(MethodConfigError, TypeError):
    """A method parameter of the wrong type (``bits=2.0``, ``bits=True``, ``rotation="maybe"``)."""


def check_clip_ratio(method: str, clip_ratio: float) -> None:
    """A clip ratio scales each group's range down (QuaRot, RotateKV): (0, 1], never up."""
    if not 0.0 < clip_ratio <= 1.0:
        raise MethodConfigError(f"{method}: clip_ratio must be in (0, 1], got {clip_ratio}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a spec class (``from __future__ import annotations`` makes them strings).

    An annotation that cannot be resolved (a third-party spec naming a type its module does not
    import) is left unchecked (``Any``) instead of making the class unusable.
    """
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - resolve one by one below
        pass
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        namespace = dict(vars(sys.modules[klass.__module__])) if klass.__module__ in sys.modules else {}
        for name, ann in inspect.get_annotations(klass).items():
            if isinstance(ann, str):
                try:
                    ann = eval(ann, namespace, dict(vars(klass)))  # noqa: S307 - the class's own annotation
                except Exception:  # noqa: BLE001
                    ann = Any
            hints[name] = ann
    return hints


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        choices = [repr(a) for a in typing.get_args(hint)]
        return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    return {bool: "a bool (true or false)", int: "an int", float: "a finite number", str: "a string",
            type(None): "None"}.get(hint, getattr(hint, "__name__", str(hint)))


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether ``value`` is of the annotated type, and the value to store (an int given for a float
    field becomes that float, so equal configurations serialize equally). bool is not an int here."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint)), value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, conformed = _conform(value, arg)
            if ok:
                return True, conformed
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, (int(value) if ok else value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False, value
        return True, float(value)
    if origin is not None:  # a parametrized container: its kind only
        return isinstance(value, origin), value
    return (isinstance(value, hint) if isinstance(hint, type) else True), value


@dataclass
class LayerState:
    """Mutable per-layer method state held by one cache layer (see :class:`BlockContext`).

    ``layer_idx``: the decoder layer (``None`` for a standalone reference round trip, which methods
    treat as an ordinary middle layer). ``shared``: created once per layer by
    :meth:`MethodSpec.init_layer_states` (rotations, calibration, RoPE tables); never reordered.
    ``per_seq``: one dict per sequence of the batch, created empty by the cache when the prompt is
    committed and filled by :meth:`MethodSpec.observe_prompt` / the encoders (outlier channels, sink
    positions, outlier pools); the cache reorders (and deep-copies) it with the batch (beam search).
    ``prompt_queries``: while :meth:`MethodSpec.observe_prompt` runs, the prompt's queries in the
    attention basis ``[B, Hq, T, D]`` (padded like the keys) for methods with ``observes_prompt_queries``
    when the attention function saw them, else None.
    """

    layer_idx: int | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    per_seq: list[dict[str, Any]] = field(default_factory=list)
    prompt_queries: torch.Tensor | None = None


@dataclass
class BlockContext:
    """Where a batch of ``N`` encoded units sits in the cache: passed to ``encode_*``/``decode_*``.

    ``rows[i]``: the sequence (batch row) unit ``i`` belongs to; ``starts[i]``: the index *within its
    sequence* of the unit's first token (sequences are stored left-aligned, so this is the token's
    position counted from the sequence's first real token: what ``generate`` uses as position id).
    Both are int64 on the CPU.
    """

    state: LayerState
    rows: torch.Tensor
    starts: torch.Tensor

    def positions(self, tokens: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Token positions within their sequences, ``[N, tokens]`` int64."""
        pos = self.starts[:, None] + torch.arange(tokens)[None, :]
        return pos.to(device) if device is not None else pos

    def seq(self, i: int) -> dict[str, Any]:
        """The per-sequence state dict of unit ``i``."""
        return self.state.per_seq[int(self.rows[i])]


class ContextBlock(dict):
    """A block encoded *outside* a cache (reference round trips of context-using methods).

    It carries what the cache would otherwise hold: the context to decode it with, the tokens kept in
    full precision (``keep`` ``[N, T]`` and ``full``, the encode input) and how a standalone
    ``[N, H, T, D]`` tensor was split into cache units (``units_per_row``).
    """

    def __init__(self, block: Block, ctx: BlockContext, keep: torch.Tensor | None, full: torch.Tensor,
                 units_per_row: int):
        super().__init__(block)
        self.ctx = ctx
        self.keep = keep
        self.full = full
        self.units_per_row = units_per_row


def contextual(fn):
    """Decorator of a context method's ``encode_*``/``decode_*`` (``uses_context``).

    With a ``ctx`` (the cache) it is the method itself. Without one (a reference round trip outside a
    cache) the tensor is encoded as fresh sequences, one prompt per row, into a :class:`ContextBlock`
    that decodes without a context (:meth:`MethodSpec.standalone_context`).
    """
    is_key = fn.__name__.endswith("_keys")
    if fn.__name__.startswith("encode"):
        @functools.wraps(fn)
        def encode(self, x: torch.Tensor, ctx: BlockContext | None = None) -> Block:
            return fn(self, x, ctx) if ctx is not None else self._encode_standalone(x, is_key)

        return encode

    @functools.wraps(fn)
    def decode(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        if ctx is not None:
            return fn(self, block, dtype, ctx)
        if not isinstance(block, ContextBlock):
            raise TypeError(f"{self.name}: {fn.__name__} needs the BlockContext the block was encoded with")
        return self._decode_standalone(block, dtype, is_key)

    return decode


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
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """Every field's value is of its annotated type (generic: from the dataclass annotations)."""
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok, conformed = _conform(value, hints.get(f.name, Any))
            if not ok:
                raise MethodParameterTypeError(
                    f"{self.name}: {f.name} must be {_describe(hints[f.name])}, "
                    f"got {value!r} ({type(value).__name__})"
                )
            if conformed is not value:
                object.__setattr__(self, f.name, conformed)

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

    def resolve_for_model(self, num_kv_heads: int, head_dim: int) -> MethodSpec:
        """This spec with its model-dependent defaults made concrete for layers of this shape: what
        :func:`oscar_core.make_cache` builds the cache with (``cache.spec``) and provenance records.
        Explicit values are kept (``check_model`` judges them). Default: the spec itself."""
        return self

    def replace(self, **overrides: Any) -> MethodSpec:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise MethodConfigError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: "
                f"{sorted(f.name for f in dataclasses.fields(self))}"
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

    def encode_keys(self, k: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        """Quantize a block of attention-basis keys ``[N, H, T, D]`` (T a multiple of the key group).

        ``ctx``: where the units sit in the cache (rows, positions, layer state); the cache always passes
        it. Without it (reference round trips) a method that uses it encodes each row as one fresh
        sequence (see :func:`contextual`). The block may contain :data:`KEEP_FULL`.
        """
        raise NotImplementedError

    def decode_keys(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        """Attention-basis keys ``[N, H, T, D]`` from an encoded block (token norms applied); ``ctx``
        describes the same units as at encode."""
        raise NotImplementedError

    def encode_values(self, v: torch.Tensor, ctx: BlockContext | None = None) -> Block:
        """Values counterpart of :meth:`encode_keys` (in a cache: after the keys of the same units)."""
        raise NotImplementedError

    def decode_values(self, block: Block, dtype: torch.dtype, ctx: BlockContext | None = None) -> torch.Tensor:
        raise NotImplementedError

    # -- cache-context hooks (generic; the cache knows no method names) ----------------------
    #: True when the method's encoders need the :class:`BlockContext` (per-layer state, token positions
    #: or full-precision overrides); they are then :func:`contextual`, so they also work without one.
    uses_context: ClassVar[bool] = False
    #: True when :meth:`observe_prompt` needs the decoder layer's input hidden states at prefill;
    #: :func:`oscar_core.model.prepare_model` then installs a forward pre-hook that captures them.
    observes_layer_input: ClassVar[bool] = False
    #: True when :meth:`observe_prompt` wants the prompt's queries (``state.prompt_queries``); the
    #: packed-KV attention function hands them to the layer at prefill.
    observes_prompt_queries: ClassVar[bool] = False

    def init_layer_states(self, model: torch.nn.Module, info: Any) -> list[dict[str, Any]]:
        """Per-layer shared state, created once by :func:`oscar_core.make_cache` (``info``: the
        :class:`oscar_core.model.ModelInfo`). Raise :class:`MethodConfigError` for a model the method
        cannot handle. Default: an empty dict per layer."""
        return [{} for _ in range(info.num_layers)]

    def observe_prompt(self, state: LayerState, keys: torch.Tensor | None, values: torch.Tensor | None,
                       pad: list[int], layer_input: torch.Tensor | None) -> None:
        """See the prompt once, when the cache commits it, before any of it is encoded.

        ``keys`` (attention basis) / ``values``: ``[B, H, T, D]`` on the padded timeline, sequence ``b``'s
        real tokens from ``pad[b]`` on (either may be ``None`` in a standalone round trip);
        ``layer_input``: the decoder layer's input hidden states ``[B, T, hidden]`` when
        ``observes_layer_input``, else ``None``. ``state.per_seq`` holds one empty dict per sequence.
        """

    def standalone_context(self, keys: torch.Tensor | None, values: torch.Tensor | None) -> BlockContext:
        """A fresh context for ``[N, H, T, D]`` tensors encoded outside a cache: each row is one sequence
        whose prompt is the tensor itself, split into cache units of :attr:`block_tokens` when ``T`` is a
        multiple of it (as the cache commits a prompt)."""
        x = keys if keys is not None else values
        n, t = x.shape[0], x.shape[2]
        state = LayerState(None, {}, [{} for _ in range(n)])
        self.observe_prompt(state, keys, values, [0] * n, None)
        u = self._standalone_units(t)
        rows = torch.arange(n).repeat_interleave(u)
        starts = (torch.arange(u) * (t // u)).repeat(n)
        return BlockContext(state, rows, starts)

    def _standalone_units(self, tokens: int) -> int:
        r = self.block_tokens
        return tokens // r if (r > 1 and tokens > r and tokens % r == 0) else 1

    def roundtrip_standalone(self, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype = torch.float32
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (attention basis) and values (cache basis) ``[N, H, T, D]`` of one prompt per row, encoded
        together in one fresh context (as the cache commits a prompt: the values see what the keys'
        encoder decided, e.g. OTT's pool) and decoded, full-precision tokens applied."""
        ctx = self.standalone_context(k, v)
        kb = self._encode_standalone(k, True, ctx)
        vb = self._encode_standalone(v, False, ctx)
        return self._decode_standalone(kb, dtype, True), self._decode_standalone(vb, dtype, False)

    def _encode_standalone(self, x: torch.Tensor, is_key: bool, ctx: BlockContext | None = None) -> Block:
        if ctx is None:
            ctx = self.standalone_context(x if is_key else None, None if is_key else x)
        n, h, t, d = x.shape
        u = self._standalone_units(t)
        units = x.reshape(n, h, u, t // u, d).transpose(1, 2).reshape(n * u, h, t // u, d)
        block = self.encode_keys(units, ctx) if is_key else self.encode_values(units, ctx)
        keep = block.pop(KEEP_FULL, None)
        return ContextBlock(block, ctx, keep, units, u)

    def _decode_standalone(self, block: ContextBlock, dtype: torch.dtype, is_key: bool) -> torch.Tensor:
        plain = dict(block)
        x = (self.decode_keys(plain, torch.float32, block.ctx) if is_key
             else self.decode_values(plain, torch.float32, block.ctx))
        if block.keep is not None:
            x = torch.where(block.keep[:, None, :, None].to(x.device), block.full.float(), x)
        nu, h, tu, d = x.shape
        u = block.units_per_row
        return x.reshape(nu // u, u, h, tu, d).transpose(1, 2).reshape(nu // u, h, u * tu, d).to(dtype)

    # -- storage accounting ----------------------------------------------------------------
    def side_bits_per_token(self, num_kv_heads: int, head_dim: int) -> float:
        """Per-token side data (e.g. OScaR's fp32 token norm), all heads of one layer together."""
        return 0.0

    def bits_per_element(self, seq_len: int, num_kv_heads: int, head_dim: int) -> float:
        """Effective storage bits per K/V element at ``seq_len`` tokens, metadata and window included.

        After the prompt ``floor(T/R)*R`` tokens are quantized and ``T mod R`` are kept in 16 bits
        (for the sliding value window, the last ``min(T, R)`` values).
        """
        if seq_len <= 0:
            raise MethodConfigError(f"{self.name}: bits_per_element needs seq_len > 0, got {seq_len}")
        if not self.quantizes:
            return 16.0
        r = self.residual_length
        t = seq_len
        k_quant = (t // r) * r if r > 0 else t
        v_quant = max(t - r, 0) if self.value_flush == "token" else k_quant
        meta = 32  # one fp16 scale + one fp16 zero/minimum per group
        code_bits = 8 // codes_per_byte(self.bits)  # as stored: 3-bit codes take a byte each
        k_bits = code_bits + meta / self.group_for(self.key_axis, head_dim)
        v_bits = code_bits + meta / self.group_for(self.value_axis, head_dim)
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
        self, x: torch.Tensor, axis: Literal["token", "channel"], zero_point: ZeroPoint, clip_ratio: float = 1.0,
        arithmetic: Literal["fp32", "fp16"] = "fp32",
    ) -> Block:
        gq = quantize(x, self.bits, self.group_for(axis, x.shape[-1]), axis, zero_point, clip_ratio, arithmetic)
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
