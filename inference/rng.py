"""Global random-number-generator states as plain data (storable with ``weights_only=True``).

Pyro draws from torch's global generator (and, on a GPU, CUDA's); Python's ``random`` and
NumPy's global generators are kept too, as ``pyro.util.get_rng_state`` does. Their native
forms hold a NumPy array and nested tuples, which ``torch.load(weights_only=True)`` would
refuse, so they are stored as tensors and lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro
import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """Torch (and CUDA), Python ``random`` and NumPy global RNG states as plain data."""
    pyro_state = pyro.util.get_rng_state()
    version, internal, gauss = pyro_state["random"]
    name, keys, pos, has_gauss, cached = pyro_state["numpy"]
    state: dict[str, Any] = {
        "torch": pyro_state["torch"],
        "random": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore global RNG states saved by :func:`rng_state`."""
    version, internal, gauss = state["random"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    pyro.util.set_rng_state(
        {
            "torch": state["torch"].cpu(),
            "random": (version, tuple(internal), gauss),
            "numpy": (name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached),
        }
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
