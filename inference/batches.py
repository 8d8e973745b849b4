"""Minibatches of in-memory tensors, the one binarisation draw, and what ``fit`` reads from
a dataset.

Every split is held eagerly as a float tensor of shape ``(N, *event_shape)``, and a batch is
an index slice of it: the sets this library targets fit in memory, and slicing one tensor
per batch is far cheaper than a per-item ``torch.utils.data.DataLoader`` pipeline.

Seed policy. Randomness that must not move between runs (the one Bernoulli draw that
binarises validation and test data) comes from :data:`BINARIZE_SEED`, independent of any
user seed, so that log-likelihoods of different runs are measured on the same binary data.
Randomness that belongs to a run (the batch order, dynamic binarisation of training
batches) comes from the loader's own generator, seeded explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["BINARIZE_SEED", "BatchLoader", "TrainingData", "binarize_once"]

BINARIZE_SEED = 60_124_002
_Batch = tuple[torch.Tensor, torch.Tensor | None]


def binarize_once(*xs: torch.Tensor, seed: int = BINARIZE_SEED) -> list[torch.Tensor]:
    """One Bernoulli draw of each tensor, with the tensors as probabilities, in order.

    The draws come from one private generator seeded with ``seed`` (the global random
    stream is neither used nor advanced), so the same data always give the same binary
    data. This is how validation and test data are binarised wherever training data are
    binarised afresh each epoch.

    Raises
    ------
    ValueError
        A tensor has values outside [0, 1].
    """
    for x in xs:
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                "binarisation draws Bernoulli(x) and needs data in [0, 1], got range "
                f"[{x.min().item():g}, {x.max().item():g}]: rescale the data or pass "
                "binarize=None"
            )
    if not xs:
        return []
    gen = torch.Generator(device=xs[0].device).manual_seed(int(seed))
    return [torch.bernoulli(x, generator=gen) for x in xs]


@runtime_checkable
class TrainingData(Protocol):
    """What :func:`~ppvae.inference.train.fit` reads from a dataset (e.g. ``ppvae.Dataset``).

    Attributes
    ----------
    train, val
        Training and validation data, ``(N, *event_shape)``; ``val`` may be empty.
    train_labels, val_labels
        Labels ``(N,)`` for conditional models, or ``None``.
    binarize
        ``"dynamic"`` when ``train`` holds grey levels to be drawn afresh each epoch (and
        ``val`` is already binary), otherwise the mode the data were prepared with.
    """

    train: torch.Tensor
    val: torch.Tensor
    train_labels: torch.Tensor | None
    val_labels: torch.Tensor | None
    binarize: str | None


class BatchLoader:
    """Minibatches of in-memory tensors; each ``iter()`` is one epoch.

    Parameters
    ----------
    x, y
        Data ``(N, *event_shape)`` and optional labels ``(N,)`` on the same device.
    batch_size
        Datapoints per batch.
    shuffle
        Visit the data in a fresh random order each epoch.
    seed
        Seed of the loader's own generator; ``None`` draws one from torch's global RNG, so
        ``torch.manual_seed`` still makes runs reproducible.
    drop_last
        Skip the final, smaller batch.
    dynamic_binarize
        Replace each batch by one Bernoulli draw with the batch as probabilities.
    rank, world_size
        Distributed training: every rank draws the same global batches (the same seed)
        and keeps its contiguous share of each (sizes differ by at most one), so that the
        ranks together see exactly the batches of one process, binarised alike.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
        dynamic_binarize: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if y is not None and len(y) != len(x):
            raise ValueError(f"got {len(y)} labels for {len(x)} datapoints; pass one per row")
        self.x, self.y = x, y
        self.num_data = len(x)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.dynamic_binarize = shuffle, drop_last, dynamic_binarize
        self.seed = int(torch.randint(2**62, ()).item()) if seed is None else int(seed)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_data // self.batch_size
        return -(-self.num_data // self.batch_size)

    def __iter__(self) -> Iterator[_Batch]:
        # The loader's generator advances exactly once per epoch and seeds everything else in
        # it, so a state_dict() taken at any point resumes with the next epoch exactly as an
        # uninterrupted run would.
        epoch_seed = int(torch.randint(2**62, (), generator=self._generator).item())
        self.epoch += 1
        generator = torch.Generator(device=self.x.device).manual_seed(epoch_seed)
        return self._batches(self._order(generator), generator)

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        """Index order of one epoch (the one place a per-rank sampler would take its share)."""
        if not self.shuffle:
            return torch.arange(self.num_data, device=self.x.device)
        return torch.randperm(self.num_data, generator=generator, device=self.x.device)

    def _batches(self, order: torch.Tensor, generator: torch.Generator) -> Iterator[_Batch]:
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            xb = self.x[idx]
            if self.dynamic_binarize:
                xb = torch.bernoulli(xb, generator=generator)
            yb = None if self.y is None else self.y[idx]
            if self.world_size > 1:
                # The whole global batch is drawn above so that the generator advances as
                # in one process; each rank then keeps its share.
                n = len(idx)
                part = slice(
                    n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
                )
                xb, yb = xb[part], None if yb is None else yb[part]
            yield xb, yb

    def state_dict(self) -> dict[str, Any]:
        """Generator state and epoch count, enough to resume the epoch sequence exactly."""
        return {"seed": self.seed, "epoch": self.epoch, "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._generator.set_state(state["generator"])
