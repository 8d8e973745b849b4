"""Disentanglement scores of a representation against known factors: MIG, DCI, the FactorVAE
and BetaVAE scores and SAP, as in disentanglement_lib (numpy and scikit-learn only).

:func:`disentanglement_metrics` takes a table of codes ``(N, D)`` (e.g. the guide's means)
and the integer factor indices ``(N, K)`` of the same rows. Batches "with factor k fixed",
which the FactorVAE and BetaVAE scores need, are drawn from the table by matching factor
values (:class:`~ppvae.inference.disentanglement_sampling.FactorIndex`), which equals the
reference's sampling from the simulator when the table holds every combination once (as
dsprites-lite does). Sample sizes and estimators follow the reference implementation
(google-research/disentanglement_lib, ``evaluation/metrics``):

- **MIG** (Chen et al. 2018): 10,000 points; each code binned into 20 equal-width bins,
  plug-in mutual information with each factor; per factor, the gap between the two most
  informative codes divided by the factor's entropy, averaged over factors.
- **DCI** (Eastwood & Williams 2018): 10,000 training and 5,000 test points; one classifier
  per factor predicting it from all codes. ``dci_model="gbt"`` is the reference's
  scikit-learn ``GradientBoostingClassifier`` with default settings (slow: about a minute
  for 10,000 points and 5 factors on one core); ``"forest"`` (the default here) a random
  forest of 50 depth-limited trees, one of the two regressors of Eastwood & Williams, about
  ten times faster, with the same importance-matrix definition. Disentanglement: per code,
  1 − entropy (base K) of its normalised importances, weighted by the code's share of total
  importance; completeness the same per factor (base D), weighted by the factor's share;
  informativeness: mean test accuracy (its floor is the majority-class rate, not 0).
- **FactorVAE score** (Kim & Mnih 2018): variances of the codes over 10,000 points; codes
  with zero variance are dropped (no active code: score 0); 10,000 training and 5,000
  evaluation votes, each from a batch of 64 points sharing one factor's value: the vote is
  (code of least variance normalised by its global variance, fixed factor). Score: accuracy
  of the majority-vote classifier code → factor on the evaluation votes.
- **BetaVAE score** (Higgins et al. 2017): 10,000 training and 5,000 evaluation points, each
  the mean |z₁ − z₂| over 64 pairs that share one factor's value; a scikit-learn
  ``LogisticRegression`` predicts the factor; score: evaluation accuracy (floor: chance,
  1/K, for a constant representation).
- **SAP** (Kumar et al. 2018): per factor the gap between the two codes that predict it
  best, averaged over factors. ``sap_factors="continuous"`` (the default here; the
  reference's ``continuous_factors=True``) scores a (code, factor) pair by the R² of a linear
  fit on 10,000 points, which suits ordered factors such as scale and position;
  ``"discrete"`` (the reference's setting in the dSprites study of Locatello et al.) by the
  test accuracy (5,000 points) of ``LinearSVC(C=0.01, class_weight="balanced")`` on the
  code alone. A linear classifier on one code separates two ordered classes but hardly
  more, so in that mode even the ground-truth factors score only about 0.3 on
  dsprites-lite.

References
----------
Chen, Li, Grosse & Duvenaud (2018), "Isolating Sources of Disentanglement in VAEs", NeurIPS.
Eastwood & Williams (2018), "A Framework for the Quantitative Evaluation of Disentangled
Representations", ICLR.
Kim & Mnih (2018), "Disentangling by Factorising", ICML.
Higgins et al. (2017), "β-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework", ICLR.
Kumar, Sattigeri & Balakrishnan (2018), "Variational Inference of Disentangled Latent
Concepts from Unlabeled Observations", ICLR.
Locatello et al. (2019), "Challenging Common Assumptions in the Unsupervised Learning of
Disentangled Representations", ICML.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import entropy
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from ppvae.inference.disentanglement_sampling import (
    FactorIndex,
    factor_entropies,
    mutual_information,
    split_rows,
)

__all__ = ["METRICS", "disentanglement_metrics", "dci_importance", "mig"]

METRICS = ("mig", "dci", "factor_vae", "beta_vae", "sap")
_DCI_MODELS = ("forest", "gbt")


def disentanglement_metrics(
    codes: Any,
    factors: Any,
    *,
    metrics: Sequence[str] = METRICS,
    num_train: int = 10_000,
    num_test: int = 5_000,
    batch_size: int = 64,
    num_bins: int = 20,
    dci_model: str = "forest",
    sap_factors: str = "continuous",
    seed: int = 0,
) -> dict[str, float]:
    """The disentanglement scores of ``codes`` against ``factors`` (see the module doc).

    Parameters
    ----------
    codes
        Representations ``(N, D)`` (array or tensor), e.g. the guide's means.
    factors
        Integer factor indices ``(N, K)`` of the same rows.
    metrics
        Which of :data:`METRICS` to compute.
    num_train, num_test
        Points (or votes) for training and testing each score's classifier; MIG uses
        ``num_train`` points. With fewer rows than ``num_train + num_test`` the table is split
        in that proportion (MIG, DCI, SAP).
    batch_size
        Points per vote of the FactorVAE and BetaVAE scores.
    num_bins
        Bins per code for the mutual information of MIG.
    dci_model
        ``"forest"`` or ``"gbt"`` (the reference's gradient-boosted trees).
    sap_factors
        ``"continuous"`` (R² per code and factor) or ``"discrete"`` (linear SVM accuracy).
    seed
        Seed of every draw; the scores are deterministic given it.

    Returns
    -------
    dict
        ``mig``, ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness``,
        ``factor_vae``, ``beta_vae``, ``sap`` (those requested), all in [0, 1].
    """
    codes, factors = _as_table(codes, factors)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or dci_model not in _DCI_MODELS or sap_factors not in ("continuous", "discrete"):
        raise ValueError(
            f"unknown metrics {unknown}, dci_model {dci_model!r} or sap_factors "
            f"{sap_factors!r}: use {METRICS}, one of {_DCI_MODELS}, 'continuous' or 'discrete'"
        )
    rng = np.random.default_rng(seed)
    train, test = split_rows(len(codes), num_train, num_test, rng)
    out: dict[str, float] = {}
    if "mig" in metrics:
        out["mig"] = mig(codes[train], factors[train], num_bins=num_bins)
    if "dci" in metrics:
        out.update(_dci(codes, factors, train, test, dci_model, seed))
    index = FactorIndex(factors) if {"factor_vae", "beta_vae"} & set(metrics) else None
    if "factor_vae" in metrics:
        out["factor_vae"] = _factor_vae(codes, index, num_train, num_test, batch_size, rng)
    if "beta_vae" in metrics:
        out["beta_vae"] = _beta_vae(codes, index, num_train, num_test, batch_size, rng, seed)
    if "sap" in metrics:
        out["sap"] = _sap(codes, factors, train, test, sap_factors == "continuous")
    return out


def _as_table(codes: Any, factors: Any) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.asarray(_numpy(codes), dtype=np.float64), np.asarray(_numpy(factors))
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors) or len(codes) < 2:
        raise ValueError(
            f"codes must be (N, D) and factors (N, K) with the same N ≥ 2, got "
            f"{codes.shape} and {factors.shape}"
        )
    if not np.isfinite(codes).all():
        raise ValueError("codes hold NaN or infinite values")
    if factors.dtype.kind not in "iu" or factors.min() < 0:
        raise ValueError("factors must be non-negative integer indices")
    return codes, factors.astype(np.int64)


def _numpy(values: Any) -> Any:
    return values.detach().cpu().numpy() if hasattr(values, "detach") else values


def mig(codes: np.ndarray, factors: np.ndarray, *, num_bins: int = 20) -> float:
    """Mutual information gap (Chen et al. 2018) on the given rows; factors with a single
    value (zero entropy) are left out."""
    mi = mutual_information(codes, factors, num_bins)
    h = factor_entropies(factors)
    keep = h > 0
    if not keep.any() or mi.shape[0] < 2:
        return 0.0 if mi.shape[0] >= 2 else float("nan")
    top = np.sort(mi[:, keep], axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / h[keep]))


def dci_importance(
    codes: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    model: str = "forest",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance matrix ``(D, K)`` and test accuracy per factor ``(K,)`` of DCI."""
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    accuracy = np.zeros(factors.shape[1])
    for k in range(factors.shape[1]):
        if model == "gbt":
            clf = GradientBoostingClassifier(random_state=seed)
        else:
            clf = RandomForestClassifier(50, max_depth=8, max_features=None, random_state=seed)
        clf.fit(codes[train], factors[train, k])
        importance[:, k] = np.abs(clf.feature_importances_)
        accuracy[k] = np.mean(clf.predict(codes[test]) == factors[test, k])
    return importance, accuracy


def _dci(
    codes: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    model: str,
    seed: int,
) -> dict[str, float]:
    importance, accuracy = dci_importance(codes, factors, train, test, model, seed)
    total = importance.sum()
    d, k = importance.shape
    if total <= 0 or d < 2 or k < 2:  # nothing predicts anything: no structure to score
        return {
            "dci_disentanglement": 0.0,
            "dci_completeness": 0.0,
            "dci_informativeness": float(accuracy.mean()),
        }
    # The reference's 1e-11 keeps the entropy finite for all-zero rows.
    per_code = 1 - entropy(importance.T + 1e-11, base=k)
    per_factor = 1 - entropy(importance + 1e-11, base=d)
    return {
        "dci_disentanglement": float(np.sum(per_code * importance.sum(1) / total)),
        "dci_completeness": float(np.sum(per_factor * importance.sum(0) / total)),
        "dci_informativeness": float(accuracy.mean()),
    }


def _factor_vae(
    codes: np.ndarray,
    index: FactorIndex,
    num_train: int,
    num_eval: int,
    batch_size: int,
    rng: np.random.Generator,
) -> float:
    n = len(codes)
    global_var = np.var(codes[rng.integers(n, size=10_000)], axis=0, ddof=1)
    active = global_var > 0
    if not active.any():
        return 0.0  # the reference's score for a representation with no active code

    def votes(count: int) -> np.ndarray:
        factor = rng.integers(index.num_factors, size=count)
        anchor = np.repeat(rng.integers(n, size=(count, 1)), batch_size, axis=1)
        batch = index.matching(anchor, factor, rng)
        local = np.var(codes[batch], axis=1, ddof=1)[:, active] / global_var[active]
        table = np.zeros((int(active.sum()), index.num_factors), np.int64)
        np.add.at(table, (np.argmin(local, axis=1), factor), 1)
        return table

    train, evaluation = votes(num_train), votes(num_eval)
    # Majority vote: each code predicts the factor it most often had the least variance for.
    predicted = np.argmax(train, axis=1)
    return float(evaluation[np.arange(len(predicted)), predicted].sum() / evaluation.sum())


def _beta_vae(
    codes: np.ndarray,
    index: FactorIndex,
    num_train: int,
    num_eval: int,
    batch_size: int,
    rng: np.random.Generator,
    seed: int,
) -> float:
    def points(count: int) -> tuple[np.ndarray, np.ndarray]:
        factor = rng.integers(index.num_factors, size=count)
        first = rng.integers(len(codes), size=(count, batch_size))
        second = index.matching(first, factor, rng)
        return np.abs(codes[first] - codes[second]).mean(axis=1), factor

    x_train, y_train = points(num_train)
    x_eval, y_eval = points(num_eval)
    if len(np.unique(y_train)) < 2:
        return 1.0
    clf = LogisticRegression(max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return float(clf.score(x_eval, y_eval))


def _sap(
    codes: np.ndarray, factors: np.ndarray, train: np.ndarray, test: np.ndarray, continuous: bool
) -> float:
    if codes.shape[1] < 2:
        return float("nan")
    if continuous:
        score = _r_squared(codes[train], factors[train].astype(np.float64))
    else:
        score = _svm_accuracy(codes, factors, train, test)
    top = np.sort(score, axis=0)[::-1]
    return float(np.mean(top[0] - top[1]))


def _r_squared(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """cov(code, factor)² / (var(code) var(factor)), 0 where either is constant."""
    zc, zf = codes - codes.mean(0), factors - factors.mean(0)
    cov = zc.T @ zf / len(codes)
    var = np.outer((zc**2).mean(0), (zf**2).mean(0))
    return np.where(var > 1e-12, cov**2 / np.where(var > 1e-12, var, 1.0), 0.0)


def _svm_accuracy(
    codes: np.ndarray, factors: np.ndarray, train: np.ndarray, test: np.ndarray
) -> np.ndarray:
    d, k = codes.shape[1], factors.shape[1]
    score = np.zeros((d, k))
    for i in range(d):
        x_train, x_test = codes[train, i : i + 1], codes[test, i : i + 1]
        for j in range(k):
            y_train = factors[train, j]
            if len(np.unique(y_train)) < 2:
                continue  # a single-valued factor is not predicted by anything
            clf = LinearSVC(C=0.01, class_weight="balanced")
            with warnings.catch_warnings():
                # the reference's strong regularisation often stops before convergence
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(x_train, y_train)
            score[i, j] = np.mean(clf.predict(x_test) == factors[test, j])
    return score
