"""The per-epoch record of a training run, as returned by :func:`ppvae.inference.train.fit`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["History"]

# What train_objective was called in histories and checkpoints written by ppvae 0.1.
_OLD_TRAIN_KEY = "train_elbo"


@dataclass
class History:
    """What :func:`~ppvae.inference.train.fit` measured, one entry per completed epoch.

    Attributes
    ----------
    train_objective
        The training objective per datapoint (higher is better), averaged over the epoch's
        minibatches while the parameters moved: the ELBO for ``elbo="trace"`` or
        ``"meanfield"`` at β = 1; with β ≠ 1 or KL annealing the β-weighted objective
        E_q[log p(x | z)] − β·KL, which is not the ELBO; with ``elbo="iwae"`` the
        importance-weighted bound. (Files written before this name read ``train_elbo``.)
    val_elbo
        The same objective at β = 1 on the validation data with the end-of-epoch
        parameters: a stochastic lower bound on the validation log-likelihood per
        datapoint. Empty when no validation data was given.
    beta
        The latent-site weight β used in each epoch.
    seconds
        Wall-clock seconds of each epoch: training and validation (not checkpoint writing).
    images_per_second
        Training datapoints processed per second of each epoch's training loop alone.
    epochs_completed
        Number of epochs run so far (across resumptions).
    best_epoch
        The epoch (numbered from 1) with the highest ``val_elbo``; ``None`` without
        validation data.
    stopped_early
        Whether early stopping ended the run before the requested number of epochs.
    metrics
        Further per-epoch numbers by name, from the objective's ``end_epoch()`` when it
        has one (e.g. codebook usage and perplexity of a VQ-VAE's objective).
    """

    train_objective: list[float] = field(default_factory=list)
    val_elbo: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)
    epochs_completed: int = 0
    best_epoch: int | None = None
    stopped_early: bool = False
    metrics: dict[str, list[float]] = field(default_factory=dict)

    @property
    def best_val_elbo(self) -> float | None:
        """The validation ELBO of :attr:`best_epoch`, or ``None``."""
        return None if self.best_epoch is None else self.val_elbo[self.best_epoch - 1]

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, numbers and booleans (JSON-friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Rebuild from :meth:`to_dict`'s output; unknown keys are an error.

        The key ``train_elbo`` of files written before :attr:`train_objective` had its name
        is read as ``train_objective``.
        """
        data = dict(data)
        if _OLD_TRAIN_KEY in data and "train_objective" not in data:
            data["train_objective"] = data.pop(_OLD_TRAIN_KEY)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown History fields {unknown}: expected some of {sorted(known)}")
        kwargs = {k: list(v) if isinstance(v, list | tuple) else v for k, v in data.items()}
        kwargs["metrics"] = {k: list(v) for k, v in kwargs.get("metrics", {}).items()}
        return cls(**kwargs)
