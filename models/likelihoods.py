"""Observation models p(x | z): modules that turn decoder outputs into distributions.

A likelihood declares the shape of the parameters it needs per datapoint
(:meth:`Likelihood.param_shape`), turns a decoder's output into a
``pyro.distributions`` object whose event dims cover the whole datapoint
(:meth:`Likelihood.forward`), and checks that data lies in its support
(:meth:`Likelihood.check_support`) with a message that says what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "BinomialLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
]


def _range(x: torch.Tensor) -> str:
    return f"[{x.min().item():g}, {x.max().item():g}]"


class Likelihood(PyroModule):
    """Base class for observation models.

    Subclasses set :attr:`name`, implement :meth:`distribution` and, when their
    support is narrower than the reals, :meth:`check_support`.

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

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if not ((x >= 0) & (x <= self.total_count) & (x == x.round())).all():
            self._fail(
                f"values are not integers in 0..{self.total_count}",
                x,
                "pass the right total_count (likelihood_kwargs={'total_count': ...}), "
                "or use likelihood='gaussian'",
            )


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "binomial": BinomialLikelihood,
}


def make_likelihood(
    likelihood: str | Likelihood, event_shape: Sequence[int], **kwargs
) -> Likelihood:
    """Build a likelihood from its registered name, or pass an instance through."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    try:
        cls = LIKELIHOODS[likelihood]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown likelihood {likelihood!r}: choose one of {sorted(LIKELIHOODS)} "
            "or pass a ppvae.models.Likelihood instance"
        ) from None
    return cls(event_shape, **kwargs)
