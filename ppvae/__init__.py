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

from ppvae.data import Dataset, load_dataset  # noqa: E402
from ppvae.inference import (  # noqa: E402
    IWAE_ELBO,
    BatchLoader,
    BDMCResult,
    History,
    LogLikelihoodResult,
    RefineSettings,
    TrainingDivergedError,
    ais_log_likelihood,
    bdmc,
    compare,
    fit,
    khat_summary,
    load,
    log_likelihood,
    save,
)
from ppvae.models import VAE, TwoLayerVAE  # noqa: E402

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
    "compare",
    "khat_summary",
    "TrainingDivergedError",
    "save",
    "load",
]
