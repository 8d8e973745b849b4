"""Random-number streams: one explicit path for seeds, and global RNG states as plain data.

Pyro samples from torch's global generator (and, on a GPU, CUDA's); Python's ``random``
and NumPy's global generators are kept too, as ``pyro.util.get_rng_state`` does. Code in
this library never seeds those global streams as a side effect: an estimator or a training
run that takes a ``seed`` runs inside :func:`seeded`, which forks the global states, seeds
them and gives the caller's states back on exit. :func:`derive_seeds` turns one seed into
the several independent seeds a run needs (its batch order, its sampling stream).

The states' native forms hold a NumPy array and nested tuples, which
``torch.load(weights_only=True)`` would refuse, so :func:`rng_state` stores them as tensors
and lists.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyro
import torch

__all__ = ["rng_state", "set_rng_state", "seeded", "derive_seeds", "rank_seed"]

# Derived seeds stay below 2**32, the range NumPy's global generator accepts.
_SEED_RANGE = 2**32


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


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block on its own random stream, seeded with ``seed``; the caller's is kept.

    On entry the global states of torch (CPU and every CUDA device), Python ``random`` and
    NumPy are saved and all are seeded with ``seed`` (NumPy with ``seed mod 2**32``); on
    exit, normal or not, the saved states are restored, so the caller's stream continues
    as if the block had not run. ``seed=None`` changes nothing: the block draws from, and
    advances, the caller's stream.
    """
    if seed is None:
        yield
        return
    saved = rng_state()
    try:
        torch.manual_seed(seed)  # seeds every CUDA device too
        random.seed(seed)
        # The legacy global generator is the one third-party code draws from implicitly.
        np.random.seed(seed % _SEED_RANGE)  # noqa: NPY002
        yield
    finally:
        set_rng_state(saved)


def derive_seeds(seed: int | None, count: int) -> list[int]:
    """``count`` seeds for independent streams, derived from ``seed`` alone.

    ``seed=None`` first draws one seed from torch's global stream (advancing it by one
    draw), so that ``torch.manual_seed`` before the call still makes the result
    reproducible.
    """
    if seed is None:
        seed = int(torch.randint(_SEED_RANGE, ()).item())
    gen = torch.Generator().manual_seed(int(seed))
    return [int(s) for s in torch.randint(_SEED_RANGE, (count,), generator=gen).tolist()]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` of a distributed run whose seed is ``seed``.

    Rank 0 keeps ``seed`` itself, so that a one-process run draws what a plain run draws;
    every other rank gets a seed derived from both, so that the ranks' draws are
    independent (and reproducible for a given seed and world size).
    """
    if rank == 0:
        return int(seed)
    return derive_seeds(int(seed) * 1_000_003 + int(rank), 1)[0]
