"""Model comparison on held-out log-likelihoods, paired over datapoints.

Two models evaluated on the same test set give per-datapoint estimates l_A(x_i) and
l_B(x_i). Their mean difference d̄ = mean_i (l_A − l_B) estimates the difference of
expected log-likelihoods under the data distribution, and because both are measured on
the *same* datapoints its standard error is that of the paired differences,
sd_i(l_A − l_B) / √N, usually far smaller than the two models' standard errors
combined (datapoints that are hard for one model are hard for the other). This is the
same pairing ArviZ's ``compare`` uses for elpd differences (``dse``).

Two sources of error are reported separately:

* ``diff_stderr``: sampling of the test set (the datapoints), the one that decides
  whether a difference would hold on new data;
* ``diff_mc_stderr``: Monte Carlo error of the importance-sampling estimates.

Common random numbers. :func:`ppvae.inference.importance.log_likelihood` with a given
``seed`` draws its particles from the same random stream, so two models whose guides
consume random numbers the same way (e.g. two diagonal-Gaussian guides of the same
latent size, z = μ(x) + σ(x) ε with the same ε) are evaluated on the same base noise.
Their Monte Carlo errors are then positively correlated and the MC error of the
difference is smaller than for independent streams. When both results keep their
log-weights, were computed with the same seed and the same K, the MC error of each
per-datapoint difference is estimated from the paired normalised weights (delta
method, Var_k(K w̃_A,k − K w̃_B,k) / K), which accounts for that correlation; otherwise
the two MC errors are combined as if independent.

References
----------
Vehtari, Gelman & Gabry (2017), "Practical Bayesian model evaluation using leave-one-out
cross-validation and WAIC", Statistics and Computing 27 (paired standard error of
differences).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from ppvae.inference.diagnostics import psis_diagnostics
from ppvae.inference.khat import as_numpy, khat_labels

__all__ = ["compare"]


def _check_same_data(results: Mapping[str, Any]) -> None:
    names = list(results)
    sizes = {name: len(as_numpy(results[name].per_datapoint)) for name in names}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{n!r}: {s}" for n, s in sizes.items())
        raise ValueError(f"results cover different numbers of datapoints ({detail})")
    prints = {name: getattr(results[name], "data_fingerprint", "") for name in names}
    known = {n: f for n, f in prints.items() if f}
    if len(set(known.values())) > 1:
        detail = ", ".join(f"{n!r}: {f}" for n, f in known.items())
        raise ValueError(
            f"results were computed on different data (fingerprints {detail}): compare "
            "models on the same datapoints"
        )


def _paired_mc_var(a: Any, b: Any) -> np.ndarray | None:
    """Per-datapoint MC variance of log p̂_A − log p̂_B from paired weights, if possible."""
    lw_a, lw_b = getattr(a, "log_weights", None), getattr(b, "log_weights", None)
    if lw_a is None or lw_b is None or a.seed is None or a.seed != b.seed:
        return None
    lw_a, lw_b = torch.as_tensor(lw_a).double(), torch.as_tensor(lw_b).double()
    if lw_a.shape != lw_b.shape or lw_a.shape[-1] < 2:
        return None
    k = lw_a.shape[-1]
    # log p̂ − log p ≈ mean_k (K w̃_k − 1): the difference's variance is that of the paired
    # terms over particles, divided by K.
    u = k * (torch.softmax(lw_a, -1) - torch.softmax(lw_b, -1))
    return as_numpy(u.var(-1) / k)


def _mc_stderr(res: Any, se: np.ndarray) -> float:
    """Monte Carlo s.e. of a result's mean: NaN when any datapoint's s.e. is NaN."""
    if hasattr(res, "mean_mc_variance"):
        return float(res.mc_stderr)  # accounts for datapoints that share global draws
    return float(math.sqrt(np.sum(se**2)) / len(se))


def _share_above(res: Any) -> float:
    khat = getattr(res, "khat", None)
    if khat is None and getattr(res, "log_weights", None) is not None:
        khat = psis_diagnostics(torch.as_tensor(res.log_weights))["khat"]
    if khat is None:
        return math.nan
    return float(np.mean(khat_labels(khat, int(res.num_samples)) != "good"))


def compare(results: Mapping[str, Any]) -> pd.DataFrame:
    """Rank models by mean held-out log-likelihood per datapoint.

    Parameters
    ----------
    results
        ``LogLikelihoodResult`` per model name, all computed on the same data.

    Returns
    -------
    pandas.DataFrame
        Indexed by model name, best first, with columns ``rank`` (0 = best), ``mean``
        (mean log p̂(x) per datapoint), ``stderr`` (sd over datapoints / √N),
        ``mc_stderr`` (Monte Carlo error of ``mean``), ``diff`` (best's mean minus this
        model's, ≥ 0), ``diff_stderr`` (sd of the per-datapoint differences / √N),
        ``diff_mc_stderr`` (Monte Carlo error of ``diff``; both MC errors are NaN when a
        datapoint they involve has no supported s.e.), ``paired_particles`` (whether
        ``diff_mc_stderr`` used the paired weights, see the module docstring), ``elbo``,
        ``khat_above_threshold`` (share of datapoints whose k-hat exceeds
        min(1 − 1/log10 K, 0.7), from the result's ``khat`` or its log-weights; NaN when
        neither is there), ``num_samples`` and ``seed``.

    Raises
    ------
    ValueError
        When the results cover different data (lengths or data fingerprints differ).
    """
    if not results:
        raise ValueError("compare needs at least one result")
    _check_same_data(results)
    means = {name: float(as_numpy(r.per_datapoint).mean()) for name, r in results.items()}
    order = sorted(means, key=means.get, reverse=True)
    best = results[order[0]]
    best_l = as_numpy(best.per_datapoint)
    best_se = as_numpy(best.mc_stderr_per_datapoint)
    n = len(best_l)
    rows = []
    for rank, name in enumerate(order):
        r = results[name]
        ll = as_numpy(r.per_datapoint)
        d = best_l - ll
        se = as_numpy(r.mc_stderr_per_datapoint)
        paired = None if rank == 0 else _paired_mc_var(best, r)
        if rank == 0:
            mc_var = np.zeros(n)
        elif paired is None:
            mc_var = best_se**2 + se**2
        else:
            # The paired variance is computed from the weights, but where either estimate's
            # k-hat rejected it (NaN s.e.) a delta-method variance is not supported either.
            mc_var = np.where(np.isnan(best_se) | np.isnan(se), np.nan, paired)
        rows.append(
            {
                "model": name,
                "rank": rank,
                "mean": means[name],
                "stderr": float(ll.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                "mc_stderr": _mc_stderr(r, se),
                "diff": float(d.mean()),
                "diff_stderr": float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                # A NaN (unsupported) s.e. leaves the sum unknown: it must not count as 0.
                "diff_mc_stderr": float(math.sqrt(np.sum(mc_var)) / n),
                "paired_particles": paired is not None,
                "elbo": float(as_numpy(r.elbo_per_datapoint).mean()),
                "khat_above_threshold": _share_above(r),
                "num_samples": int(r.num_samples),
                "seed": r.seed,
            }
        )
    return pd.DataFrame(rows).set_index("model")
