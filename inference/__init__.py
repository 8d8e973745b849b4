"""Inference: SVI training, objectives, importance sampling, checkpoints and diagnostics.

The ArviZ-backed functions (:mod:`ppvae.inference.diagnostics`, and
:mod:`ppvae.inference.posterior_checks` which uses it) are imported on first use, so
that ``import ppvae`` does not load ArviZ.
"""

from typing import Any

from ppvae.inference.amortization import AmortizationGap, amortization_gap
from ppvae.inference.checkpoint import load, load_checkpoint, save
from ppvae.inference.compare import compare
from ppvae.inference.history import History
from ppvae.inference.importance import LogLikelihoodResult, log_likelihood
from ppvae.inference.khat import khat_labels, khat_summary, khat_threshold
from ppvae.inference.objectives import IWAE_ELBO
from ppvae.inference.scaling import LatentScale, kl_weight
from ppvae.inference.step import StepInfo, TrainingDivergedError, evaluate, train_step
from ppvae.inference.train import fit
from ppvae.inference.weights import per_datapoint_log_weights

_LAZY = {
    "psis_diagnostics": "ppvae.inference.diagnostics",
    "add_diagnostics": "ppvae.inference.diagnostics",
    "to_inference_data": "ppvae.inference.diagnostics",
    "inference_data": "ppvae.inference.diagnostics",
    "khat_elpd_data": "ppvae.inference.diagnostics",
    "nuts_check": "ppvae.inference.posterior_checks",
    "NutsCheck": "ppvae.inference.posterior_checks",
}

__all__ = [
    "fit",
    "train_step",
    "evaluate",
    "StepInfo",
    "TrainingDivergedError",
    "History",
    "LatentScale",
    "kl_weight",
    "IWAE_ELBO",
    "log_likelihood",
    "LogLikelihoodResult",
    "per_datapoint_log_weights",
    "khat_threshold",
    "khat_labels",
    "khat_summary",
    "compare",
    "amortization_gap",
    "AmortizationGap",
    "save",
    "load",
    "load_checkpoint",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ppvae.inference' has no attribute {name!r}")
