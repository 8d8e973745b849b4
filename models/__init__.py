"""Model components: priors, likelihoods, networks, guides and VAE variants.

The registries of components by name (:data:`PRIORS`, :data:`LIKELIHOODS`,
:data:`GUIDES`, :data:`ENCODERS`, :data:`DECODERS`) and :func:`build` live in
:mod:`ppvae.models.registry`, which imports every component module first.

Importing this package changes no global Pyro setting: see :mod:`ppvae.models.programs`
for how the models work both under Pyro's global param store (``pyro.infer.SVI``) and with
module-local parameters (ppvae's own entry points).
"""

from ppvae.models.constraints import softplus_greater_than
from ppvae.models.distributions import DiscretizedLogistic
from ppvae.models.flows import FlowGuide, IAFGuide, SplineFlowGuide
from ppvae.models.guides import (
    DiagonalNormalGuide,
    FullRankNormalGuide,
    Guide,
    LowRankNormalGuide,
)
from ppvae.models.hierarchical import TwoLayerVAE
from ppvae.models.likelihoods import (
    BernoulliLikelihood,
    BinomialLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    Likelihood,
    PoissonLikelihood,
)
from ppvae.models.linear_gaussian import (
    LinearGaussianModel,
    LinearGuide,
    PosteriorGuide,
    ppca_max_log_likelihood,
)
from ppvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from ppvae.models.pixel_likelihoods import (
    CategoricalLikelihood,
    DiscretizedLogisticLikelihood,
)
from ppvae.models.priors import (
    ARDPrior,
    LearnedNormal,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    StudentTPrior,
)
from ppvae.models.programs import ProgramModule, local_params, program
from ppvae.models.registry import (
    DECODERS,
    ENCODERS,
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    Registry,
    build,
)
from ppvae.models.vae import VAE
from ppvae.models.vamp import VampPrior
from ppvae.models.vq import VQVAE
from ppvae.models.vq_codebook import Codebook
from ppvae.models.vq_prior import PixelCNNPrior

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
    "ProgramModule",
    "local_params",
    "program",
]
