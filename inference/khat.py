"""Pareto k-hat: the reliability rule for importance weights, and its summary in words.

For a vector of S importance weights, the Pareto shape k-hat of their right tail
(estimated by PSIS, see :func:`ppvae.inference.diagnostics.psis_diagnostics`) decides
how far the self-normalised importance-sampling estimate can be trusted. The rule of
Vehtari et al. (2024, section 3 and table 1), which ArviZ reports as ``good_k``:

============  ==================================  =====================================
label         k-hat                               meaning
============  ==================================  =====================================
``good``      k ≤ min(1 − 1/log10 S, 0.7)         reliable; MC error ≈ 1/√ESS
``ok``        min(1 − 1/log10 S, 0.7) < k ≤ 0.7   reliable only with more samples
``bad``       0.7 < k ≤ 1                         unreliable, impractically many needed
``very bad``  k > 1, or NaN                       the weights' mean may not exist
============  ==================================  =====================================

A datapoint counts as *reliable* when it is ``good``. The ``ok`` band is empty for
S ≥ 2154, where the threshold reaches 0.7. Constant weights (k-hat = −inf) are ``good``;
with S ≤ 20 the tail cannot be fitted (k-hat = inf), which counts as ``very bad``, and
:func:`khat_summary` gives no verdict on the proposal (the threshold is ≤ 0 for S ≤ 10).
This module has no ArviZ dependency, so it can serve comparison tables and plots.

References
----------
Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto Smoothed Importance Sampling",
JMLR 25(72).
Yao, Vehtari, Simpson & Gelman (2018), "Yes, but Did It Work?: Evaluating Variational
Inference", ICML.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "KHAT_LABELS",
    "MAX_UNFITTABLE_SAMPLES",
    "khat_threshold",
    "khat_labels",
    "khat_values",
    "khat_summary",
    "measured_cause",
]

KHAT_LABELS = ("good", "ok", "bad", "very bad")
# PSIS fits no tail to this many draws or fewer (ArviZ's psislw reports k-hat = inf).
MAX_UNFITTABLE_SAMPLES = 20


def khat_threshold(num_samples: int) -> float:
    """Sample-size dependent k-hat threshold min(1 − 1/log10 S, 0.7) (Vehtari et al., 2024)."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def khat_labels(khat: Any, num_samples: int) -> np.ndarray:
    """Label each k-hat ``good``/``ok``/``bad``/``very bad`` (see the module docstring)."""
    k = np.asarray(as_numpy(khat), dtype=float)
    edges = [khat_threshold(num_samples), 0.7, 1.0]
    # NaN (a failed fit) lands in the last bin: an estimate that cannot be checked.
    idx = np.where(np.isnan(k), 3, np.searchsorted(edges, k, side="left"))
    return np.asarray(KHAT_LABELS, dtype=object)[idx]


def as_numpy(t: Any) -> np.ndarray:
    """A tensor or array-like as a NumPy array (float64 for tensors)."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t)


def khat_values(res_or_khat: Any, num_samples: int | None = None) -> tuple[np.ndarray, int]:
    """Per-datapoint k-hat as a float array, and the number of particles S it was fitted on.

    Accepts a ``LogLikelihoodResult`` (the k-hat it carries) or a bare array of k-hat
    values with ``num_samples``. Together with :func:`khat_threshold` (S) this is everything
    a k-hat plot needs.

    Raises
    ------
    ValueError
        The result carries no k-hat (it was computed with ``diagnostics=None``), or a bare
        array comes without ``num_samples``.
    """
    if hasattr(res_or_khat, "per_datapoint"):
        if res_or_khat.khat is None:
            raise ValueError(
                "this result carries no k-hat: compute it with log_likelihood(..., "
                "diagnostics='psis') (the default), or add it to a result that kept its "
                "log-weights with ppvae.inference.diagnostics.add_diagnostics(res)"
            )
        return as_numpy(res_or_khat.khat).astype(float), int(res_or_khat.num_samples)
    if num_samples is None:
        raise ValueError("pass num_samples with a bare k-hat array")
    return as_numpy(res_or_khat).astype(float).reshape(-1), int(num_samples)


def _median(values: Any) -> float:
    v = as_numpy(values).astype(float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def measured_cause(res: Any) -> str | None:
    """What the refined proposal measured about the guide on the datapoints it refined.

    Reads ``guide_offset`` (the guide's mean from the mode, in posterior standard
    deviations) and ``guide_scale_ratio`` (the guide's scales over the posterior's
    conditional scales) from ``res.extras``; None when they are not there.
    """
    extras = getattr(res, "extras", None) or {}
    if "guide_offset" not in extras or "guide_scale_ratio" not in extras:
        return None
    offset, ratio = _median(extras["guide_offset"]), _median(extras["guide_scale_ratio"])
    if not (math.isfinite(offset) and math.isfinite(ratio)):
        return None
    where = f"the guide's mean sits a median {offset:.1f} posterior s.d. from the mode"
    scales = f"its scales are {ratio:.2f}× the posterior's"
    if ratio < 0.7:
        return f"the guide is too narrow ({scales}; {where})"
    if offset >= 1.0:
        return f"{where} while {scales}: the guide is misplaced, not too narrow"
    return f"the guide's shape differs from the posterior's ({where}; {scales})"


def _refinement_note(res: Any) -> str | None:
    """A clause on the refinement ``proposal="auto"`` or ``"refine"`` did, if any."""
    guide = getattr(res, "guide_only", None)
    num = getattr(res, "num_refined", 0)
    if guide is None or not num or getattr(guide, "khat", None) is None:
        return None
    khat, s = khat_values(guide)
    rejected = float(np.mean(~(khat <= khat_threshold(s))))
    cause = measured_cause(res)
    return (
        f"the guide alone was rejected for {100 * rejected:.0f}% of datapoints"
        + (f" ({cause})" if cause else "")
        + f", and {num} of {len(khat)} were re-estimated with a refined proposal"
    )


def _remedy(res: Any) -> str:
    """The remedy that works, given what the result already tried."""
    if getattr(res, "num_refined", 0):
        return (
            "for the datapoints still rejected, use AIS (ppvae.ais_log_likelihood) or "
            "more refinement steps (RefineSettings)"
        )
    return (
        "re-estimate with proposal='auto' or 'refine' (a refined proposal per datapoint); "
        "to improve the guide itself, train with an importance-weighted objective or use "
        "a richer guide"
    )


def khat_summary(
    res: Any,
    num_samples: int | None = None,
    *,
    worst: int = 5,
    tolerance: float = 0.05,
    cause: str | None = None,
) -> dict[str, Any]:
    """Summarise per-datapoint k-hat in numbers and in words.

    Parameters
    ----------
    res
        A ``LogLikelihoodResult`` carrying its ``khat`` (see :func:`khat_values`), or an
        array of k-hat values together with ``num_samples``.
    worst
        How many of the highest k-hat datapoints to list.
    tolerance
        The verdict is ``reliable`` when at most this share of datapoints exceeds the
        threshold.
    cause
        A cause of the high k-hat to name in an ``unreliable`` verdict; by default the
        one the refined proposal measured (:func:`measured_cause`), if any.

    Returns
    -------
    dict
        ``num_datapoints``, ``num_samples``, ``threshold``, ``share_above_threshold``,
        ``share_above_0.7``, ``counts`` (per label), ``worst_indices``, ``worst_khat``,
        ``reliable`` (bool) and ``verdict`` (a sentence). With S ≤ 20 particles no
        k-hat can be fitted: ``reliable`` is False and the verdict says K is too small.
    """
    khat, s = khat_values(res, num_samples)
    cause = cause or measured_cause(res)
    thr = khat_threshold(s)
    labels = khat_labels(khat, s)
    n = khat.size
    above = float(np.mean(labels != "good")) if n else 0.0
    order = np.argsort(np.nan_to_num(-khat, nan=-np.inf), kind="stable")[:worst]
    reliable = above <= tolerance and s > MAX_UNFITTABLE_SAMPLES
    refined = _refinement_note(res) if s > MAX_UNFITTABLE_SAMPLES else None
    if s <= MAX_UNFITTABLE_SAMPLES:
        verdict = (
            f"not assessed: K = {s} particles are too few for a k-hat verdict (Pareto "
            f"smoothing needs more than {MAX_UNFITTABLE_SAMPLES} to fit the weights' tail); "
            "use K ≥ 100"
        )
    elif reliable:
        good = int(np.sum(labels == "good"))
        # Counts, not a rounded share: 358 of 359 must not read as 100%.
        verdict = f"reliable: {good} of {n} datapoints ({good / n:.1%}) have k-hat ≤ {thr:.2f}"
    else:
        more_k = np.sum(labels == "ok") >= np.sum(np.isin(labels, KHAT_LABELS[2:]))
        verdict = (
            f"unreliable: {100 * above:.0f}% of datapoints have k-hat > {thr:.2f}"
            + (f" — {cause}" if cause and not refined else "")
            + "; "
            + ("increase K (the threshold rises with K), or " if more_k else "")
            + _remedy(res)
        )
    if refined:
        verdict += "; " + refined
    return {
        "num_datapoints": n,
        "num_samples": s,
        "threshold": thr,
        "share_above_threshold": above,
        "share_above_0.7": float(np.mean(khat > 0.7)) if n else 0.0,
        "counts": {lab: int(np.sum(labels == lab)) for lab in KHAT_LABELS},
        "worst_indices": order.tolist(),
        "worst_khat": khat[order].tolist(),
        "reliable": reliable,
        "verdict": verdict,
    }
