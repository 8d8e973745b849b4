"""The settings of a training run, checked once, and the record of them a checkpoint keeps."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FitOptions"]

_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 0, "a non-negative integer"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "num_particles": (lambda v: v >= 1, "a positive integer"),
    "beta": (lambda v: v >= 0, "a non-negative number"),
    "kl_anneal": (lambda v: v >= 0, "a non-negative number of epochs"),
    "patience": (lambda v: v is None or v >= 1, "None or a positive integer"),
    "clip_norm": (lambda v: v is None or v > 0, "None or positive"),
}


@dataclass(frozen=True)
class FitOptions:
    """How :func:`~ppvae.inference.train.fit` trains: its keyword arguments other than the
    data and the callback, with the same meaning and defaults. Checked on construction.
    """

    elbo: str | Any = "trace"
    num_particles: int = 1
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str | Callable[[list[torch.Tensor]], torch.optim.Optimizer] = "adam"
    beta: float = 1.0
    kl_anneal: int = 0
    clip_norm: float | None = None
    seed: int | None = None
    device: str | torch.device = "cpu"
    checkpoint_dir: str | os.PathLike[str] | None = None
    resume: bool = False
    patience: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name, (ok, what) in _RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"{name} must be {what}, got {value!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir of the run to continue")
        if self.scaled and self.elbo == "iwae":
            raise ValueError(
                "beta and kl_anneal weight the KL term of the ELBO, which the importance-"
                "weighted bound does not have; use elbo='trace' or 'meanfield', or beta=1 and "
                "kl_anneal=0"
            )

    @property
    def scaled(self) -> bool:
        """Whether the latent sites are weighted (β ≠ 1 or KL annealing)."""
        return self.beta != 1 or self.kl_anneal > 0

    def record(self) -> dict[str, Any]:
        """The settings that decide the run's numbers, as plain data.

        A checkpoint stores them, and resuming with other values is refused. The number
        of epochs, the device, the folder and the progress bar are left out: a run may be
        continued for more epochs, elsewhere, or quietly.
        """
        return {
            "elbo": self.elbo if isinstance(self.elbo, str) else type(self.elbo).__name__,
            "num_particles": self.num_particles,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "optimizer": self.optimizer
            if isinstance(self.optimizer, str)
            else _name(self.optimizer),
            "beta": self.beta,
            "kl_anneal": self.kl_anneal,
            "clip_norm": self.clip_norm,
            "seed": self.seed,
            "patience": self.patience,
        }


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__
