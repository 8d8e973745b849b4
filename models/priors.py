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
"""

from __future__ import annotations

import math
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
    "VampPrior",
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


class VampPrior(Prior):
    """Variational mixture of posteriors p(z) = (1/K) Σ_k q(z | u_k) over pseudo-inputs u_k.

    The pseudo-inputs are learned together with the VAE. They are stored
    unconstrained and mapped into the likelihood's value range
    (:meth:`Likelihood.value_range`): ``low + (high - low) · sigmoid`` for a bounded
    range (binary, counts out of a total, 8-bit levels), ``low + softplus`` for a
    range bounded below (Poisson counts) and the identity for the reals. The paper
    clips with a hardtanh instead; the smooth map keeps a gradient for pseudo-inputs
    that reach the edge of the range. Pseudo-inputs are continuous even when the
    data are binary or counts: the encoder only needs real-valued inputs.

    Parameters
    ----------
    latent_dim
        Size of the latent vector.
    num_components
        Number K of pseudo-inputs.
    init
        Optional initial pseudo-inputs of shape ``(K, *event_shape)``, e.g. K
        training images (clamped just inside the value range). Without it the
        unconstrained values start as ``init_noise`` times standard normal noise,
        i.e. close to the middle of a bounded range.
    init_noise
        Standard deviation of the initial noise on the unconstrained scale.
    learn_weights
        Learn the mixture weights (the paper fixes them to 1/K).

    Raises
    ------
    ValueError
        At construction of the VAE, for a non-Gaussian guide (a flow cannot be
        evaluated at a batch of pseudo-inputs and at a batch of latents that do not
        correspond) and for a conditional VAE (the guide needs labels).

    References
    ----------
    Tomczak & Welling (2018), "VAE with a VampPrior", AISTATS.
    """

    def __init__(
        self,
        latent_dim: int,
        num_components: int = 50,
        *,
        init: torch.Tensor | None = None,
        init_noise: float = 0.1,
        learn_weights: bool = False,
    ) -> None:
        super().__init__(latent_dim)
        self.num_components = int(num_components)
        self.init_noise = float(init_noise)
        self._init = init
        self._range = (-math.inf, math.inf)
        if learn_weights:
            self.logits = nn.Parameter(torch.zeros(self.num_components))
        else:
            self.register_buffer("logits", torch.zeros(self.num_components))

    def setup(self, vae: VAE) -> None:
        if not getattr(vae.q, "gaussian", False):
            raise ValueError(
                "the VampPrior needs a Gaussian guide ('diagonal', 'lowrank', 'fullrank'); "
                "flows are not supported"
            )
        if getattr(vae, "num_labels", None) is not None:
            raise ValueError(
                "the VampPrior does not support a conditional VAE (num_labels set): "
                "q(z | u, y) would need labels for the pseudo-inputs"
            )
        # A plain reference, not a submodule: the guide's parameters belong to the VAE,
        # and registering them here too would list them twice.
        self.__dict__["_q"] = vae.q
        value_range = getattr(vae.likelihood, "value_range", None)
        self._range = tuple(value_range()) if value_range is not None else self._range
        shape = (self.num_components, *vae.event_shape)
        ref = next(vae.q.parameters(), torch.empty(0))
        if self._init is None:
            raw = self.init_noise * torch.randn(shape, dtype=ref.dtype, device=ref.device)
        else:
            if tuple(self._init.shape) != shape:
                raise ValueError(
                    f"init has shape {tuple(self._init.shape)}, expected {shape} "
                    "(num_components, *event_shape)"
                )
            raw = self._unconstrain(self._init.to(ref.device, ref.dtype))
        self._init = None
        self.raw_inputs = nn.Parameter(raw)
        with torch.no_grad():
            batch = self._q(self.pseudo_inputs()).batch_shape
        if tuple(batch) != (self.num_components,):
            raise ValueError(
                f"the guide returned batch shape {tuple(batch)} for {self.num_components} "
                "pseudo-inputs: the VampPrior needs a guide that maps a batch of inputs "
                "to a batch of distributions"
            )

    def _unconstrain(self, u: torch.Tensor) -> torch.Tensor:
        low, high = self._range
        if math.isfinite(low) and math.isfinite(high):
            p = ((u - low) / (high - low)).clamp(1e-3, 1 - 1e-3)
            return torch.logit(p)
        if math.isfinite(low):
            return _inverse_softplus((u - low).clamp(min=1e-3))
        return u.clone()

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs in data space, shape ``(K, *event_shape)``."""
        if "raw_inputs" not in self._parameters:
            raise RuntimeError("VampPrior.setup(vae) must run first (the VAE constructor does)")
        low, high = self._range
        raw = self.raw_inputs
        if math.isfinite(low) and math.isfinite(high):
            return low + (high - low) * torch.sigmoid(raw)
        if math.isfinite(low):
            return low + F.softplus(raw)
        return raw

    def forward(self) -> dist.Distribution:
        u = self.pseudo_inputs()
        components = self._q(u)
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


PRIORS: dict[str, type[Prior]] = {
    "normal": StandardNormal,
    "learned_normal": LearnedNormal,
    "mixture": MixtureOfGaussians,
    "vamp": VampPrior,
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
