"""Observation models p(x | z): modules that turn decoder outputs into distributions.

A likelihood declares the shape of the parameters it needs per datapoint
(:meth:`Likelihood.param_shape`), turns a decoder's output into a
``pyro.distributions`` object whose event dims cover the whole datapoint
(:meth:`Likelihood.forward`), and checks that data lies in its support
(:meth:`Likelihood.check_support`) with a message that says what to do instead.
:meth:`Likelihood.value_range` tells other components (the VampPrior's
pseudo-inputs) where data can lie. The 8-bit image likelihoods live in
:mod:`ppvae.models.pixel_likelihoods`; the registry of likelihoods by name is
:data:`ppvae.models.registry.LIKELIHOODS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions import transform_to

from ppvae.models.constraints import softplus_greater_than
from ppvae.models.programs import ProgramModule

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "BinomialLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "PoissonLikelihood",
]


def _range(x: torch.Tensor) -> str:
    return f"[{x.min().item():g}, {x.max().item():g}]"


class Likelihood(ProgramModule):
    """Base class for observation models.

    Subclasses set :attr:`name`, implement :meth:`distribution` and, when their
    support is narrower than the reals, :meth:`check_support` and :meth:`value_range`.

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    """

    name: str = "likelihood"
    params_per_feature: int = 1

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def param_shape(self) -> tuple[int, ...]:
        """Shape of the decoder output for one datapoint."""
        if self.params_per_feature == 1:
            return self.event_shape
        return (*self.event_shape, self.params_per_feature)

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        """Distribution over one feature per parameter entry (no event dims yet)."""
        raise NotImplementedError

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return self.distribution(params).to_event(len(self.event_shape))

    def value_range(self) -> tuple[float, float]:
        """Smallest and largest value a feature can take (``±inf`` when unbounded)."""
        return (-math.inf, math.inf)

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` when ``x`` lies outside the support."""
        if not torch.isfinite(x).all():
            raise ValueError(f"likelihood {self.name!r}: data contains NaN or infinite values")

    def _fail(self, what: str, x: torch.Tensor, fix: str) -> None:
        raise ValueError(f"likelihood {self.name!r}: {what} (data range {_range(x)}): {fix}")


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels parameterised by logits."""

    name = "bernoulli"

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=params, validate_args=False)

    def value_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if not ((x == 0) | (x == 1)).all():
            self._fail(
                "values outside {0,1}",
                x,
                "binarize (binarize='dynamic' or 'static'), "
                "or use likelihood='continuous_bernoulli'",
            )


class BinomialLikelihood(Likelihood):
    """Counts out of a known total, e.g. the 0..16 grey levels of ``digits``.

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    total_count
        Number of trials per feature.
    """

    name = "binomial"

    def __init__(self, event_shape: Sequence[int], total_count: int = 16) -> None:
        super().__init__(event_shape)
        self.total_count = int(total_count)

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Binomial(total_count=self.total_count, logits=params, validate_args=False)

    def value_range(self) -> tuple[float, float]:
        return (0.0, float(self.total_count))

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if not ((x >= 0) & (x <= self.total_count) & (x == x.round())).all():
            self._fail(
                f"values are not integers in 0..{self.total_count}",
                x,
                "pass the right total_count (likelihood_kwargs={'total_count': ...}), "
                "or use likelihood='gaussian'",
            )


class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli on [0, 1], the normalised form of a Bernoulli on grey levels.

    References
    ----------
    Loaiza-Ganem & Cunningham (2019), "The continuous Bernoulli: fixing a pervasive
    error in variational autoencoders", NeurIPS.
    """

    name = "continuous_bernoulli"

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=params, validate_args=False)

    def value_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if not ((x >= 0) & (x <= 1)).all():
            self._fail(
                "values outside [0, 1]",
                x,
                "scale the data to [0, 1] (e.g. divide by its maximum), "
                "or use likelihood='gaussian'",
            )


class GaussianLikelihood(Likelihood):
    """Independent Gaussian features with a learned standard deviation.

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    scale
        ``"feature"``: one learned scale per feature, shared by all datapoints (the
        decoder outputs the mean only), held in :attr:`feature_scale`.
        ``"datapoint"``: the decoder outputs the mean and an unconstrained scale for
        every feature of every datapoint.
    init_scale
        Initial standard deviation of the ``"feature"`` variant.
    min_scale
        Lower bound of the scale (``min_scale + softplus`` of its unconstrained value);
        without it the likelihood of a constant feature (e.g. a border pixel) grows
        without bound.
    """

    name = "gaussian"

    def __init__(
        self,
        event_shape: Sequence[int],
        scale: str = "feature",
        init_scale: float = 1.0,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(event_shape)
        if scale not in ("feature", "datapoint"):
            raise ValueError(f"scale must be 'feature' or 'datapoint', got {scale!r}")
        if not init_scale > min_scale:
            raise ValueError(f"init_scale ({init_scale}) must exceed min_scale ({min_scale})")
        self.scale_mode = scale
        self.min_scale = float(min_scale)
        positive = softplus_greater_than(self.min_scale)
        if scale == "feature":
            init = torch.full(self.event_shape, float(init_scale))
            self.feature_scale = PyroParam(init, constraint=positive)
        else:
            self.params_per_feature = 2
            self._to_scale = transform_to(positive)

    def _loc_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale_mode == "feature":
            return params, self.feature_scale
        loc, unconstrained = params.unbind(-1)
        return loc, self._to_scale(unconstrained)

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        loc, scale = self._loc_scale(params)
        return dist.Normal(loc, scale, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The decoder's location output."""
        return self._loc_scale(params)[0]


class PoissonLikelihood(Likelihood):
    """Independent Poisson counts with rate ``min_rate + softplus(decoder output)``.

    Softplus rather than exp: the rate then grows linearly, not exponentially, with
    the decoder output, so a large output early in training does not produce an
    enormous rate and gradient; a small floor keeps the rate positive where the
    softplus underflows, so positive counts never get probability zero. The map is
    ``transform_to(softplus_greater_than(min_rate))``.

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    min_rate
        Floor added to the rate.
    """

    name = "poisson"

    def __init__(self, event_shape: Sequence[int], min_rate: float = 1e-6) -> None:
        super().__init__(event_shape)
        self.min_rate = float(min_rate)
        self._to_rate = transform_to(softplus_greater_than(self.min_rate))

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Poisson(self._to_rate(params), validate_args=False)

    def value_range(self) -> tuple[float, float]:
        return (0.0, math.inf)

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if not ((x >= 0) & (x == x.round())).all():
            self._fail(
                "values are not nonnegative integers",
                x,
                "use likelihood='gaussian' for real-valued data",
            )
