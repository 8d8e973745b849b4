"""Model components: priors, likelihoods, networks, guides and VAE variants."""

import pyro

# Parameters live in their modules, not in Pyro's global store, so that two models
# can be built and trained in one process (Pyro's recommended setting for
# PyTorch-style training).
pyro.settings.set(module_local_params=True)

from ppvae.models.guides import GUIDES, DiagonalNormalGuide, Guide, make_guide  # noqa: E402
from ppvae.models.likelihoods import (  # noqa: E402
    LIKELIHOODS,
    BernoulliLikelihood,
    BinomialLikelihood,
    Likelihood,
    make_likelihood,
)
from ppvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder  # noqa: E402
from ppvae.models.priors import PRIORS, Prior, StandardNormal, make_prior  # noqa: E402
from ppvae.models.vae import VAE  # noqa: E402

__all__ = [
    "VAE",
    "Prior",
    "StandardNormal",
    "PRIORS",
    "make_prior",
    "Likelihood",
    "BernoulliLikelihood",
    "BinomialLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
    "Guide",
    "DiagonalNormalGuide",
    "GUIDES",
    "make_guide",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
]
