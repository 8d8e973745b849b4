"""The registries of named components, built in one place, and :func:`build`.

Every component that a string can name (``prior="vamp"``, ``guide="iaf"``,
``encoder="conv"``) is listed here, after all component modules are imported: no
module adds entries to another module's table as a side effect of being imported.
:func:`build` turns a registered name or a module instance into a component; a new
component is a class in its own module plus one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ppvae.models.flows import IAFGuide, SplineFlowGuide
from ppvae.models.guides import DiagonalNormalGuide, FullRankNormalGuide, LowRankNormalGuide
from ppvae.models.likelihoods import (
    BernoulliLikelihood,
    BinomialLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    Likelihood,
    PoissonLikelihood,
)
from ppvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from ppvae.models.pixel_likelihoods import CategoricalLikelihood, DiscretizedLogisticLikelihood
from ppvae.models.priors import (
    ARDPrior,
    LearnedNormal,
    MixtureOfGaussians,
    StandardNormal,
    StudentTPrior,
)
from ppvae.models.vamp import VampPrior

__all__ = ["Registry", "PRIORS", "LIKELIHOODS", "GUIDES", "ENCODERS", "DECODERS", "build"]


class Registry(dict[str, Callable[..., nn.Module]]):
    """Component factories by name, for one kind of component.

    A ``dict`` from name to class (or any factory returning a module), with what
    :func:`build` needs to say what went wrong.

    Parameters
    ----------
    kind
        What the components are, for messages (``"prior"``).
    entries
        Name → factory.
    accepts
        The type an instance must have to be used as it is.
    hint
        What to pass instead of a name, for messages (``"a ppvae.models.Prior instance"``).
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, Callable[..., nn.Module]],
        *,
        accepts: type = nn.Module,
        hint: str = "a torch.nn.Module",
    ) -> None:
        super().__init__(entries)
        self.kind = kind
        self.accepts = accepts
        self.hint = hint


PRIORS = Registry(
    "prior",
    {
        "normal": StandardNormal,
        "learned_normal": LearnedNormal,
        "mixture": MixtureOfGaussians,
        "vamp": VampPrior,
        "student_t": StudentTPrior,
        "ard": ARDPrior,
    },
    hint="a ppvae.models.Prior instance",
)
LIKELIHOODS = Registry(
    "likelihood",
    {
        "bernoulli": BernoulliLikelihood,
        "binomial": BinomialLikelihood,
        "continuous_bernoulli": ContinuousBernoulliLikelihood,
        "gaussian": GaussianLikelihood,
        "poisson": PoissonLikelihood,
        "categorical": CategoricalLikelihood,
        "discretized_logistic": DiscretizedLogisticLikelihood,
    },
    # The VAE asks a likelihood for its parameter shape and support: any module won't do.
    accepts=Likelihood,
    hint="a ppvae.models.Likelihood instance",
)
GUIDES = Registry(
    "guide",
    {
        "diagonal": DiagonalNormalGuide,
        "lowrank": LowRankNormalGuide,
        "fullrank": FullRankNormalGuide,
        "iaf": IAFGuide,
        "nsf": SplineFlowGuide,
    },
    hint="a ppvae.models.Guide instance",
)
ENCODERS = Registry("encoder", {"mlp": MLPEncoder, "conv": ConvEncoder})
DECODERS = Registry("decoder", {"mlp": MLPDecoder, "conv": ConvDecoder})


def build(registry: Registry, spec: str | nn.Module, /, **kwargs: Any) -> nn.Module:
    """Turn a registered name or a module instance into a component.

    Parameters
    ----------
    registry
        One of :data:`PRIORS`, :data:`LIKELIHOODS`, :data:`GUIDES`, :data:`ENCODERS`,
        :data:`DECODERS` (or a :class:`Registry` of one's own).
    spec
        A name in ``registry``, or an instance of ``registry.accepts``, which is
        returned as it is (the extension path: ``prior=MyPrior(...)``).
    **kwargs
        Constructor arguments of the named component; ignored for an instance.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        ``spec`` is neither a registered name nor an accepted instance; the message
        lists the registered names.
    """
    if isinstance(spec, registry.accepts):
        return spec
    try:
        factory = registry[spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown {registry.kind} {spec!r}: choose one of {sorted(registry)} "
            f"or pass {registry.hint}"
        ) from None
    return factory(**kwargs)
