"""Checks of a checkpoint's contents: SHA-256 digests, the sizes its tensors allow, and
whether its tensors fit a model.

A digest is taken over a canonical walk of the data: mappings in the order of their sorted
keys, sequences in order, each tensor as its path, dtype, shape and raw bytes, each other
value as its path, type and ``repr``. Equal contents give equal digests on any machine and
device (tensors are read on the CPU), whatever the order a ``state_dict`` was built in. A
digest detects damage (a flipped byte in tensor data, which a zip archive's reader does not
check); it is not a signature, and a file crafted to pass it is stopped, where it could do
harm, by :func:`check_sizes`.

References
----------
NIST FIPS 180-4, "Secure Hash Standard" (SHA-256).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "digest",
    "state_digest",
    "seal",
    "verify",
    "check_sizes",
    "load_state",
    "SIZE_KEYS",
]

# Constructor arguments that set how large a network is (widths, counts of units, layers
# and components). Each one is a dimension of some parameter tensor of the network it builds.
SIZE_KEYS = frozenset(
    {
        "event_shape",
        "data_dim",
        "latent_dim",
        "latent_dims",
        "hidden",
        "latent_hidden",
        "hidden_dims",
        "num_labels",
        "num_components",
        "rank",
        "num_flows",
        "context_dim",
        "count_bins",
    }
)


def _feed(h: Any, value: Any, path: str) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{path}\0tensor\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        h.update(f"{path}\0map\0{len(value)}\0".encode())
        for key in sorted(value, key=repr):
            _feed(h, value[key], f"{path}/{key!r}")
    elif isinstance(value, list | tuple):
        h.update(f"{path}\0seq\0{len(value)}\0".encode())
        for i, item in enumerate(value):
            _feed(h, item, f"{path}/{i}")
    else:
        h.update(f"{path}\0{type(value).__name__}\0{value!r}\0".encode())


def digest(value: Any) -> str:
    """Hex SHA-256 of ``value`` (tensors, numbers, strings, ``None`` and containers)."""
    h = hashlib.sha256()
    _feed(h, value, "")
    return h.hexdigest()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a model's ``state_dict()``: what a checkpoint records as its model's."""
    return digest(dict(state))


def seal(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Set ``checkpoint["digest"]`` to the SHA-256 of the rest of it; returns it.

    :func:`ppvae.inference.checkpoint.save` seals what it writes; call this after editing
    a loaded checkpoint's dictionary on purpose, before writing it back with ``torch.save``.
    """
    checkpoint.pop("digest", None)
    checkpoint["digest"] = digest(checkpoint)
    return checkpoint


def verify(checkpoint: Mapping[str, Any], source: object) -> None:
    """Check a loaded checkpoint's ``digest`` and ``model_digest`` against its contents.

    Raises
    ------
    ValueError
        Either digest differs (one line, naming ``source``, the file).
    """
    stored = checkpoint.get("digest")
    rest = {k: v for k, v in checkpoint.items() if k != "digest"}
    actual = digest(rest)
    weights = state_digest(checkpoint.get("model_state") or {})
    if stored != actual or checkpoint.get("model_digest") != weights:
        raise ValueError(
            f"checkpoint {source} fails its SHA-256 integrity check (its contents changed after "
            "it was written: the file is damaged or was edited); write it again or use an "
            "earlier copy"
        )


def _size_ints(config: Any) -> list[tuple[str, Any]]:
    """(argument, value) for every value under a :data:`SIZE_KEYS` key, nested kwargs too."""
    found: list[tuple[str, Any]] = []
    if isinstance(config, Mapping):
        for k, v in config.items():
            if k in SIZE_KEYS and v is not None:
                found.append((str(k), v))
            elif isinstance(v, Mapping):
                found.extend(_size_ints(v))
    return found


def check_sizes(config: Any, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse constructor arguments that would build a network larger than the stored tensors.

    Every size argument (:data:`SIZE_KEYS`) of an honest file is a dimension of one of its
    parameter tensors, and a list of sizes (hidden widths) is no longer than the number of
    tensors; so each size is at most the largest stored dimension. Checked before the
    network is built, this bounds what building it can allocate.

    Raises
    ------
    ValueError
        A size argument exceeds what the stored tensors allow (one line, naming ``source``).
    """
    largest = max((max(t.shape, default=1) for t in state.values()), default=0)
    for name, value in _size_ints(config):
        values = list(value) if isinstance(value, list | tuple) else [value]
        too_long = len(values) > max(len(state), 1)
        bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v > largest]
        if too_long or bad:
            shown = value if len(values) <= 8 else f"a list of {len(values)} sizes"
            raise ValueError(
                f"the stored arguments of {source} do not match its stored tensors ({name}="
                f"{shown}, but no stored tensor has a dimension above {largest}): the file was "
                "edited or damaged; refusing to build the network. Use a checkpoint written "
                "by ppvae.save"
            )


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking that its names and shapes fit.

    Raises
    ------
    ValueError
        Missing, unexpected or differently shaped tensors (one line, naming ``source``).
    """
    own = model.state_dict()
    problems = []
    if missing := sorted(set(own) - set(state)):
        problems.append(f"missing {_some(missing)}")
    if unexpected := sorted(set(state) - set(own)):
        problems.append(f"unexpected {_some(unexpected)}")
    shapes = [
        f"{k} saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatch {_some(shapes)}")
    if problems:
        raise ValueError(
            f"the parameters in {source} do not fit the {type(model).__name__} "
            f"({'; '.join(problems)}): build the model with the arguments it was saved with"
        )
    model.load_state_dict(state)


def _some(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
