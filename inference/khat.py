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
with S ≤ 20 the tail cannot be fitted (k-hat = inf), which counts as ``very bad``.
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

__all__ = ["KHAT_LABELS", "khat_threshold", "khat_labels", "khat_values", "khat_summary"]

KHAT_LABELS = ("good", "ok", "bad", "very bad")


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


def khat_summary(
    res: Any, num_samples: int | None = None, *, worst: int = 5, tolerance: float = 0.05
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

    Returns
    -------
    dict
        ``num_datapoints``, ``num_samples``, ``threshold``, ``share_above_threshold``,
        ``share_above_0.7``, ``counts`` (per label), ``worst_indices``, ``worst_khat``,
        ``reliable`` (bool) and ``verdict`` (a sentence).
    """
    khat, s = khat_values(res, num_samples)
    thr = khat_threshold(s)
    labels = khat_labels(khat, s)
    n = khat.size
    above = float(np.mean(labels != "good")) if n else 0.0
    order = np.argsort(np.nan_to_num(-khat, nan=-np.inf), kind="stable")[:worst]
    reliable = above <= tolerance
    if reliable:
        verdict = f"reliable: {100 * (1 - above):.0f}% of datapoints have k-hat ≤ {thr:.2f}"
    else:
        verdict = (
            f"unreliable: {100 * above:.0f}% of datapoints have k-hat > {thr:.2f} — the guide "
            "is too narrow for these points; "
            + (
                "increase K (the threshold rises with K), "
                if np.sum(labels == "ok") >= np.sum(np.isin(labels, KHAT_LABELS[2:]))
                else "increasing K will not be enough: "
            )
            + "train with an importance-weighted objective, or use a richer guide"
        )
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
