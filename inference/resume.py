"""A training run's resumable state: what :func:`~ppvae.inference.train.fit` checkpoints.

Resuming reproduces an uninterrupted run exactly only if everything that decides the next
epoch comes back: the parameters, the optimizer's moments, the batch order (the loader's
generator), the RNG states that Pyro samples from (the run's own seeded stream, see
:func:`ppvae.inference.rng.seeded`), and the history that early stopping reads. The run's
settings are stored too, so that a resumption with other settings is refused.
"""

from __future__ import annotations

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
) -> None:
    """Write ``folder/last.pt`` (and ``folder/best.pt`` when ``best``), each atomically."""
    state = {"optimizer": optimizer, "history": history, "config": config}
    extra = {"loader": loader.state_dict()}
    save(model, folder / "last.pt", **state, extra=extra)
    if best:
        save(model, folder / "best.pt", **state, extra=extra)


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
    best_state = None
    best = folder / "best.pt"
    if want_best and history.best_epoch is not None and best.is_file():
        best_state = load_checkpoint(best)["model_state"]
    set_rng_state(saved["rng_state"])
    return history, best_state
