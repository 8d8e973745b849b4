"""Normalising-flow guides: a Gaussian from the encoder pushed through conditional flows.

Each guide's encoder head emits a location, a scale and a context vector h(x). The
flow steps are Pyro's conditional autoregressive transforms, conditioned on h(x) at
every call, in the direction where *sampling* is one network pass per step (the
inverse autoregressive direction). ``log_prob`` of the guide's own samples then costs
nothing extra: the conditioned transforms are built with ``cache_size=1`` by Pyro, so
``TransformedDistribution.log_prob`` finds each step's input in the cache instead of
inverting the flow (which would take ``latent_dim`` passes). Scoring a point the guide
did not draw still works, through the exact inverse.

Under vectorised particles Pyro expands the returned distribution to ``(P, B)`` and
the steps receive inputs ``(P, B, D)`` with a context ``(B, H)``; the autoregressive
networks broadcast the context over the leading dims.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import (
    AffineTransform,
    ConditionalAffineAutoregressive,
    ConditionalSplineAutoregressive,
    Permute,
)
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions import Transform

from ppvae.models.guides import Guide

__all__ = ["FlowGuide", "IAFGuide", "SplineFlowGuide"]


def _autoregressive_nn(
    latent_dim: int, context_dim: int, hidden_dims: Sequence[int], param_dims: list[int]
) -> ConditionalAutoRegressiveNN:
    # A fixed (identity) autoregressive order, with reversals between steps, keeps the
    # masks independent of the random seed, so a rebuilt guide matches a checkpoint.
    with warnings.catch_warnings():
        # With one latent dimension the net depends on the context only, as intended.
        warnings.filterwarnings("ignore", message="ConditionalAutoRegressiveNN input_dim = 1")
        return ConditionalAutoRegressiveNN(
            latent_dim,
            context_dim,
            list(hidden_dims),
            param_dims=param_dims,
            permutation=torch.arange(latent_dim),
        )


class FlowGuide(Guide):
    """Base class of the flow guides: encoder head → (loc, scale, context) and flow steps.

    Subclasses fill :attr:`steps` with conditional transform modules and implement
    :meth:`forward`.

    Parameters
    ----------
    encoder
        Feature network.
    latent_dim
        Size of the latent vector.
    num_flows
        Number of flow steps; the latent order is reversed between steps so that
        every coordinate can depend on every other one.
    context_dim
        Size of the context vector h(x) passed to every step.
    hidden_dims
        Hidden widths of each step's autoregressive network (each at least
        ``latent_dim``); the subclass picks a default.
    """

    gaussian = False

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        num_flows: int,
        context_dim: int,
        hidden_dims: Sequence[int],
    ) -> None:
        super().__init__(encoder, latent_dim)
        if int(num_flows) < 1:
            raise ValueError(f"num_flows must be a positive integer, got {num_flows}")
        if int(context_dim) < 1:
            raise ValueError(f"context_dim must be a positive integer, got {context_dim}")
        if not hidden_dims or min(hidden_dims) < self.latent_dim:
            raise ValueError(
                f"hidden_dims {tuple(hidden_dims)} must be non-empty with every width "
                f">= latent_dim ({self.latent_dim}), as masked autoregressive nets require"
            )
        self.num_flows = int(num_flows)
        self.context_dim = int(context_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.head = nn.Linear(encoder.out_features, 2 * self.latent_dim + self.context_dim)
        self.register_buffer(
            "_reverse", torch.arange(self.latent_dim - 1, -1, -1), persistent=False
        )
        self.steps = nn.ModuleList()

    def _encode(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.latent_dim
        loc, raw_scale, context = self.head(self.encoder(x, y)).split(
            [d, d, self.context_dim], dim=-1
        )
        return loc, self.to_scale(raw_scale), context

    def _flow(self, context: torch.Tensor) -> list[Transform]:
        """The steps conditioned on ``context``, with order reversals in between."""
        transforms: list[Transform] = []
        for i, step in enumerate(self.steps):
            if i > 0:
                transforms.append(Permute(self._reverse, cache_size=1))
            transforms.append(step.condition(context))
        return transforms


class IAFGuide(FlowGuide):
    """Inverse autoregressive flow guide.

    z₀ ~ N(μ(x), diag σ(x)²), then ``num_flows`` steps
    z_t = σ_t ⊙ z_{t-1} + (1 − σ_t) ⊙ m_t with (m_t, logit σ_t) from a MADE network of
    (z_{t-1}, h(x)) — the numerically stable update of Kingma et al. (2016, eq. 14).

    Parameters
    ----------
    encoder, latent_dim, num_flows, context_dim
        See :class:`FlowGuide`.
    hidden_dims
        Hidden widths of each step's MADE; default ``(10 * latent_dim,)``, Pyro's
        default for conditional IAF.

    References
    ----------
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "Improved
    Variational Inference with Inverse Autoregressive Flow", NeurIPS.
    Germain, Gregor, Murray & Larochelle (2015), "MADE: Masked Autoencoder for
    Distribution Estimation", ICML.
    """

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        num_flows: int = 2,
        context_dim: int = 16,
        hidden_dims: Sequence[int] | None = None,
    ) -> None:
        hidden_dims = (10 * int(latent_dim),) if hidden_dims is None else hidden_dims
        super().__init__(encoder, latent_dim, num_flows, context_dim, hidden_dims)
        for _ in range(self.num_flows):
            arn = _autoregressive_nn(self.latent_dim, self.context_dim, self.hidden_dims, [1, 1])
            self.steps.append(ConditionalAffineAutoregressive(arn, stable=True))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        loc, scale, context = self._encode(x, y)
        base = dist.Normal(loc, scale, validate_args=False).to_event(1)
        return dist.TransformedDistribution(base, self._flow(context), validate_args=False)


class SplineFlowGuide(FlowGuide):
    """Neural spline flow guide with autoregressive rational-spline steps.

    ε ~ N(0, I), then ``num_flows`` conditional spline steps (each coordinate is a
    monotonic rational spline on [−bound, bound], identity outside, whose knots a MADE
    network computes from the preceding coordinates and h(x)), then
    z = μ(x) + σ(x) ⊙ ε′. The splines act before the affine map so that their bounding
    box sits where standardised latents live, whatever the scale of the posterior.
    The steps run in the autoregressive direction where sampling is one pass per step.

    Parameters
    ----------
    encoder, latent_dim, num_flows, context_dim
        See :class:`FlowGuide`.
    count_bins
        Number of spline segments.
    bound
        Half-width of the spline's bounding box.
    order
        ``"linear"`` (rational-linear, Dolatabadi et al. 2020) or ``"quadratic"``
        (rational-quadratic, Durkan et al. 2019).
    hidden_dims
        Hidden widths of each step's MADE; default ``(10 * latent_dim,) * 2``, Pyro's
        default for conditional spline autoregressive flows.

    References
    ----------
    Durkan, Bekasov, Murray & Papamakarios (2019), "Neural Spline Flows", NeurIPS.
    Dolatabadi, Erfani & Leckie (2020), "Invertible Generative Modeling using Linear
    Rational Splines", AISTATS.
    """

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        num_flows: int = 2,
        context_dim: int = 16,
        count_bins: int = 8,
        bound: float = 3.0,
        order: str = "linear",
        hidden_dims: Sequence[int] | None = None,
    ) -> None:
        hidden_dims = (10 * int(latent_dim),) * 2 if hidden_dims is None else hidden_dims
        super().__init__(encoder, latent_dim, num_flows, context_dim, hidden_dims)
        if order not in ("linear", "quadratic"):
            raise ValueError(f"order must be 'linear' or 'quadratic', got {order!r}")
        if int(count_bins) < 2 or not bound > 0:
            raise ValueError(f"need count_bins >= 2 and bound > 0, got {count_bins}, {bound}")
        self.count_bins, self.bound, self.order = int(count_bins), float(bound), order
        k = self.count_bins
        # Widths, heights, interior derivatives, and (linear order only) the λ's.
        param_dims = [k, k, k - 1] + ([k] if order == "linear" else [])
        for _ in range(self.num_flows):
            arn = _autoregressive_nn(
                self.latent_dim, self.context_dim, self.hidden_dims, param_dims
            )
            self.steps.append(
                ConditionalSplineAutoregressive(
                    self.latent_dim, arn, count_bins=k, bound=self.bound, order=order
                )
            )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        loc, scale, context = self._encode(x, y)
        base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc), validate_args=False)
        transforms = self._flow(context)
        transforms.append(AffineTransform(loc, scale, event_dim=1, cache_size=1))
        return dist.TransformedDistribution(base.to_event(1), transforms, validate_args=False)
