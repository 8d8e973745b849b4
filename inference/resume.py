"""A training run's resumable state: what :func:`~ppvae.inference.train.fit` checkpoints.

Resuming reproduces an uninterrupted run exactly only if everything that decides the next
epoch comes back: the parameters, the optimizer's moments, the batch order (the loader's
generator), the RNG states that Pyro samples from (the run's own seeded stream, see
:func:`ppvae.inference.rng.seeded`), and the history that early stopping reads. The run's
settings are stored too, so that a resumption with other settings is refused.

``last.pt`` and ``best.pt`` are two files, and a kill can fall between their writes. So
``best.pt`` is written first, and ``last.pt`` then records its SHA-256 and epoch, and,
with early stopping, the best parameters themselves: ``last.pt`` alone decides a
resumption. When ``best.pt`` does not match the record (the run was killed after writing
``best.pt`` but before ``last.pt``), :func:`resume_run` rewrites it from the stored best
parameters, or, without them, removes it (its epoch is redone, and rewrites it if it
improves again).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppvae.inference.batches import BatchLoader
from ppvae.inference.checkpoint import load_checkpoint, restore_model, save
from ppvae.inference.history import History
from ppvae.inference.rng import set_rng_state

__all__ = ["save_run", "resume_run"]


def save_run(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: BatchLoader,
    history: History,
    config: dict[str, Any],
    *,
    best: bool,
    best_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``folder/best.pt`` when ``best``, then ``folder/last.pt``, each atomically.

    ``last.pt`` records ``best.pt``'s digest and epoch, and ``best_state`` (the best
    parameters early stopping keeps) when given.
    """
    state = {"optimizer": optimizer, "history": history, "config": config}
    extra: dict[str, Any] = {"loader": loader.state_dict()}
    best_path = folder / "best.pt"
    if best:
        save(model, best_path, **state, extra=extra)
    if best_path.is_file() and history.best_epoch is not None:
        extra["best"] = {"epoch": history.best_epoch, "sha256": _digest(best_path)}
    if best_state is not None:
        extra["best_state"] = best_state
    save(model, folder / "last.pt", **state, extra=extra)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _repair_best(
    folder: Path, model: nn.Module, saved: dict[str, Any], config: dict[str, Any]
) -> tuple[dict[str, torch.Tensor] | None, bool]:
    """Make ``best.pt`` agree with ``last.pt``'s record.

    Returns the best parameters (``None`` if unknown) and whether ``best.pt`` changed.
    """
    extra, best = saved.get("extra") or {}, folder / "best.pt"
    record, best_state = extra.get("best"), extra.get("best_state")
    if record is None:  # no record (no validation, or an older checkpoint): best.pt as is
        if best_state is None and best.is_file():
            best_state = load_checkpoint(best)["model_state"]
        return best_state, False
    if best.is_file() and _digest(best) == record["sha256"]:
        return best_state, False
    if best_state is None:
        best.unlink(missing_ok=True)
        return None, True
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    # The history as it stood at the best epoch, as best.pt held it when first written.
    epoch = record["epoch"]
    history = {k: v[:epoch] if isinstance(v, list) else v for k, v in saved["history"].items()}
    history.update(epochs_completed=epoch, stopped_early=False)
    save(model, best, history=history, config=config, extra={"repaired": True})
    model.load_state_dict(current)
    return best_state, True


def resume_run(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: BatchLoader,
    config: dict[str, Any],
    *,
    want_best: bool,
) -> tuple[History, dict[str, torch.Tensor] | None]:
    """Restore the state saved by :func:`save_run` into freshly built run objects.

    Call it last, after everything that draws random numbers has been built, inside the
    run's :func:`~ppvae.inference.rng.seeded` block: it resets the global RNG states to the
    saved ones, which that block gives back to the caller on exit. Returns the history
    and, when ``want_best``, the best epoch's parameters (for early stopping to restore at
    the end).
    """
    path = folder / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path} to resume from: run without resume=True")
    saved = load_checkpoint(path)  # on the CPU, where RNG and generator states live
    before = saved.get("config") or {}
    changed = [
        f"{k}={before.get(k)!r} then, {v!r} now" for k, v in config.items() if before.get(k) != v
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {path}: it was trained with other settings "
            f"({'; '.join(changed)}); pass the same arguments or use a new checkpoint_dir"
        )
    restore_model(saved, model, source=str(path))
    optimizer.load_state_dict(saved["optimizer_state"])
    loader.load_state_dict(saved["extra"]["loader"])
    history = History.from_dict(saved["history"])
    set_rng_state(saved["rng_state"])
    best_state, repaired = _repair_best(folder, model, saved, config)
    if repaired:  # last.pt records the repaired best.pt (the RNG states are the saved ones)
        extra = dict(saved["extra"])
        extra.pop("best")
        best = folder / "best.pt"
        if best.is_file():
            extra["best"] = {"epoch": history.best_epoch, "sha256": _digest(best)}
        save(model, path, optimizer=optimizer, history=history, config=config, extra=extra)
    if not want_best or history.best_epoch is None:
        best_state = None
    return history, best_state
