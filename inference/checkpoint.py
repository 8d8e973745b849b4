"""Checkpoints: one file holding a model, its constructor arguments and a training run's state.

A checkpoint is a ``torch.save`` dictionary of tensors, numbers, strings and plain
containers only, so it is read back with ``torch.load(..., weights_only=True)``: loading a
file from elsewhere never unpickles arbitrary Python objects. Files are written atomically
(a temporary file in the same folder, flushed and fsynced, then renamed over the target), so
an interrupted save leaves the previous checkpoint intact.

Every checkpoint records two SHA-256 digests (:mod:`ppvae.inference.integrity`):
``model_digest``, of the model's ``state_dict`` (the identity of the weights, which
:func:`checkpoint_digest` returns, e.g. for an evaluation to record which weights it
measured), and ``digest``, of everything else in the file. :func:`load_checkpoint` verifies
the second, so a file damaged after it was written is refused instead of loaded. Before a
model is rebuilt from its stored arguments, those arguments are checked against the stored
tensors' shapes (:func:`~ppvae.inference.integrity.check_sizes`), so an edited file cannot make
the loader allocate a network far larger than the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from ppvae.inference.integrity import check_sizes, load_state, seal, state_digest, verify
from ppvae.inference.plaindata import differences, object_names, to_plain
from ppvae.inference.rng import rng_state
from ppvae.models import VAE, VQVAE, LinearGaussianModel, LinearGuide, TwoLayerVAE

__all__ = [
    "FORMAT",
    "VERSION",
    "MODEL_CLASSES",
    "save",
    "load",
    "load_checkpoint",
    "restore_model",
    "checkpoint_digest",
    "seal",
]

FORMAT = "ppvae-checkpoint"
# 2: guide module attribute `q` renamed `guide_net`; constrained parameters stored unconstrained.
# 3: SHA-256 digests `model_digest` and `digest` (version 2 files still load, unverified).
VERSION = 3
_READABLE = (2, VERSION)
# Classes that load() can rebuild from their constructor arguments, by saved class name.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "VAE": VAE,
    "TwoLayerVAE": TwoLayerVAE,
    "LinearGaussianModel": LinearGaussianModel,
    "LinearGuide": LinearGuide,
    "VQVAE": VQVAE,
}


def save(
    vae: nn.Module,
    path: str | os.PathLike[str],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    history: Any = None,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``vae`` (and optionally a training run's state) to ``path`` atomically.

    Parameters
    ----------
    vae
        The model; its ``config`` (constructor arguments), if any, is stored so that
        :func:`load` can rebuild it. Arguments that are objects rather than values (a
        user-written prior module, say) are recorded by class name, and loading then needs
        a freshly built model of the same structure (``load(path, model=...)``).
    path
        Target file; its folder is created if missing.
    optimizer, history, config, extra
        Optimizer (its ``state_dict()`` is stored), a :class:`~ppvae.inference.history.History`
        or dict, the run configuration, and any further plain data.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    model_config = getattr(vae, "config", None)
    if history is not None and not isinstance(history, Mapping):
        history = history.to_dict()
    state = vae.state_dict()
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": type(vae).__name__,
        "model_config": None if model_config is None else to_plain(model_config),
        "model_state": state,
        "model_digest": state_digest(state),
        "optimizer_state": None if optimizer is None else optimizer.state_dict(),
        "history": None if history is None else dict(history),
        "rng_state": rng_state(),
        "config": None if config is None else to_plain(config),
        "extra": None if extra is None else dict(extra),
        "versions": {
            "ppvae": _ppvae_version(),
            "torch": str(torch.__version__),
            "pyro": pyro.__version__,
        },
    }
    seal(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with tmp:
            torch.save(checkpoint, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read and validate a checkpoint file; returns its whole dictionary.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is truncated or corrupt, not a ppvae checkpoint, or of another format
        version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}: check the path")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise _corrupt(path, err) from err
        raise ValueError(
            f"{path} is not a ppvae checkpoint (or is corrupt): it does not hold only tensors "
            "and plain data, and ppvae never unpickles other objects; write checkpoints with "
            "ppvae.inference.checkpoint.save"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on bad bytes
        raise _corrupt(path, err) from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a ppvae checkpoint (no format tag {FORMAT!r}); write checkpoints "
            "with ppvae.inference.checkpoint.save"
        )
    if checkpoint.get("version") not in _READABLE:
        written = checkpoint.get("versions", {}).get("ppvae", "unknown")
        raise ValueError(
            f"{path} has checkpoint format version {checkpoint.get('version')!r} but this "
            f"ppvae reads version {VERSION}; load it with the ppvae that wrote it ({written})"
        )
    if checkpoint["version"] >= 3:
        verify(checkpoint, path)
    else:  # written before digests: nothing to verify; record the weights' digest now
        checkpoint["model_digest"] = state_digest(checkpoint["model_state"])
    return checkpoint


def checkpoint_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of the model weights in the checkpoint at ``path``, verified.

    Equal for two files exactly when their models' ``state_dict`` s are equal, whatever
    else (history, optimizer state) the files hold.
    """
    return str(load_checkpoint(path)["model_digest"])


def load(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    map_location: str | torch.device | None = "cpu",
) -> nn.Module:
    """Rebuild the model saved in ``path`` (or load its state into ``model``).

    Parameters
    ----------
    path
        A file written by :func:`save`.
    model
        A freshly built model of the saved class and constructor arguments; required when
        the class is not in :data:`MODEL_CLASSES` or when some constructor argument was an
        object. Its configuration is checked against the saved one.
    map_location
        Where to put the tensors (as in ``torch.load``).

    Returns
    -------
    torch.nn.Module
        The model with the saved parameters. The rest of the file (history, optimizer and
        RNG states, run configuration) is available through :func:`load_checkpoint`.
    """
    checkpoint = load_checkpoint(path, map_location=map_location)
    return restore_model(checkpoint, model, source=str(path), map_location=map_location)


def restore_model(
    checkpoint: Mapping[str, Any],
    model: nn.Module | None = None,
    *,
    source: str = "checkpoint",
    map_location: str | torch.device | None = None,
) -> nn.Module:
    """Build (or check) the model of a loaded checkpoint and load its parameters into it."""
    name, saved_config = checkpoint["model_class"], checkpoint["model_config"]
    if model is None:
        model = _rebuild(name, saved_config, checkpoint["model_state"], source)
        if map_location is not None:
            model = model.to(map_location)
    else:
        if type(model).__name__ != name:
            raise ValueError(
                f"{source} holds a {name} but model= is a {type(model).__name__}: "
                f"pass a {name} built with the saved arguments"
            )
        config = getattr(model, "config", None)
        changed = differences(saved_config, None if config is None else to_plain(config))
        if changed:
            raise ValueError(
                f"{source} was saved from a {name} with other arguments ({'; '.join(changed)})"
                ": build the model with the saved arguments"
            )
    load_state(model, checkpoint["model_state"], source)
    return model


def _rebuild(name: str, config: Any, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    if name not in MODEL_CLASSES or config is None:
        raise ValueError(
            f"{source} holds a {name} that cannot be rebuilt from stored arguments: pass "
            f"model= (a freshly built {name} of the same structure)"
        )
    objects = sorted(object_names(config))
    if objects:
        raise ValueError(
            f"{source} holds a {name} built with objects ({', '.join(objects)}) that cannot be "
            f"rebuilt from stored arguments: pass model= (a freshly built {name} of the same "
            "structure)"
        )
    # The class is stored beside the arguments; a copy inside them (TwoLayerVAE's config
    # names its class) is not a constructor argument.
    kwargs = {k: v for k, v in config.items() if k != "class"}
    if config.get("class", name) != name:
        raise ValueError(
            f"{source} is inconsistent: it holds a {name} whose arguments name the class "
            f"{config['class']!r}; use a checkpoint written by ppvae.save"
        )
    check_sizes(kwargs, state, source)
    try:
        return MODEL_CLASSES[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"cannot rebuild the {name} of {source} from its stored arguments ({err}); pass "
            "model= built by hand"
        ) from err


def _corrupt(path: Path, err: BaseException) -> ValueError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"cannot read checkpoint {path}: the file is truncated or corrupt ({first[:120]}); "
        "write it again or use an earlier copy"
    )


def _ppvae_version() -> str:
    try:
        return version("ppvae")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not all platforms can open a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
