"""Model components: priors, likelihoods, networks, guides and VAE variants.

The registries of components by name (:data:`PRIORS`, :data:`LIKELIHOODS`,
:data:`GUIDES`, :data:`ENCODERS`, :data:`DECODERS`) and :func:`build` live in
:mod:`ppvae.models.registry`, which imports every component module first.
"""

import pyro

# Parameters live in their modules, not in Pyro's global store, so that two models
# can be built and trained in one process (Pyro's recommended setting for
# PyTorch-style training).
pyro.settings.set(module_local_params=True)

from ppvae.models.constraints import softplus_greater_than  # noqa: E402
from ppvae.models.distributions import DiscretizedLogistic  # noqa: E402
from ppvae.models.flows import FlowGuide, IAFGuide, SplineFlowGuide  # noqa: E402
from ppvae.models.guides import (  # noqa: E402
    DiagonalNormalGuide,
    FullRankNormalGuide,
    Guide,
    LowRankNormalGuide,
)
from ppvae.models.hierarchical import TwoLayerVAE  # noqa: E402
from ppvae.models.likelihoods import (  # noqa: E402
    BernoulliLikelihood,
    BinomialLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    Likelihood,
    PoissonLikelihood,
)
from ppvae.models.linear_gaussian import (  # noqa: E402
    LinearGaussianModel,
    LinearGuide,
    PosteriorGuide,
    ppca_max_log_likelihood,
)
from ppvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder  # noqa: E402
from ppvae.models.pixel_likelihoods import (  # noqa: E402
    CategoricalLikelihood,
    DiscretizedLogisticLikelihood,
)
from ppvae.models.priors import (  # noqa: E402
    ARDPrior,
    LearnedNormal,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    StudentTPrior,
)
from ppvae.models.registry import (  # noqa: E402
    DECODERS,
    ENCODERS,
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    Registry,
    build,
)
from ppvae.models.vae import VAE  # noqa: E402
from ppvae.models.vamp import VampPrior  # noqa: E402
from ppvae.models.vq import VQVAE  # noqa: E402
from ppvae.models.vq_codebook import Codebook  # noqa: E402
from ppvae.models.vq_prior import PixelCNNPrior  # noqa: E402

__all__ = [
    "VAE",
    "TwoLayerVAE",
    "VQVAE",
    "Codebook",
    "PixelCNNPrior",
    "Prior",
    "StandardNormal",
    "LearnedNormal",
    "MixtureOfGaussians",
    "VampPrior",
    "StudentTPrior",
    "ARDPrior",
    "Likelihood",
    "BernoulliLikelihood",
    "BinomialLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "PoissonLikelihood",
    "CategoricalLikelihood",
    "DiscretizedLogisticLikelihood",
    "DiscretizedLogistic",
    "Guide",
    "DiagonalNormalGuide",
    "LowRankNormalGuide",
    "FullRankNormalGuide",
    "FlowGuide",
    "IAFGuide",
    "SplineFlowGuide",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "Registry",
    "PRIORS",
    "LIKELIHOODS",
    "GUIDES",
    "ENCODERS",
    "DECODERS",
    "build",
    "softplus_greater_than",
    "LinearGaussianModel",
    "PosteriorGuide",
    "LinearGuide",
    "ppca_max_log_likelihood",
]
