"""The figures of an evaluation: log-likelihoods, k-hat (the guide's beside the final
estimate's), effective sample sizes and importance sampling against AIS.

:func:`evaluation_figures` reads the per-datapoint record ``evaluate`` stores
(``loglik_<split>.pt``) and draws with :mod:`ppvae.plots`;
:func:`ppvae.app.figures.make_run_figures` saves them with the run's other figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppvae import plots

__all__ = ["evaluation_figures"]


def evaluation_figures(loglik: dict[str, Any], split: str) -> list[tuple[str, Any, str, str]]:
    """The figures of an evaluation record: (file name, figure, title, caption) each."""
    s = loglik.get("num_samples")
    estimator = loglik.get("estimator") or f"importance sampling with S = {s} draws from the guide"
    out = [
        (
            "loglik_hist.png",
            plots.plot_loglik_hist(loglik["per_datapoint"], loglik.get("elbo_per_datapoint")),
            "Log-likelihood per datapoint",
            f"Estimated log p̂(x) of each {split} datapoint ({estimator}), and the guide's "
            "ELBO; the gap between them is the looseness of the bound.",
        )
    ]
    if loglik.get("khat") is not None:
        out.append(_khat_figure(loglik, int(s)))
    if loglik.get("ess") is not None:
        ess = np.asarray(loglik["ess"], dtype=float)
        out.append(
            (
                "ess.png",
                plots.plot_ess(ess, num_samples=int(s or ess.max())),
                "Effective sample size",
                "Effective sample size of each datapoint's normalised importance weights "
                "(out of S) in the final estimate: low values mean few draws dominate it.",
            )
        )
    if loglik.get("ais_per_datapoint") is not None:
        n = len(loglik["ais_per_datapoint"])
        out.append(
            (
                "ais.png",
                plots.plot_is_vs_ais(
                    loglik["per_datapoint"][:n],
                    loglik["ais_per_datapoint"],
                    loglik["mc_stderr_per_datapoint"][:n],
                    loglik["ais_mc_stderr_per_datapoint"],
                ),
                "Importance sampling vs AIS",
                f"The final estimate minus annealed importance sampling on the first {n} "
                f"{split} datapoints, with ±2 Monte Carlo s.e. of the difference; both are "
                "stochastic lower bounds, so the lower one is the likely biased one.",
            )
        )
    return out


def _khat_figure(loglik: dict[str, Any], s: int) -> tuple[str, Any, str, str]:
    thr = float(loglik["khat_threshold"])
    meaning = (
        f"Below the sample-size-aware threshold {thr:.2f} an estimate is reliable; above 0.7 "
        "the proposal's tails are too light for the posterior and the estimate may be badly "
        "biased; above 1 it is unreliable whatever S."
    )
    guide = loglik.get("guide_only_khat")
    if guide is None:
        fig = plots.plot_khat(loglik["khat"], num_samples=s)
        caption = f"PSIS k-hat of each datapoint's importance weights. {meaning}"
    else:
        refined = sum(p != "guide" for p in loglik.get("proposal_per_datapoint") or [])
        n = len(loglik["khat"])
        fig = plots.plot_khat_comparison(
            guide, loglik["khat"], num_samples=s, final_title=f"final (refined on {refined} of {n})"
        )
        caption = (
            "PSIS k-hat of each datapoint's importance weights with the guide alone (left) "
            f"and in the final estimate (right), where {refined} of {n} datapoints were "
            f"re-estimated with a refined proposal. {meaning}"
        )
    return "khat.png", fig, "Pareto k-hat diagnostics", caption
