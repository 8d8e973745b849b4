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
The VampPrior lives in :mod:`ppvae.models.vamp`, which registers it in :data:`PRIORS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # pragma: no cover
    from ppvae.models.vae import VAE

__all__ = [
    "Prior",
    "StandardNormal",
    "LearnedNormal",
    "MixtureOfGaussians",
    "StudentTPrior",
    "ARDPrior",
    "PRIORS",
    "make_prior",
]

_MIN_SCALE = 1e-4


def _inverse_softplus(y: torch.Tensor | float) -> torch.Tensor:
    y = torch.as_tensor(y, dtype=torch.get_default_dtype())
    return y + torch.log(-torch.expm1(-y))


class Prior(PyroModule):
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

    def setup(self, vae: VAE) -> None:
        """Receive the VAE that owns this prior (no-op by default)."""


class StandardNormal(Prior):
    """The isotropic standard normal N(0, I) (Kingma & Welling, 2014)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, 1.0, validate_args=False).to_event(1)


class LearnedNormal(Prior):
    """A diagonal Gaussian N(μ, diag σ²) with learned μ and σ = softplus(ρ) + floor.

    Initialised at N(0, I). With a flexible decoder this adds little (an affine
    map of z can be absorbed by the decoder) but it is the simplest learned prior.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(self.latent_dim))
        raw = _inverse_softplus(1.0 - _MIN_SCALE)
        self.raw_scale = nn.Parameter(raw.expand(self.latent_dim).clone())

    def forward(self) -> dist.Distribution:
        scale = F.softplus(self.raw_scale) + _MIN_SCALE
        return dist.Normal(self.loc, scale, validate_args=False).to_event(1)


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
        raw = _inverse_softplus(init_scale - _MIN_SCALE)
        self.raw_scales = nn.Parameter(raw.expand(shape).clone())

    def forward(self) -> dist.Distribution:
        scales = F.softplus(self.raw_scales) + _MIN_SCALE
        components = dist.Normal(self.locs, scales, validate_args=False).to_event(1)
        mixing = dist.Categorical(logits=self.logits, validate_args=False)
        return dist.MixtureSameFamily(mixing, components, validate_args=False)


class StudentTPrior(Prior):
    """Independent Student-t latents with learned degrees of freedom, location 0, scale 1.

    Heavier tails than the Gaussian let a few datapoints sit far out in latent space
    without a large KL penalty. ``df = softplus(ρ) + min_df`` per dimension; the
    default floor 1 keeps the mean defined.

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
        raw = _inverse_softplus(init_df - min_df)
        self.raw_df = nn.Parameter(raw.expand(self.latent_dim).clone())
        self.register_buffer("loc", torch.zeros(self.latent_dim))

    @property
    def df(self) -> torch.Tensor:
        """Degrees of freedom per latent dimension."""
        return F.softplus(self.raw_df) + self.min_df

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
        raw = _inverse_softplus(0.1)
        self.guide_raw_scale = nn.Parameter(raw.expand(self.latent_dim).clone())

    def forward(self) -> dist.Distribution:
        hyper = dist.Gamma(self.a, self.b, validate_args=False).expand([self.latent_dim])
        tau = pyro.sample(self.site, hyper.to_event(1))
        return dist.Normal(self.loc, tau.rsqrt(), validate_args=False).to_event(1)

    def guide(self) -> None:
        scale = F.softplus(self.guide_raw_scale) + _MIN_SCALE
        q = dist.LogNormal(self.guide_loc, scale, validate_args=False)
        pyro.sample(self.site, q.to_event(1))


# "vamp" is added by ppvae.models.vamp, which ppvae.models imports.
PRIORS: dict[str, type[Prior]] = {
    "normal": StandardNormal,
    "learned_normal": LearnedNormal,
    "mixture": MixtureOfGaussians,
    "student_t": StudentTPrior,
    "ard": ARDPrior,
}


def make_prior(prior: str | torch.nn.Module, latent_dim: int, **kwargs) -> torch.nn.Module:
    """Build a prior from its registered name, or pass a module instance through.

    Any ``torch.nn.Module`` whose ``forward()`` returns a distribution over one
    latent vector is accepted; :class:`Prior` adds the optional hooks.
    """
    if isinstance(prior, torch.nn.Module):
        if getattr(prior, "latent_dim", latent_dim) != latent_dim:
            raise ValueError(
                f"prior has latent_dim={prior.latent_dim} but the VAE has {latent_dim}: "
                "construct them with the same latent_dim"
            )
        return prior
    try:
        cls = PRIORS[prior]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown prior {prior!r}: choose one of {sorted(PRIORS)} "
            "or pass a ppvae.models.Prior instance"
        ) from None
    return cls(latent_dim, **kwargs)
