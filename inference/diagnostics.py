"""Reliability diagnostics of importance-sampled log-likelihoods, and ArviZ export.

This is the only module of ppvae that imports ArviZ, and it does so on first use, in
:func:`_arviz`: the library's one deliberate lazy import, which keeps ``import ppvae`` from
loading ArviZ (and xarray with it) until a function here needs it.

Pareto k-hat
    For each datapoint, the K importance weights w_k = p(x, z_k) / q(z_k | x) of the
    guide's particles are passed to ArviZ's ``psislw`` (Pareto smoothed importance
    sampling), which fits a generalised Pareto distribution to the largest weights. Its
    shape k-hat says how heavy the weights' tail is, hence whether the estimate
    log (1/K Σ_k w_k) can be trusted; :mod:`ppvae.inference.khat` holds the rule
    (reliable when k-hat ≤ min(1 − 1/log10 K, 0.7)) and the summary in words. With
    K ≤ 20, ``psislw`` has too few tail draws and reports k-hat = inf. Weights equal up
    to round-off (the guide is the exact posterior) have no tail at all: their k-hat is
    reported as −inf, the limit of a generalised Pareto distribution shrinking to a point.
    Round-off is judged at the precision the weights were *computed* in (float32 weights
    widened to float64 keep float32's round-off). Zero weights (log-weight −inf: the
    proposal drew z where p(x, z) = 0) are harmless for the estimate, which counts them
    in K, but they carry no mass: the tail is fitted to the draws that do, the ESS counts
    only those, and fewer than 21 of them cannot be judged (k-hat = inf).

InferenceData
    :func:`to_inference_data` (and :func:`ppvae.inference.resampling.inference_data`,
    which adds importance-resampled posterior draws) build ``arviz.InferenceData``
    with the groups ``posterior`` (latent draws per datapoint), ``log_likelihood`` (the
    integrated log-likelihood log p̂(x_i), so that ``arviz.loo`` and ``arviz.compare``
    return the right numbers), ``sample_stats`` (per-datapoint estimates and
    diagnostics) and ``observed_data``; see :func:`to_inference_data`.

References
----------
Yao, Vehtari, Simpson & Gelman (2018), "Yes, but Did It Work?: Evaluating Variational
Inference", ICML.
Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto Smoothed Importance Sampling",
JMLR 25(72).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ppvae.inference.khat import (
    MAX_UNFITTABLE_SAMPLES,
    as_numpy,
    khat_summary,
    khat_threshold,
    khat_values,
)

if TYPE_CHECKING:  # pragma: no cover
    import arviz as az

__all__ = [
    "psis_diagnostics",
    "add_diagnostics",
    "khat_elpd_data",
    "to_inference_data",
    "mcmc_summary",
]

# Log-weights spread over less than this many nats (or this many round-off units of the
# precision they were computed in, relative to their magnitude) are equal up to round-off:
# a generalised Pareto fit would only see rounding noise (quantised float32 noise even
# defeats it, leaving too few distinct tail values), and the estimate's relative error is
# below the spread whatever the tail, so they count as constant. An exact float32 guide
# spreads its log-weights over at most ~30 units on probabilistic PCA (latent 1 to 50).
_CONSTANT_SPREAD = 1e-8
_CONSTANT_ULPS = 256


def _arviz() -> ModuleType:
    """ArviZ, imported on first use: the one lazy import of the library (see the module doc)."""
    import arviz

    return arviz


def _logsumexp(a: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """log Σ exp over the last axis, stable for ±inf entries."""
    return torch.logsumexp(torch.from_numpy(a), dim=-1, keepdim=keepdims).numpy()


def _source_eps(lw: np.ndarray, dtype: torch.dtype, eps: float | None) -> np.ndarray:
    """Per row, the round-off unit of the precision the log-weights were computed in."""
    if eps is not None:
        return np.full(lw.shape[0], float(eps))
    own = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    out = np.full(lw.shape[0], own)
    if dtype == torch.float64:
        # float32 weights widened to float64 (log_likelihood keeps float64 log-weights)
        # keep float32's round-off: every finite value is then a float32 number, which a
        # row computed in float64 is not (each value has 29 more significant bits).
        with np.errstate(over="ignore"):
            narrow = (lw.astype(np.float32).astype(np.float64) == lw) | ~np.isfinite(lw)
        out[narrow.all(1)] = np.finfo(np.float32).eps
    return out


def _equal_up_to_roundoff(lw: np.ndarray, finite: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Per row: are the finite log-weights equal up to round-off (see ``_CONSTANT_ULPS``)?"""
    hi = np.where(finite, lw, -np.inf).max(1)
    lo = np.where(finite, lw, np.inf).min(1)
    with np.errstate(invalid="ignore"):
        scale = np.maximum(1.0, np.maximum(np.abs(hi), np.abs(lo)))
        tol = np.maximum(_CONSTANT_SPREAD, _CONSTANT_ULPS * eps * scale)
        return (hi - lo) <= tol


def _psis(lw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed log-weights, k-hat and ESS of rows of finite log-weights."""
    # normalize=False keeps the weights' level, so their logsumexp is the estimate.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        smoothed, khat = _arviz().psislw(lw, reff=1.0, normalize=False)
    smoothed = np.asarray(smoothed)
    return smoothed, np.asarray(khat), _ess(smoothed)


def _ess(lw: np.ndarray) -> np.ndarray:
    """1 / Σ_k w̃_k² of the normalised weights: zero weights do not count."""
    return 1.0 / np.square(np.exp(lw - _logsumexp(lw, keepdims=True))).sum(-1)


def psis_diagnostics(
    log_weights: torch.Tensor, *, eps: float | None = None
) -> dict[str, torch.Tensor]:
    """Per-datapoint PSIS diagnostics of importance log-weights.

    Parameters
    ----------
    log_weights
        log p(x_i, z_ik) − log q(z_ik | x_i), shape ``(B, K)``: particles on the last axis,
        which is the axis ``arviz.psislw`` smooths along.
    eps
        Round-off unit (machine epsilon) of the precision the log-weights were computed
        in, which decides when they are equal up to round-off. By default that of their
        dtype, and float32's for float64 rows whose values are all float32 numbers
        (float32 weights widened to float64).

    Returns
    -------
    dict of tensors of shape ``(B,)`` (float64, on the input's device)
        ``khat``: Pareto shape of the weights' tail (−inf for weights equal up to
        round-off; inf when K ≤ 20 is too small to fit the tail, or when a row holds NaN,
        +inf or no finite weight, in which case ``ess`` is 0). ``ess``: effective sample
        size 1 / Σ_k w̃_k² of the normalised *Pareto-smoothed* weights w̃, in [1, K] (the
        ``n_eff`` of the loo package). ``psis_log_likelihood``: the PSIS estimate
        logsumexp_k(log w̃_k) − log K with the unnormalised smoothed weights, an
        alternative to the plain estimate with less variance and some bias when k-hat is
        large. ``reliable``: k-hat ≤ :func:`khat_threshold` (K).

        Zero weights (−inf) count in K but carry no mass. Only the M finite ones are
        smoothed and fitted: k-hat is PSIS's on those (−inf when they are equal, as when
        the weights take two values, 0 and c; inf when M ≤ 20), the ESS is at most M,
        and ``reliable`` uses :func:`khat_threshold` (M), the draws the fit had.
    """
    if log_weights.dim() != 2:
        raise ValueError(f"log_weights must have shape (B, K), got {tuple(log_weights.shape)}")
    lw = as_numpy(log_weights).astype(np.float64)
    b, k = lw.shape
    if k < 2:
        raise ValueError(f"PSIS needs at least 2 particles per datapoint, got {k}")
    finite = np.isfinite(lw)
    mass = finite.sum(1)
    khat, ess = np.full(b, np.inf), np.zeros(b)
    psis_ll = _logsumexp(lw) - math.log(k)
    valid = ~(np.isnan(lw).any(1) | np.isposinf(lw).any(1) | (mass == 0))
    equal = valid & _equal_up_to_roundoff(lw, finite, _source_eps(lw, log_weights.dtype, eps))
    zeros = valid & (mass < k)
    # Equal weights have no tail; beside zero weights only if enough carry the mass.
    flat = equal & (~zeros | (mass > MAX_UNFITTABLE_SAMPLES))
    khat[flat], ess[flat] = -np.inf, mass[flat]
    fit = valid & ~flat & ~zeros
    if fit.any():
        smoothed, khat[fit], ess[fit] = _psis(lw[fit])
        psis_ll[fit] = _logsumexp(smoothed) - math.log(k)
    for i in np.flatnonzero(zeros & ~flat):
        if mass[i] <= MAX_UNFITTABLE_SAMPLES:
            ess[i] = _ess(lw[i])  # khat stays inf: too few draws carry mass to judge
            continue
        row = lw[i].copy()
        smoothed, kss, _ = _psis(row[finite[i]][None])
        row[finite[i]] = smoothed[0]
        khat[i], ess[i] = kss[0], _ess(row)
        psis_ll[i] = _logsumexp(row) - math.log(k)
    fitted_on, which = np.unique(np.maximum(mass, 2), return_inverse=True)
    thresholds = np.array([khat_threshold(int(m)) for m in fitted_on])[which]
    out = {"khat": khat, "ess": ess, "psis_log_likelihood": psis_ll}
    dev = log_weights.device
    result = {n: torch.as_tensor(v, dtype=torch.float64, device=dev) for n, v in out.items()}
    result["reliable"] = torch.as_tensor(khat <= thresholds, device=dev)
    return result


def add_diagnostics(res: Any) -> Any:
    """Return a copy of a ``LogLikelihoodResult`` with ``khat``, ``ess`` and ``reliable`` set.

    The result must hold its log-weights (``log_likelihood(..., return_log_weights=True)``);
    the PSIS estimate goes into ``extras["psis_log_likelihood"]``. Passing
    ``diagnostics=psis_diagnostics`` to ``log_likelihood`` gives the same fields without
    keeping the N × K weights.
    """
    if getattr(res, "log_weights", None) is None:
        raise ValueError(
            "this result holds no log-weights: compute it with "
            "log_likelihood(..., return_log_weights=True), or pass "
            "diagnostics=psis_diagnostics to fill k-hat while it runs"
        )
    d = psis_diagnostics(torch.as_tensor(res.log_weights))
    extras = {**getattr(res, "extras", {}), "psis_log_likelihood": d["psis_log_likelihood"]}
    return dataclasses.replace(
        res, khat=d["khat"], ess=d["ess"], reliable=d["reliable"], extras=extras
    )


@functools.cache
def _khat_data_type() -> type:
    """k-hat values in the container ``arviz.plot_khat`` reads (it takes no bare arrays)."""

    class KhatData(_arviz().ELPDData):
        def __str__(self) -> str:
            return khat_summary(self.pareto_k.values, int(self.n_samples))["verdict"]

        __repr__ = __str__

    return KhatData


def khat_elpd_data(res: Any) -> az.ELPDData:
    """k-hat of a result packed for ``arviz.plot_khat`` (``pareto_k`` over ``obs``, ``good_k``).

    A result without k-hat but with its log-weights gets them from :func:`add_diagnostics`.
    """
    if res.khat is None and getattr(res, "log_weights", None) is not None:
        res = add_diagnostics(res)
    khat, s = khat_values(res, None)
    pareto_k = _data_array(khat, ("obs",), "pareto_k")
    return _khat_data_type()(
        data=[s, khat.size, pareto_k, khat_threshold(s)],
        index=["n_samples", "n_data_points", "pareto_k", "good_k"],
    )


def _data_array(values: np.ndarray, dims: tuple[str, ...], name: str) -> Any:
    ds = _arviz().dict_to_dataset({name: values}, dims={name: list(dims)}, default_dims=[])
    return ds[name]


def to_inference_data(
    res: Any,
    *,
    posterior_draws: Any = None,
    observed: Any = None,
    labels: Any = None,
    site: str = "z",
    observed_site: str = "x",
) -> az.InferenceData:
    """Export a ``LogLikelihoodResult`` (and optional posterior draws) as InferenceData.

    Groups (``obs`` indexes the datapoints 0..N−1 in every group):

    ``sample_stats`` (always; over ``obs``, no chain/draw)
        ``log_marginal_likelihood`` (the importance-sampling estimate of log p(x_i)),
        ``mc_stderr``, ``elbo``; ``khat``, ``ess``, ``reliable`` when known or computable
        from the log-weights; ``log_weight`` over (``obs``, ``particle``) when the result
        holds them. Attributes ``num_samples``, ``khat_threshold``, ``seed`` (−1 for
        none) and ``data_fingerprint``.
    ``posterior`` (with ``posterior_draws``)
        Variable ``site`` over (``chain``, ``draw``, ``obs``, ``latent``): draws of each
        datapoint's latent vector, given as ``(C, D, N, L)`` or ``(D, N, L)``.
    ``log_likelihood`` (with ``posterior_draws``)
        Variable ``observed_site`` over (``chain``, ``draw``, ``obs``): the *integrated*
        log-likelihood log p̂(x_i) = ``log_marginal_likelihood``, the same at every draw.
        The model's parameters are point estimates and z_i is integrated out, so the
        pointwise log-likelihood does not vary over the draws of z. This is the choice that
        keeps ``arviz.loo``/``arviz.compare`` right: they return elpd = Σ_i log p̂(x_i)
        with its standard error (paired differences in ``compare``) and p_loo = 0, but,
        seeing constant values, report every Pareto k as inf and warn — ignore those k;
        the reliability of log p̂ is in ``sample_stats.khat``. The alternatives mislead
        them silently: log p(x_i | z) at posterior draws turns PSIS-LOO into a smoothed
        harmonic-mean estimator of p(x_i) (leaving x_i out returns z_i to its prior),
        biased by nats per datapoint with k-hats that can look good; the importance
        log-weights are not log-likelihoods of posterior draws at all (they live in
        ``sample_stats.log_weight``).
    ``observed_data`` (with ``observed``)
        ``observed_site`` over (``obs``, ``feature``): the data flattened per datapoint.
    ``constant_data`` (with ``labels``)
        ``y`` over ``obs``.
    """
    arviz = _arviz()
    n = int(res.per_datapoint.shape[0])
    obs = {"obs": np.arange(n)}
    if res.khat is None and getattr(res, "log_weights", None) is not None:
        res = add_diagnostics(res)
    stats = {
        "log_marginal_likelihood": as_numpy(res.per_datapoint),
        "mc_stderr": as_numpy(res.mc_stderr_per_datapoint),
        "elbo": as_numpy(res.elbo_per_datapoint),
    }
    for name in ("khat", "ess"):
        if getattr(res, name, None) is not None:
            stats[name] = as_numpy(getattr(res, name))
    if getattr(res, "reliable", None) is not None:
        stats["reliable"] = as_numpy(res.reliable).astype(bool)
    dims: dict[str, list[str]] = {name: ["obs"] for name in stats}
    if getattr(res, "log_weights", None) is not None:
        stats["log_weight"], dims["log_weight"] = as_numpy(res.log_weights), ["obs", "particle"]
    attrs = {
        "num_samples": int(res.num_samples),
        "khat_threshold": khat_threshold(int(res.num_samples)),
        "seed": -1 if res.seed is None else int(res.seed),
        "data_fingerprint": str(res.data_fingerprint),
        "estimator": "importance sampling with the guide as proposal",
    }
    groups = {
        "sample_stats": arviz.dict_to_dataset(
            stats, coords=obs, dims=dims, default_dims=[], attrs=attrs
        )
    }
    if posterior_draws is not None:
        z = as_numpy(posterior_draws)
        z = z[None] if z.ndim == 3 else z
        if z.ndim != 4 or z.shape[2] != n:
            raise ValueError(
                f"posterior_draws must be shaped (chain, draw, {n}, latent) or "
                f"(draw, {n}, latent), got {tuple(as_numpy(posterior_draws).shape)}"
            )
        groups["posterior"] = arviz.dict_to_dataset(
            {site: z}, coords=obs, dims={site: ["obs", "latent"]}
        )
        integrated = np.broadcast_to(stats["log_marginal_likelihood"], z.shape[:3]).copy()
        groups["log_likelihood"] = arviz.dict_to_dataset(
            {observed_site: integrated}, coords=obs, dims={observed_site: ["obs"]}
        )
    if observed is not None:
        xo = as_numpy(observed).reshape(n, -1)
        groups["observed_data"] = arviz.dict_to_dataset(
            {observed_site: xo},
            coords=obs,
            dims={observed_site: ["obs", "feature"]},
            default_dims=[],
        )
    if labels is not None:
        groups["constant_data"] = arviz.dict_to_dataset(
            {"y": as_numpy(labels).reshape(n)}, coords=obs, dims={"y": ["obs"]}, default_dims=[]
        )
    return arviz.InferenceData(**groups)


def mcmc_summary(
    samples: Any, *, var_name: str = "z", dims: list[str] | None = None
) -> pd.DataFrame:
    """``arviz.summary`` (mean, sd, HDI, MCSE, bulk/tail ESS, rank-normalised R-hat).

    Parameters
    ----------
    samples
        Draws shaped ``(chain, draw, *shape)``, a tensor or an array.
    var_name, dims
        Name of the variable and of its non-chain/draw dimensions.

    Returns
    -------
    pandas.DataFrame
        One row per element of ``shape``, in row-major order, unrounded.

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-Normalization, Folding,
    and Localization: An Improved R-hat for Assessing Convergence of MCMC", Bayesian
    Analysis 16(2).
    """
    arviz = _arviz()
    a = as_numpy(samples)
    if a.ndim < 2:
        raise ValueError(f"samples must be shaped (chain, draw, ...), got {a.shape}")
    idata = arviz.from_dict(posterior={var_name: a}, dims={var_name: dims} if dims else None)
    return arviz.summary(idata, round_to="none")
