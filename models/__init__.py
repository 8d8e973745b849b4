"""Model components: priors, likelihoods, networks, guides and VAE variants."""

import pyro

# Parameters live in their modules, not in Pyro's global store, so that two models
# can be built and trained in one process (Pyro's recommended setting for
# PyTorch-style training).
pyro.settings.set(module_local_params=True)

from ppvae.models.distributions import DiscretizedLogistic  # noqa: E402
from ppvae.models.flows import FlowGuide, IAFGuide, SplineFlowGuide  # noqa: E402
from ppvae.models.guides import (  # noqa: E402
    GUIDES,
    DiagonalNormalGuide,
    FullRankNormalGuide,
    Guide,
    LowRankNormalGuide,
    make_guide,
)
from ppvae.models.hierarchical import TwoLayerVAE  # noqa: E402
from ppvae.models.likelihoods import (  # noqa: E402
    LIKELIHOODS,
    BernoulliLikelihood,
    BinomialLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    Likelihood,
    PoissonLikelihood,
    make_likelihood,
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
    PRIORS,
    ARDPrior,
    LearnedNormal,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    StudentTPrior,
    make_prior,
)
from ppvae.models.vae import VAE  # noqa: E402
from ppvae.models.vamp import VampPrior  # noqa: E402

__all__ = [
    "VAE",
    "TwoLayerVAE",
    "Prior",
    "StandardNormal",
    "LearnedNormal",
    "MixtureOfGaussians",
    "VampPrior",
    "StudentTPrior",
    "ARDPrior",
    "PRIORS",
    "make_prior",
    "Likelihood",
    "BernoulliLikelihood",
    "BinomialLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "PoissonLikelihood",
    "CategoricalLikelihood",
    "DiscretizedLogisticLikelihood",
    "DiscretizedLogistic",
    "LIKELIHOODS",
    "make_likelihood",
    "Guide",
    "DiagonalNormalGuide",
    "LowRankNormalGuide",
    "FullRankNormalGuide",
    "FlowGuide",
    "IAFGuide",
    "SplineFlowGuide",
    "GUIDES",
    "make_guide",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "LinearGaussianModel",
    "PosteriorGuide",
    "LinearGuide",
    "ppca_max_log_likelihood",
]
