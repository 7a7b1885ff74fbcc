"""The registry of KV-cache methods: one file per method, all on the shared quantizer and Hadamard."""

from __future__ import annotations

from typing import Any

from oscar_core.methods.base import Block, MethodConfigError, MethodSpec
from oscar_core.methods.fp16 import FP16Spec
from oscar_core.methods.kivi import KIVISpec
from oscar_core.methods.oscar import OScaRSpec
from oscar_core.methods.ott import OTTSpec
from oscar_core.methods.quarot import QuaRotSpec
from oscar_core.methods.rotatekv import RotateKVSpec
from oscar_core.methods.turboquant import TurboQuantPlusSpec, TurboQuantSpec

_REGISTRY: dict[str, type[MethodSpec]] = {}


def register_method(cls: type[MethodSpec]) -> type[MethodSpec]:
    """Add a method class to the registry (usable as a decorator by third-party methods)."""
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (FP16Spec, QuaRotSpec, RotateKVSpec, KIVISpec, OTTSpec, TurboQuantPlusSpec, OScaRSpec, TurboQuantSpec):
    register_method(_cls)


def list_methods() -> list[str]:
    """Names of all registered methods, in the paper's table order where they appear there."""
    return list(_REGISTRY)


def get_method(name: str | MethodSpec, **overrides: Any) -> MethodSpec:
    """The method's frozen spec with the paper defaults, overridden by keyword arguments."""
    if isinstance(name, MethodSpec):
        return name.replace(**overrides) if overrides else name
    key = name.lower()
    if key not in _REGISTRY:
        raise MethodConfigError(f"unknown method {name!r}; available: {', '.join(_REGISTRY)}")
    spec = _REGISTRY[key]()
    return spec.replace(**overrides) if overrides else spec


__all__ = [
    "Block",
    "MethodConfigError",
    "MethodSpec",
    "get_method",
    "list_methods",
    "register_method",
]
