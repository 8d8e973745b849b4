"""ppvae: variational autoencoders written as Pyro probabilistic programs.

The public API is a short curated list; everything else lives in the submodules
:mod:`ppvae.data`, :mod:`ppvae.models` and :mod:`ppvae.inference`.
"""

import warnings
from importlib.metadata import PackageNotFoundError, version

import tqdm

# Pyro's MCMC logger imports tqdm.auto, which in Jupyter without ipywidgets warns
# "IProgress not found" on import, although ppvae's own bars are plain tqdm. The filter
# holds only while Pyro is imported: the caller's warning filters stay as they were.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "IProgress not found", tqdm.TqdmWarning)
    import pyro.infer  # noqa: F401

from ppvae.augment import augment  # noqa: E402
from ppvae.data import Dataset, load_dataset  # noqa: E402
from ppvae.inference import (  # noqa: E402
    IWAE_ELBO,
    TCVAE_ELBO,
    VQ_ELBO,
    AnnealedCapacityELBO,
    BatchLoader,
    BDMCResult,
    History,
    LogLikelihoodResult,
    RefineSettings,
    SoftVQ_ELBO,
    TrainingDivergedError,
    ais_log_likelihood,
    bdmc,
    bits_per_dim,
    checkpoint_digest,
    compare,
    exact_log_likelihood,
    fit,
    khat_summary,
    load,
    log_likelihood,
    save,
    vq_elbo,
)
from ppvae.models import VAE, VQVAE, PixelCNNPrior, TwoLayerVAE  # noqa: E402

try:
    __version__ = version("ppvae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "load_dataset",
    "Dataset",
    "BatchLoader",
    "VAE",
    "TwoLayerVAE",
    "fit",
    "History",
    "log_likelihood",
    "LogLikelihoodResult",
    "RefineSettings",
    "ais_log_likelihood",
    "bdmc",
    "BDMCResult",
    "IWAE_ELBO",
    "TCVAE_ELBO",
    "AnnealedCapacityELBO",
    "compare",
    "disentanglement_metrics",
    "khat_summary",
    "TrainingDivergedError",
    "save",
    "load",
    "augment",
    "checkpoint_digest",
    "VQVAE",
    "VQ_ELBO",
    "SoftVQ_ELBO",
    "vq_elbo",
    "exact_log_likelihood",
    "bits_per_dim",
    "PixelCNNPrior",
]


def __getattr__(name: str) -> object:
    # ppvae.disentanglement_metrics loads scikit-learn on first use (see ppvae.inference).
    if name == "disentanglement_metrics":
        from ppvae.inference import disentanglement_metrics

        return disentanglement_metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
