"""Constructor arguments as plain data: conversion for checkpoints, and comparison.

A model's ``config`` may hold objects (a user-written prior module, say) besides values. For
storage each object is replaced by a marker naming its class; two configurations are then
compared value by value, tensors with ``torch.equal`` and objects by class name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["INSTANCE", "to_plain", "object_names", "differences"]

INSTANCE = "__instance__"  # marks a constructor argument that was an object, not a value


def to_plain(value: Any) -> Any:
    """A copy of ``value`` made of plain data, objects replaced by their class names."""
    if value is None or isinstance(value, bool | int | float | str | torch.dtype):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: to_plain(v) for k, v in value.items()}
    cls = type(value)
    return {INSTANCE: f"{cls.__module__}.{cls.__qualname__}"}


def object_names(config: Any) -> set[str]:
    """Class names of the objects marked in a plain configuration."""
    if isinstance(config, dict):
        if set(config) == {INSTANCE}:
            return {config[INSTANCE]}
        return set().union(*(object_names(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(object_names(v) for v in config))
    return set()


def differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """One line per difference between two plain configurations (empty when equal)."""
    if isinstance(saved, dict) and isinstance(current, dict) and INSTANCE not in saved:
        out = []
        for key in sorted(set(saved) | set(current)):
            where = f"{prefix}{key}"
            if key not in saved or key not in current:
                out.append(f"{where}: only in {'the model' if key in current else 'the file'}")
            else:
                out += differences(saved[key], current[key], f"{where}.")
        return out
    if not _same(saved, current):
        return [f"{prefix.rstrip('.') or 'config'}: saved {_short(saved)}, model {_short(current)}"]
    return []


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {INSTANCE}:
        return f"<{value[INSTANCE]}>"
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
