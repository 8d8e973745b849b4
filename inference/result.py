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
from ppvae.inference.khat import khat_threshold

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
        The ELBO estimate mean_k log w_nk of the guide's draws (the bound the model is
        trained on; with a proposal callable or AIS alone, the mean log-weight of its
        draws, a stochastic lower bound).
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
        Other per-datapoint outputs: of the ``diagnostics`` callable, of a proposal
        (``guide_offset``, ``guide_scale_ratio`` of the refined proposal, NaN where it
        was not used) or of AIS (``accept_rate``, ``step_size``).
    proposal
        Which proposal produced each datapoint's estimate: ``"guide"``, ``"refine"``,
        ``"custom"`` (a proposal callable) or ``"ais"``.
    guide_only
        The estimate with the guide alone, kept for comparison when another proposal
        re-estimated some datapoints.
    mc_stderr_approximate
        Per datapoint: 0.5 < k-hat ≤ threshold, where the weights' variance may be
        infinite and the s.e. is approximate. (Above the threshold the s.e. is NaN.)
    mean_mc_variance
        Monte Carlo variance of :attr:`mean` when the datapoints' errors are correlated
        (global latent sites drawn once per particle for a whole batch); ``None`` when
        they are independent and :attr:`mc_stderr` adds up the per-datapoint errors.
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
    proposal: list[str] | None = None
    guide_only: LogLikelihoodResult | None = None
    mc_stderr_approximate: torch.Tensor | None = None
    mean_mc_variance: float | None = None

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
        """Monte Carlo standard error of :attr:`mean`, sqrt(Σ se_n²)/N.

        NaN when any datapoint's s.e. is NaN (its k-hat rejects the estimate): a Monte
        Carlo error of the mean is then not supported by the diagnostics. With global
        latent sites, the variance accounts for the datapoints sharing each draw of θ.
        """
        se = self.mc_stderr_per_datapoint
        if bool(se.isnan().any()):
            return math.nan
        if self.mean_mc_variance is not None:
            return math.sqrt(max(self.mean_mc_variance, 0.0))
        return float(se.square().sum().sqrt() / len(self))

    @property
    def khat_threshold(self) -> float:
        """The k-hat above which an estimate is rejected, min(1 − 1/log10 K, 0.7)."""
        return khat_threshold(self.num_samples)

    @property
    def num_refined(self) -> int:
        """How many datapoints the refined proposal (or a proposal callable) re-estimated."""
        return sum(p in ("refine", "custom") for p in self.proposal or [])

    @property
    def num_without_stderr(self) -> int:
        """How many datapoints have no Monte Carlo s.e. (k-hat above the threshold)."""
        return int(self.mc_stderr_per_datapoint.isnan().sum())

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
        mc = (
            f"MC s.e. {self.mc_stderr:.2g}"
            if math.isfinite(self.mc_stderr)
            else f"no MC s.e. ({self.num_without_stderr} datapoints rejected by k-hat)"
        )
        text = (
            f"log p(x) = {self.mean:.2f} ± {self.stderr:.2f} (data s.e.), {mc}, "
            f"ELBO {self.elbo:.2f}, K={self.num_samples}, N={len(self)}"
        )
        if self.num_refined:
            text += f", refined {self.num_refined}"
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
            "num_refined": self.num_refined,
            "num_without_stderr": self.num_without_stderr,
        }
        out = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
        }
        for name in ("per_datapoint", "mc_stderr_per_datapoint", "elbo_per_datapoint"):
            out[name] = _floats(getattr(self, name))
        for name in DIAGNOSTIC_FIELDS:
            out[name] = _floats(getattr(self, name))
        out["extras"] = {k: _floats(v) for k, v in self.extras.items()}
        out["proposal"] = list(self.proposal) if self.proposal is not None else None
        out["mc_stderr_approximate"] = _floats(self.mc_stderr_approximate)
        if self.guide_only is not None:
            out["guide_only"] = {
                k: v for k, v in self.guide_only.to_dict().items() if not isinstance(v, list | dict)
            }
        return out
