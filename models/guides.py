"""Amortised guides q(z | x): encoder features → a distribution over one latent vector.

Every guide owns an encoder (a deterministic network from :mod:`ppvae.models.networks`)
and a linear head that maps its features to the parameters of the distribution it
returns. ``forward(x, y=None)`` returns a ``pyro.distributions`` object with batch
shape ``x.shape[:-len(event_shape)]`` and event shape ``(latent_dim,)``.

This module holds the Gaussian guides (diagonal, low-rank, full-rank covariance);
the normalising-flow guides live in :mod:`ppvae.models.flows`, and the registry of
guides by name is :data:`ppvae.models.registry.GUIDES`.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Transform, transform_to

from ppvae.models.constraints import softplus_greater_than
from ppvae.models.programs import ProgramModule

__all__ = [
    "Guide",
    "DiagonalNormalGuide",
    "LowRankNormalGuide",
    "FullRankNormalGuide",
]


class Guide(ProgramModule):
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
    #: Maps an unconstrained encoder output onto a standard deviation above 1e-5
    #: (``1e-5 + softplus``), so that log q stays finite where the softplus underflows.
    to_scale: Transform = transform_to(softplus_greater_than(1e-5))

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
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
        return dist.Normal(loc, self.to_scale(raw_scale), validate_args=False).to_event(1)


class LowRankNormalGuide(Guide):
    """Gaussian q(z | x) = N(μ(x), S (I + V Vᵀ) S) with S = diag σ(x) and V of rank ``rank``.

    This is the diagonal-plus-low-rank family D + F Fᵀ (with D = S², F = S V), which
    captures the leading posterior correlations at a cost linear in ``latent_dim``.
    Emitting V rather than F keeps the capacitance matrix I + Vᵀ V that
    :class:`~pyro.distributions.LowRankMultivariateNormal` factorises well conditioned
    however small σ(x) gets (with F the matrix is I + Fᵀ D⁻¹ F, whose Cholesky
    factorisation fails in single precision once σ(x) is tiny).

    Parameters
    ----------
    encoder
        Feature network.
    latent_dim
        Size of the latent vector.
    rank
        Number of columns of the covariance factor.

    References
    ----------
    Rezende, Mohamed & Wierstra (2014), "Stochastic Backpropagation and Approximate
    Inference in Deep Generative Models", ICML (rank-one plus diagonal covariance).
    Ong, Nott & Smith (2018), "Gaussian Variational Approximation With a Factor
    Covariance Structure", Journal of Computational and Graphical Statistics.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, rank: int = 2) -> None:
        super().__init__(encoder, latent_dim)
        if int(rank) < 1:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.rank = int(rank)
        self.head = nn.Linear(encoder.out_features, (2 + self.rank) * self.latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        d = self.latent_dim
        out = self.head(self.encoder(x, y))
        loc, raw_scale, v = out.split([d, d, d * self.rank], dim=-1)
        scale = self.to_scale(raw_scale)
        cov_factor = scale.unsqueeze(-1) * v.reshape(*v.shape[:-1], d, self.rank)
        return dist.LowRankMultivariateNormal(loc, cov_factor, scale**2, validate_args=False)


class FullRankNormalGuide(Guide):
    """Gaussian q(z | x) = N(μ(x), L(x) L(x)ᵀ) with a full lower-triangular Cholesky factor.

    The head emits ``latent_dim (latent_dim + 1) / 2`` entries of L; the diagonal goes
    through :attr:`Guide.to_scale` so that L is a valid Cholesky factor.

    References
    ----------
    Titsias & Lázaro-Gredilla (2014), "Doubly Stochastic Variational Bayes for
    non-Conjugate Inference", ICML (Cholesky-factor reparameterisation).
    """

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__(encoder, latent_dim)
        d = self.latent_dim
        rows, cols = torch.tril_indices(d, d)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        self.head = nn.Linear(encoder.out_features, d + d * (d + 1) // 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        d = self.latent_dim
        loc, entries = self.head(self.encoder(x, y)).split([d, d * (d + 1) // 2], dim=-1)
        tril = loc.new_zeros(*loc.shape[:-1], d, d)
        tril[..., self._rows, self._cols] = entries
        diag = self.to_scale(tril.diagonal(dim1=-2, dim2=-1))
        scale_tril = tril.tril(-1) + torch.diag_embed(diag)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)
