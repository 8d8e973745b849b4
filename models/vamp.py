"""The VampPrior: a mixture of the guide's posteriors at learned pseudo-inputs."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints, transform_to

from ppvae.models.constraints import softplus_greater_than
from ppvae.models.priors import Prior

__all__ = ["VampPrior"]


class VampPrior(Prior):
    """Variational mixture of posteriors p(z) = (1/K) Σ_k q(z | u_k) over pseudo-inputs u_k.

    The pseudo-inputs are learned together with the VAE. They are stored
    unconstrained and mapped into the likelihood's value range
    (:meth:`Likelihood.value_range`) by ``transform_to`` of its constraint:
    ``low + (high - low) · sigmoid`` for a bounded range (binary, counts out of a
    total, 8-bit levels), ``low + softplus`` for a range bounded below (Poisson
    counts) and the identity for the reals. The paper clips with a hardtanh instead;
    the smooth map keeps a gradient for pseudo-inputs that reach the edge of the
    range. Pseudo-inputs are continuous even when the data are binary or counts: the
    encoder only needs real-valued inputs.

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

    With a flow guide (IAF, NSF), q(z | u_k) is a flow conditioned on u_k's context;
    each latent is then evaluated under every component by expanding it along the
    component axis (:class:`_ExpandedMixture`), since a conditioned flow broadcasts its
    context only against inputs with a matching component axis. That costs the flow's
    inverse on K times as many rows as a Gaussian guide's closed form.

    Raises
    ------
    ValueError
        At construction of the VAE, for a conditional VAE (the guide needs labels).

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
        self._to_range = transform_to(constraints.real)
        if learn_weights:
            self.logits = nn.Parameter(torch.zeros(self.num_components))
        else:
            self.register_buffer("logits", torch.zeros(self.num_components))

    def setup(self, vae: nn.Module) -> None:
        if getattr(vae, "num_labels", None) is not None:
            raise ValueError(
                "the VampPrior does not support a conditional VAE (num_labels set): "
                "q(z | u, y) would need labels for the pseudo-inputs"
            )
        # A plain reference, not a submodule: the guide's parameters belong to the VAE,
        # and registering them here too would list them twice.
        self.__dict__["_guide_net"] = vae.guide_net
        value_range = getattr(vae.likelihood, "value_range", None)
        self._range = tuple(value_range()) if value_range is not None else self._range
        self._to_range = transform_to(_range_constraint(*self._range))
        shape = (self.num_components, *vae.event_shape)
        ref = next(vae.guide_net.parameters(), torch.empty(0))
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
            batch = self._guide_net(self.pseudo_inputs()).batch_shape
        if tuple(batch) != (self.num_components,):
            raise ValueError(
                f"the guide returned batch shape {tuple(batch)} for {self.num_components} "
                "pseudo-inputs: the VampPrior needs a guide that maps a batch of inputs "
                "to a batch of distributions"
            )

    def _unconstrain(self, u: torch.Tensor) -> torch.Tensor:
        # Initial values on the edge of the range (a 0 pixel) move 1e-3 of the range
        # inside it, where the inverse map is finite.
        low, high = self._range
        if math.isfinite(low) and math.isfinite(high):
            margin = 1e-3 * (high - low)
            return self._to_range.inv(u.clamp(low + margin, high - margin))
        if math.isfinite(low):
            return self._to_range.inv(u.clamp(min=low + 1e-3))
        return u.clone()

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs in data space, shape ``(K, *event_shape)``."""
        if "raw_inputs" not in self._parameters:
            raise RuntimeError("VampPrior.setup(vae) must run first (the VAE constructor does)")
        return self._to_range(self.raw_inputs)

    def forward(self) -> dist.Distribution:
        u = self.pseudo_inputs()
        components = self._guide_net(u)
        mixing = dist.Categorical(logits=self.logits, validate_args=False)
        if getattr(self._guide_net, "gaussian", False):
            return dist.MixtureSameFamily(mixing, components, validate_args=False)
        return _ExpandedMixture(mixing, components, validate_args=False)


class _ExpandedMixture(dist.MixtureSameFamily):
    """A mixture whose components see each value expanded along the component axis.

    :class:`~torch.distributions.MixtureSameFamily` evaluates a value of shape
    ``(*S, D)`` as ``(*S, 1, D)`` and relies on broadcasting against the K components;
    a conditional flow's network expands its ``(K, H)`` context to the input's batch
    shape, which needs the input to carry the K axis itself.
    """

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pad(x)
        k = self.mixture_distribution.logits.shape[-1]
        event = x.shape[x.dim() - self._event_ndims :]
        batch = x.shape[: x.dim() - self._event_ndims - 1]
        log_prob_x = self.component_distribution.log_prob(x.expand(*batch, k, *event))
        log_mix_prob = torch.log_softmax(self.mixture_distribution.logits, dim=-1)
        return torch.logsumexp(log_prob_x + log_mix_prob, dim=-1)


def _range_constraint(low: float, high: float) -> constraints.Constraint:
    """The constraint of a value range: an interval, a lower bound, or the reals."""
    if math.isfinite(low) and math.isfinite(high):
        return constraints.interval(low, high)
    if math.isfinite(low):
        return softplus_greater_than(low)
    return constraints.real
