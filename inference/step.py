"""One optimisation step and the validation bound, usable without the training loop, and the
optimizer they use.

:func:`train_step` is the algorithm's step in the sense of blackjax's ``step -> (state,
info)``: it updates the parameters in place and returns the loss with a small record; the
loop, checkpoints and early stopping belong to the caller (:func:`ppvae.inference.train.fit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from ppvae.inference.batches import BatchLoader
from ppvae.models.programs import local_params_method

__all__ = [
    "StepInfo",
    "TrainingDivergedError",
    "train_step",
    "validation_elbo",
    "make_optimizer",
    "OPTIMIZERS",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def make_optimizer(
    optimizer: str | Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    params: list[torch.Tensor],
    lr: float,
) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer by name (see :data:`OPTIMIZERS`) or from ``params -> opt``."""
    if callable(optimizer):
        return optimizer(params)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: use one of {sorted(OPTIMIZERS)}")
    kwargs: dict[str, Any] = {}
    if optimizer in ("adam", "adamw") and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    ):
        # One fused kernel for all parameters instead of a loop of small ops: on small
        # networks the optimizer step is a large share of the step time (bench/README.md).
        kwargs["fused"] = True
    return OPTIMIZERS[optimizer](params, lr=lr, **kwargs)


class StepInfo(NamedTuple):
    """What one :func:`train_step` measured.

    Attributes
    ----------
    loss
        The loss before the update (a Python float; NaN or ±inf when the step was skipped).
    grad_norm
        Total gradient norm before clipping, as a 0-d tensor (reading it with ``float()``
        synchronises with the device), or ``None`` when no clipping was requested or the
        step was skipped.
    """

    loss: float
    grad_norm: torch.Tensor | None


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` are numbered from 1."""

    def __init__(self, message: str, *, epoch: int, step: int, loss: float) -> None:
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss


def train_step(
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    *args: Any,
    clip_norm: float | None = None,
    sync: Callable[[float, Sequence[torch.Tensor]], float] | None = None,
    **kwargs: Any,
) -> StepInfo:
    """Compute ``loss_fn(*args, **kwargs)``, backpropagate and update ``params``.

    A non-finite loss skips the update, so the parameters keep their last finite values;
    the caller decides what to do (``fit`` raises :class:`TrainingDivergedError`).

    Parameters
    ----------
    loss_fn
        Returns a differentiable scalar, e.g.
        ``functools.partial(Trace_ELBO().differentiable_loss, model, guide)``.
    optimizer
        A ``torch.optim`` optimizer over ``params``.
    params
        The trained tensors (a list, built once, not a generator), needed for clipping.
    clip_norm
        Clip the total gradient norm to this value.
    sync
        Distributed training: ``sync(loss, params)`` replaces the gradients by their
        average over the ranks and returns the global loss (non-finite when any rank's
        is), e.g. :meth:`~ppvae.inference.distributed.ProcessGroup.gradient_sync`. It
        runs on every rank, whatever its loss, and before clipping, so that every rank
        clips and steps alike.

    Returns
    -------
    StepInfo
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(*args, **kwargs)
    # The single host synchronisation of the step: it serves the divergence check and the
    # running average alike.
    value = loss.item()
    if math.isfinite(value):
        loss.backward()
    if sync is not None:
        value = sync(value, params)
    if not math.isfinite(value):
        return StepInfo(value, None)
    grad_norm = None
    if clip_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return StepInfo(value, grad_norm)


@torch.no_grad()
@local_params_method
def validation_elbo(
    objective: Any,
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    batch_size: int = 1024,
) -> float:
    """The objective's bound per datapoint on ``x`` (the ELBO for Pyro's ELBOs), no gradients.

    The data go through in unshuffled minibatches, each passed with ``num_data=len(x)`` so
    that sites outside the data plate are counted once. ``vae`` is put in eval mode.
    """
    if hasattr(vae, "eval"):
        vae.eval()
    total, n = 0.0, len(x)
    for xb, yb in BatchLoader(x, y, batch_size=batch_size, shuffle=False, seed=0):
        args = (xb,) if yb is None else (xb, yb)
        # Each minibatch loss estimates the full-set loss (the plate scales by n / len(xb)).
        total += float(objective.loss(vae.model, vae.guide, *args, num_data=n)) * len(xb)
    return -total / n / n
