"""Known-answer tests of the disentanglement scores (as disentanglement_lib's own tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppvae
from ppvae.inference.disentanglement import METRICS, disentanglement_metrics
from ppvae.inference.disentanglement_sampling import FactorIndex, mutual_information

GRID = (3, 4, 5, 6, 6)
FACTORS = np.stack(np.unravel_index(np.arange(int(np.prod(GRID))), GRID), axis=1)
SIZES = {"num_train": 1500, "num_test": 600}
SCORES = (
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "factor_vae",
    "beta_vae",
    "sap",
)


def _rotated(seed: int = 0) -> np.ndarray:
    z = (FACTORS - FACTORS.mean(0)) / FACTORS.std(0)
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(5, 5)))[0]
    return z @ q


def test_ground_truth_scores_about_one():
    scores = disentanglement_metrics(FACTORS.astype(float), FACTORS, **SIZES)
    assert set(scores) == set(SCORES)
    assert all(v >= 0.9 for v in scores.values()), scores


def test_ground_truth_with_noise_codes_and_tensors():
    noise = np.random.default_rng(1).normal(size=(len(FACTORS), 3))
    codes = torch.from_numpy(np.concatenate([FACTORS * 2.0 + 1, noise], axis=1))
    scores = ppvae.disentanglement_metrics(codes, torch.from_numpy(FACTORS), **SIZES)
    assert scores["mig"] > 0.9 and scores["factor_vae"] > 0.9 and scores["sap"] > 0.9
    assert scores["dci_disentanglement"] > 0.9


def test_constant_representation_scores_its_floor():
    scores = disentanglement_metrics(np.zeros((len(FACTORS), 4)), FACTORS, **SIZES)
    for name in ("mig", "dci_disentanglement", "dci_completeness", "factor_vae", "sap"):
        assert scores[name] == pytest.approx(0.0, abs=1e-6), name
    # Scores with a classifier's accuracy have chance as their floor: 1/K for BetaVAE,
    # the majority-class rate of each factor for DCI informativeness.
    assert scores["beta_vae"] <= 1 / 5 + 0.05
    majority = np.mean([np.bincount(f).max() / len(f) for f in FACTORS.T])
    assert scores["dci_informativeness"] <= majority + 0.05


def test_duplicated_codes_have_no_mutual_information_gap():
    codes = np.repeat(FACTORS.astype(float), 2, axis=1)
    assert disentanglement_metrics(codes, FACTORS, metrics=["mig"], **SIZES)["mig"] < 0.02


def test_rotation_lowers_mig_and_dci_disentanglement():
    truth = disentanglement_metrics(FACTORS.astype(float), FACTORS, metrics=["mig", "dci"], **SIZES)
    rotated = disentanglement_metrics(_rotated(), FACTORS, metrics=["mig", "dci"], **SIZES)
    assert rotated["mig"] < truth["mig"] - 0.3
    assert rotated["dci_disentanglement"] < truth["dci_disentanglement"] - 0.3


def test_mig_ignores_code_order_and_scale():
    codes = _rotated()
    a = disentanglement_metrics(codes, FACTORS, metrics=["mig"], **SIZES)["mig"]
    b = disentanglement_metrics(-3 * codes[:, ::-1] + 7, FACTORS, metrics=["mig"], **SIZES)["mig"]
    assert a == pytest.approx(b, abs=1e-9)


def test_mutual_information_matrix_is_diagonal_for_ground_truth():
    mi = mutual_information(FACTORS.astype(float), FACTORS)
    assert mi.shape == (5, 5)
    assert np.allclose(np.diag(mi), [np.log(g) for g in GRID])
    assert (mi - np.diag(np.diag(mi)) < 1e-9).all()


def test_factor_index_draws_rows_sharing_the_factor():
    rng = np.random.default_rng(0)
    index = FactorIndex(FACTORS)
    rows = rng.integers(len(FACTORS), size=(50, 8))
    factor = rng.integers(5, size=50)
    matched = index.matching(rows, factor, rng)
    for k in range(5):
        sel = factor == k
        assert (FACTORS[matched[sel], k] == FACTORS[rows[sel], k]).all()
    assert len(np.unique(matched)) > 200  # draws, not copies of the anchors


@pytest.mark.parametrize(
    ("codes", "factors", "match"),
    [
        (np.zeros((5, 2)), np.zeros((4, 2), int), "same N"),
        (np.full((4, 2), np.nan), np.zeros((4, 2), int), "NaN"),
        (np.zeros((4, 2)), np.full((4, 2), 0.5), "integer"),
    ],
)
def test_bad_inputs(codes, factors, match):
    with pytest.raises(ValueError, match=match):
        disentanglement_metrics(codes, factors)
    with pytest.raises(ValueError, match="unknown metrics"):
        disentanglement_metrics(np.zeros((4, 2)), np.zeros((4, 2), int), metrics=["nope"])
    assert METRICS == ("mig", "dci", "factor_vae", "beta_vae", "sap")
