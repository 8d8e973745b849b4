"""Amortised guides q(z | x): encoder features → a distribution over one latent vector.

Every guide owns an encoder (a deterministic network from :mod:`ppvae.models.networks`)
and a linear head that maps its features to the parameters of the distribution it
returns. ``forward(x, y=None)`` returns a ``pyro.distributions`` object with batch
shape ``x.shape[:-len(event_shape)]`` and event shape ``(latent_dim,)``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

__all__ = ["Guide", "DiagonalNormalGuide", "GUIDES", "make_guide"]

_MIN_SCALE = 1e-5


class Guide(PyroModule):
    """Base class for amortised guides.

    Parameters
    ----------
    encoder
        Network mapping ``(x, y_onehot)`` to features with ``encoder.out_features``.
    latent_dim
        Size of the latent vector.
    """

    #: Whether ``forward`` returns a Gaussian with analytic mean and covariance.
    gaussian: bool = True

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = int(latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        raise NotImplementedError

    def mean_and_scale(
        self, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and marginal standard deviations of q(z | x).

        Analytic for Gaussian guides, Monte Carlo with ``num_samples`` draws otherwise.
        """
        q = self(x, y)
        if self.gaussian:
            return q.mean, q.variance.sqrt()
        z = q.sample((num_samples,))
        return z.mean(0), z.std(0)


class DiagonalNormalGuide(Guide):
    """Mean-field Gaussian q(z | x) = N(μ(x), diag σ(x)²) (Kingma & Welling, 2014)."""

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__(encoder, latent_dim)
        self.head = nn.Linear(encoder.out_features, 2 * self.latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        loc, raw_scale = self.head(self.encoder(x, y)).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + _MIN_SCALE
        return dist.Normal(loc, scale, validate_args=False).to_event(1)


GUIDES: dict[str, type[Guide]] = {"diagonal": DiagonalNormalGuide}


def make_guide(guide: str | nn.Module, encoder: nn.Module, latent_dim: int, **kwargs) -> nn.Module:
    """Build a guide from its registered name, or pass a module instance through."""
    if isinstance(guide, nn.Module):
        return guide
    try:
        cls = GUIDES[guide]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown guide {guide!r}: choose one of {sorted(GUIDES)} "
            "or pass a ppvae.models.Guide instance"
        ) from None
    return cls(encoder, latent_dim, **kwargs)
