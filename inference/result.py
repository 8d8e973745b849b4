"""The result type of every estimator of log p(x): per-datapoint estimates and their errors.

:func:`ppvae.inference.importance.log_likelihood` returns a :class:`LogLikelihoodResult`;
any new estimator of log p(x) (a better proposal, AIS) returns one too, so that comparison,
diagnostics, the ArviZ export and the command-line app read every estimate the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ppvae.inference.diagnostics import to_inference_data

__all__ = ["DIAGNOSTIC_FIELDS", "LogLikelihoodResult"]

# The per-datapoint diagnostics a result carries in fields of its own (others go to extras).
DIAGNOSTIC_FIELDS = ("khat", "ess", "reliable")


def _floats(t: torch.Tensor | None) -> list | None:
    if t is None:
        return None
    return [v if isinstance(v, bool) or math.isfinite(v) else None for v in t.tolist()]


@dataclass(repr=False)
class LogLikelihoodResult:
    """Per-datapoint importance-sampled log-likelihoods and their uncertainties.

    Attributes
    ----------
    per_datapoint
        log p̂(x_n), shape ``(N,)``, float64.
    mc_stderr_per_datapoint
        Monte Carlo standard error of each log p̂(x_n) (delta method; NaN when K = 1).
    elbo_per_datapoint
        The ELBO estimate mean_k log w_nk from the same draws.
    num_samples
        K, the number of particles per datapoint.
    log_weights
        The ``(N, K)`` float64 log-weights, when requested.
    data_fingerprint
        A short hash of the data (and labels), to tell results on different data apart.
    seed
        The seed the estimate was drawn with, if any.
    khat, ess, reliable
        Per-datapoint diagnostics (Pareto k-hat, effective sample size, verdict), filled
        by a ``diagnostics`` callable or by :mod:`ppvae.inference.diagnostics`.
    extras
        Other per-datapoint outputs of the ``diagnostics`` callable.
    """

    per_datapoint: torch.Tensor
    mc_stderr_per_datapoint: torch.Tensor
    elbo_per_datapoint: torch.Tensor
    num_samples: int
    log_weights: torch.Tensor | None = None
    data_fingerprint: str = ""
    seed: int | None = None
    khat: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    reliable: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.per_datapoint.shape[0])

    @property
    def mean(self) -> float:
        """The average log p̂(x_n) over datapoints."""
        return float(self.per_datapoint.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over datapoints, sd/√N.

        The uncertainty of the test-set average as an estimate of the expected
        log-likelihood under the data distribution: use it to compare models.
        """
        n = len(self)
        return float(self.per_datapoint.std() / math.sqrt(n)) if n > 1 else math.nan

    @property
    def mc_stderr(self) -> float:
        """Monte Carlo standard error of :attr:`mean`, sqrt(Σ se_n²)/N."""
        return float(self.mc_stderr_per_datapoint.square().sum().sqrt() / len(self))

    @property
    def elbo(self) -> float:
        """The average ELBO over datapoints."""
        return float(self.elbo_per_datapoint.mean())

    @property
    def gap(self) -> float:
        """``mean − elbo``: how much the K-particle estimate gains over the ELBO."""
        return self.mean - self.elbo

    def summary(self) -> str:
        """One line: estimate, standard errors, ELBO, K and N."""
        text = (
            f"log p(x) = {self.mean:.2f} ± {self.stderr:.2f} (data s.e.), "
            f"MC s.e. {self.mc_stderr:.2g}, ELBO {self.elbo:.2f}, "
            f"K={self.num_samples}, N={len(self)}"
        )
        if self.reliable is not None:
            text += f", reliable {float(self.reliable.double().mean()):.0%}"
        return text

    def __repr__(self) -> str:
        return f"LogLikelihoodResult({self.summary()})"

    def to_inference_data(self, **kwargs: Any) -> Any:
        """Export as ``arviz.InferenceData``: see
        :func:`ppvae.inference.diagnostics.to_inference_data` (ArviZ loads on this first use)."""
        return to_inference_data(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary and per-datapoint lists (non-finite values become None).

        The log-weights are left out: they are large and not needed to compare results.
        """
        out: dict[str, Any] = {
            "mean": self.mean,
            "stderr": self.stderr,
            "mc_stderr": self.mc_stderr,
            "elbo": self.elbo,
            "gap": self.gap,
            "num_samples": int(self.num_samples),
            "num_datapoints": len(self),
            "data_fingerprint": self.data_fingerprint,
            "seed": self.seed,
        }
        out = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
        }
        for name in ("per_datapoint", "mc_stderr_per_datapoint", "elbo_per_datapoint"):
            out[name] = _floats(getattr(self, name))
        for name in DIAGNOSTIC_FIELDS:
            out[name] = _floats(getattr(self, name))
        out["extras"] = {k: _floats(v) for k, v in self.extras.items()}
        return out
