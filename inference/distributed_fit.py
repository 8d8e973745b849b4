"""What :func:`~ppvae.inference.train.fit` changes in a run when it trains on several ranks.

:func:`distribute_run` turns a prepared single-process
:class:`~ppvae.inference.prepare.TrainingRun` into one rank's share of a distributed run:
parameters from rank 0, the loader's batches split by rank, the rank's own random stream,
and files written by rank 0 alone. :func:`sharded_validation` computes the validation
bound with the validation set split over the ranks, the same number on every rank (which
early stopping needs: every rank must decide alike). The process group and the gradient
exchange are :mod:`ppvae.inference.distributed`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch

from ppvae.inference.distributed import ProcessGroup
from ppvae.inference.prepare import TrainingRun
from ppvae.inference.rng import rank_seed
from ppvae.inference.step import validation_elbo

__all__ = ["distribute_run", "sharded_validation"]


def distribute_run(run: TrainingRun, group: ProcessGroup, *, resumed: bool) -> None:
    """Make ``run`` this rank's share of a distributed run (in place).

    Call it inside the run's seeded block, after the one-off model check (which may
    create lazily initialised parameters): rank 0's parameters are then broadcast. When
    the run was ``resumed``, the restored random stream is rank 0's; each rank then moves
    to a stream of its own, drawn from it, so that a resumed run is reproducible for a
    given world size whatever world size wrote the checkpoint.
    """
    group.broadcast_state(run.vae)
    run.loader.rank, run.loader.world_size = group.rank, group.world_size
    run.loss_fn = _empty_batch_guard(run.loss_fn, run.params)
    if resumed:
        pyro.set_rng_seed(rank_seed(int(torch.randint(2**32, ()).item()), group.rank))
    if not group.is_main:
        run.folder = None  # rank 0 alone writes checkpoints


def _empty_batch_guard(
    loss_fn: Callable[..., torch.Tensor], params: list[torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """A rank whose share of a (final, small) global batch is empty still takes part in the
    gradient exchange, with weight zero: a zero loss that reaches no parameter's data."""

    def guarded(*args: torch.Tensor) -> torch.Tensor:
        if len(args[0]) == 0:
            return params[0].sum() * 0.0
        return loss_fn(*args)

    return guarded


@torch.no_grad()
def sharded_validation(
    objective: object,
    vae: object,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    batch_size: int,
    group: ProcessGroup,
) -> float:
    """The validation bound per datapoint, each rank scoring its contiguous share of ``x``.

    Each share's bound per datapoint is weighted by its size, so the result is the
    average over all of ``x``, summed over the ranks: every rank returns the same value.
    """
    part = group.shard(len(x))
    xs, ys = x[part], None if y is None else y[part]
    value = 0.0
    if len(xs):
        value = validation_elbo(objective, vae, xs, ys, batch_size=batch_size) * len(xs)
    total, n = group.sum(value, float(len(xs)))
    return total / n
