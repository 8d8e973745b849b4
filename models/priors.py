"""Priors p(z): modules whose ``forward()`` returns the distribution of one latent vector.

The model calls ``prior()`` *outside* the data plate, so a prior may draw global
latent variables (hyperpriors) with ``pyro.sample`` there; such a prior also
implements :meth:`Prior.guide`, which the VAE's guide calls at the same place to
draw those global sites from a variational distribution. The distribution it
returns has event shape ``(latent_dim,)`` and a batch shape that broadcasts
against the data plate (usually ``()``; a hierarchical prior under vectorised
particles has batch shape ``(P, 1)``).

A prior that needs the rest of the model (the VampPrior pushes pseudo-inputs
through the guide) receives it in :meth:`Prior.setup`, called once by the VAE.
The VampPrior lives in :mod:`ppvae.models.vamp`; the registry of priors by name is
:data:`ppvae.models.registry.PRIORS`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch import nn

from ppvae.models.constraints import softplus_greater_than
from ppvae.models.programs import ProgramModule

__all__ = [
    "Prior",
    "StandardNormal",
    "LearnedNormal",
    "MixtureOfGaussians",
    "StudentTPrior",
    "ARDPrior",
]

# Learned scales stay above 1e-4, so that a collapsing dimension cannot make log p(z) infinite.
_SCALE = softplus_greater_than(1e-4)


class Prior(ProgramModule):
    """Base class for priors over a ``latent_dim``-vector.

    Parameters
    ----------
    latent_dim
        Size of the latent vector.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)

    def forward(self) -> dist.Distribution:
        raise NotImplementedError

    def guide(self) -> None:
        """Draw the prior's global latent sites in the guide (none by default)."""

    def setup(self, vae: nn.Module) -> None:
        """Receive the VAE that owns this prior (no-op by default)."""


class StandardNormal(Prior):
    """The isotropic standard normal N(0, I) (Kingma & Welling, 2014)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, 1.0, validate_args=False).to_event(1)


class LearnedNormal(Prior):
    """A diagonal Gaussian N(μ, diag σ²) with learned μ and σ > 1e-4 (σ = 1e-4 + softplus(ρ)).

    Initialised at N(0, I). With a flexible decoder this adds little (an affine
    map of z can be absorbed by the decoder) but it is the simplest learned prior.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.scale = PyroParam(torch.ones(self.latent_dim), constraint=_SCALE)

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


class MixtureOfGaussians(Prior):
    """A mixture of diagonal Gaussians with learned weights, means and scales.

    Parameters
    ----------
    latent_dim
        Size of the latent vector.
    num_components
        Number of mixture components K.
    init_scale
        Initial standard deviation of every component; the means start at
        independent standard-normal draws so that the components are distinct.

    References
    ----------
    Dilokthanakul et al. (2016), "Deep Unsupervised Clustering with Gaussian Mixture
    Variational Autoencoders", arXiv:1611.02648.
    """

    def __init__(self, latent_dim: int, num_components: int = 10, init_scale: float = 1.0) -> None:
        super().__init__(latent_dim)
        self.num_components = int(num_components)
        shape = (self.num_components, self.latent_dim)
        self.logits = nn.Parameter(torch.zeros(self.num_components))
        self.locs = nn.Parameter(torch.randn(shape))
        self.scales = PyroParam(torch.full(shape, float(init_scale)), constraint=_SCALE)

    def forward(self) -> dist.Distribution:
        components = dist.Normal(self.locs, self.scales, validate_args=False).to_event(1)
        mixing = dist.Categorical(logits=self.logits, validate_args=False)
        return dist.MixtureSameFamily(mixing, components, validate_args=False)


class StudentTPrior(Prior):
    """Independent Student-t latents with learned degrees of freedom, location 0, scale 1.

    Heavier tails than the Gaussian let a few datapoints sit far out in latent space
    without a large KL penalty. ``df = min_df + softplus(ρ)`` per dimension (a
    ``PyroParam`` constrained above ``min_df``); the default floor 1 keeps the mean defined.

    Parameters
    ----------
    latent_dim
        Size of the latent vector.
    init_df
        Initial degrees of freedom.
    min_df
        Lower bound of the degrees of freedom.

    References
    ----------
    Takahashi et al. (2018), "Student-t Variational Autoencoder for Robust Density
    Estimation", IJCAI.
    """

    def __init__(self, latent_dim: int, init_df: float = 5.0, min_df: float = 1.0) -> None:
        super().__init__(latent_dim)
        if not init_df > min_df:
            raise ValueError(f"init_df ({init_df}) must exceed min_df ({min_df})")
        self.min_df = float(min_df)
        # Degrees of freedom per latent dimension.
        self.df = PyroParam(
            torch.full((self.latent_dim,), float(init_df)),
            constraint=softplus_greater_than(self.min_df),
        )
        self.register_buffer("loc", torch.zeros(self.latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.StudentT(self.df, self.loc, 1.0, validate_args=False).to_event(1)


class ARDPrior(Prior):
    """Automatic relevance determination: z | τ ~ N(0, diag 1/τ), τ_j ~ Gamma(a, b).

    The precisions τ are one global latent vector shared by all datapoints, drawn
    outside the data plate at the site ``"ard_precision"``; :meth:`guide` draws them
    from a learned log-normal q(τ). Dimensions whose precision grows are switched off.
    Under vectorised particles τ has shape ``(P, 1, latent_dim)`` and the returned
    Normal has batch shape ``(P, 1)``, which broadcasts against the data plate.

    Parameters
    ----------
    latent_dim
        Size of the latent vector.
    a, b
        Shape and rate of the Gamma hyperprior.

    References
    ----------
    MacKay (1994), "Bayesian Nonlinear Modeling for the Prediction Competition",
    ASHRAE Transactions; Bishop (1999), "Bayesian PCA", NeurIPS.
    """

    site = "ard_precision"

    def __init__(self, latent_dim: int, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__(latent_dim)
        self.register_buffer("a", torch.tensor(float(a)))
        self.register_buffer("b", torch.tensor(float(b)))
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.guide_loc = nn.Parameter(torch.zeros(self.latent_dim))
        # q(τ) starts narrow on the log scale (0.1 above the floor), centred at τ = 1.
        self.guide_scale = PyroParam(torch.full((self.latent_dim,), 0.1 + 1e-4), constraint=_SCALE)

    def forward(self) -> dist.Distribution:
        hyper = dist.Gamma(self.a, self.b, validate_args=False).expand([self.latent_dim])
        tau = pyro.sample(self.site, hyper.to_event(1))
        return dist.Normal(self.loc, tau.rsqrt(), validate_args=False).to_event(1)

    def guide(self) -> None:
        q = dist.LogNormal(self.guide_loc, self.guide_scale, validate_args=False)
        pyro.sample(self.site, q.to_event(1))
