"""Inference: SVI training, objectives, importance sampling, checkpoints and diagnostics.

Every submodule imports only Pyro, torch, other ``ppvae.inference`` modules and
``ppvae.models``, never the library's front door or the command-line app. ArviZ is
loaded on the first call that needs it (:mod:`ppvae.inference.diagnostics`), so that
``import ppvae`` does not load it.
"""

from ppvae.inference.ais import AISSettings
from ppvae.inference.amortization import AmortizationGap, amortization_gap
from ppvae.inference.annealed import ais_log_likelihood
from ppvae.inference.batches import BatchLoader, TrainingData, binarize_once
from ppvae.inference.bdmc import BDMCResult, bdmc
from ppvae.inference.checkpoint import checkpoint_digest, load, load_checkpoint, save
from ppvae.inference.compare import compare
from ppvae.inference.diagnostics import (
    add_diagnostics,
    khat_elpd_data,
    psis_diagnostics,
    to_inference_data,
)
from ppvae.inference.disentangle_objectives import TCVAE_ELBO, AnnealedCapacityELBO
from ppvae.inference.exact import bits_per_dim, exact_log_likelihood
from ppvae.inference.history import History
from ppvae.inference.importance import log_likelihood
from ppvae.inference.iwae import IWAE_ELBO
from ppvae.inference.khat import khat_labels, khat_summary, khat_threshold
from ppvae.inference.local_target import LocalTarget
from ppvae.inference.objectives import make_elbo
from ppvae.inference.posterior_checks import NutsCheck, nuts_check
from ppvae.inference.refine import RefineSettings
from ppvae.inference.resampling import inference_data
from ppvae.inference.result import LogLikelihoodResult
from ppvae.inference.rng import seeded
from ppvae.inference.scaling import LatentScale, kl_weight
from ppvae.inference.step import StepInfo, TrainingDivergedError, train_step, validation_elbo
from ppvae.inference.train import fit
from ppvae.inference.vq_objectives import VQ_ELBO, SoftVQ_ELBO, vq_elbo
from ppvae.inference.weights import per_datapoint_log_weights

__all__ = [
    "fit",
    "train_step",
    "validation_elbo",
    "StepInfo",
    "TrainingDivergedError",
    "History",
    "BatchLoader",
    "TrainingData",
    "binarize_once",
    "seeded",
    "LatentScale",
    "kl_weight",
    "make_elbo",
    "IWAE_ELBO",
    "TCVAE_ELBO",
    "AnnealedCapacityELBO",
    "log_likelihood",
    "LogLikelihoodResult",
    "RefineSettings",
    "LocalTarget",
    "ais_log_likelihood",
    "AISSettings",
    "bdmc",
    "BDMCResult",
    "per_datapoint_log_weights",
    "khat_threshold",
    "khat_labels",
    "khat_summary",
    "psis_diagnostics",
    "add_diagnostics",
    "to_inference_data",
    "inference_data",
    "khat_elpd_data",
    "compare",
    "disentanglement_metrics",
    "amortization_gap",
    "AmortizationGap",
    "nuts_check",
    "NutsCheck",
    "save",
    "load",
    "load_checkpoint",
    "checkpoint_digest",
    "exact_log_likelihood",
    "bits_per_dim",
    "VQ_ELBO",
    "SoftVQ_ELBO",
    "vq_elbo",
]


def __getattr__(name: str) -> object:
    # The disentanglement scores need scikit-learn and SciPy's statistics, which take longer
    # to load than torch and Pyro together and add warning filters on import: they load
    # when first asked for, so that importing ppvae stays quick and changes nothing global.
    if name == "disentanglement_metrics":
        from ppvae.inference.disentanglement import disentanglement_metrics

        return disentanglement_metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
