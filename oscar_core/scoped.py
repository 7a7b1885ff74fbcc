"""``with oscar_core.quantized(model, "oscar") as cache:``: make_cache for one block, then the model as it was.

:func:`oscar_core.make_cache` prepares the model for good (``prepare_model``): it may fuse the V/O
Hadamard into ``v_proj``/``o_proj``, switch the text decoder's attention implementation to the
packed-KV function, install layer-input hooks and tag modules with ``_oscar_*`` attributes. Undoing a
fused rotation by rotating again rounds the weights once; the scoped form instead keeps a copy of every
weight the block may rewrite and puts it back, so the model leaves the block bit for bit as it entered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_TAG = "_oscar_"


class _ModelSnapshot:
    """What preparing ``model`` for a method can change, captured so that :meth:`restore` undoes it."""

    def __init__(self, model: torch.nn.Module, rotates_values: bool) -> None:
        from oscar_core.model import inspect_model

        info = inspect_model(model)
        self.attention = list(info.attention_modules.values())
        self.rotated = [getattr(m, "_oscar_vo_rotated", False) for m in self.attention]
        self.head_dim = info.head_dim
        self.config = info.text_config
        self.attn_implementation = self.config._attn_implementation
        self.config_tags = _tags(self.config)
        self.modules = list(model.modules())
        self.tags = [_tags(m) for m in self.modules]
        self.pre_hooks = [set(m._forward_pre_hooks) for m in self.modules]
        # Host copies (a GPU model's memory stays free for the cache), only when the block will toggle
        # a rotation: fusing one, or un-fusing the one the model holds.
        self.weights: list[tuple[torch.Tensor, torch.Tensor]] = []
        if rotates_values or any(self.rotated):
            for attn in self.attention:
                for proj in (attn.v_proj, attn.o_proj):
                    for p in proj.parameters(recurse=False):
                        self.weights.append((p, p.detach().to("cpu", copy=True)))

    @torch.no_grad()
    def restore(self) -> None:
        from oscar_core.model import _rotate_vo

        saved = {id(p) for p, _ in self.weights}
        for p, host_copy in self.weights:
            p.copy_(host_copy)
        # A rotation toggled inside the block by a make_cache whose weights were not saved: toggle it back.
        for attn, was in zip(self.attention, self.rotated, strict=True):
            if getattr(attn, "_oscar_vo_rotated", False) != was and id(attn.v_proj.weight) not in saved:
                _rotate_vo(attn, self.head_dim)
        for module, tags, hooks in zip(self.modules, self.tags, self.pre_hooks, strict=True):
            _set_tags(module, tags)
            for handle_id in set(module._forward_pre_hooks) - hooks:
                module._forward_pre_hooks.pop(handle_id, None)
                module._forward_pre_hooks_with_kwargs.pop(handle_id, None)
        self.config._attn_implementation = self.attn_implementation
        _set_tags(self.config, self.config_tags)


def _tags(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items() if k.startswith(_TAG)}


def _set_tags(obj: Any, tags: dict[str, Any]) -> None:
    # Straight into __dict__: where they were, bypassing nn.Module's / the config's __setattr__.
    state = vars(obj)
    for key in [k for k in state if k.startswith(_TAG) and k not in tags]:
        del state[key]
    state.update(tags)


@contextlib.contextmanager
def quantized(model: torch.nn.Module, method: Any = "oscar", **kwargs: Any) -> Iterator[Any]:
    """``make_cache(model, method, **kwargs)`` for the ``with`` block only.

    Yields the cache; on leaving the block (also through an exception) the model is restored exactly:
    the ``v_proj``/``o_proj`` weights bit for bit (a host copy is kept while the block runs, for methods
    that fuse a V/O rotation or when the model holds one already), the text decoder's attention
    implementation, its forward pre-hooks and ``_oscar_*`` attributes. The cache is unusable afterwards
    (its next step raises). ``kwargs``: :func:`oscar_core.make_cache`'s (``fake_quant``, ``kernels``,
    ``quantize_sliding``) and method parameters, e.g. ``residual_length=64``.
    """
    from oscar_core.cache import make_cache
    from oscar_core.methods import get_method

    params = {k: v for k, v in kwargs.items() if k not in ("fake_quant", "kernels", "quantize_sliding")}
    snapshot = _ModelSnapshot(model, rotates_values=bool(get_method(method, **params).rotates_values))
    try:
        yield make_cache(model, method, **kwargs)
    finally:
        snapshot.restore()
