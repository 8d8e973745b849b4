"""Model comparison, checked against closed-form log-likelihoods of probabilistic PCA."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ppvae.inference.compare import compare
from ppvae.inference.diagnostics import psis_diagnostics
from ppvae.inference.importance import log_likelihood
from ppvae.models.linear_gaussian import LinearGaussianModel, PosteriorGuide

pytestmark = pytest.mark.usefixtures("float64")


def _models(n: int = 100):
    torch.manual_seed(0)
    true = LinearGaussianModel(6, 2, bias=torch.randn(6), noise_scale=0.5)
    x = true.marginal().sample((n,)).detach()
    wrong = LinearGaussianModel(
        6, 2, weight=0.8 * true.weight.detach(), bias=true.bias.detach(), noise_scale=0.8
    )
    return true, wrong, x


def _estimate(model, x, *, scale_factor=1.5, **kw):
    guide = PosteriorGuide(model, scale_factor=scale_factor).guide
    return log_likelihood(model.model, guide, x, num_samples=200, **kw)


def test_exact_model_ranks_first_with_paired_standard_errors():
    true, wrong, x = _models()
    res = {
        "wrong": _estimate(wrong, x, seed=1, diagnostics=psis_diagnostics),
        "true": _estimate(true, x, seed=2, diagnostics=psis_diagnostics),
    }
    table = compare(res)
    assert list(table.index) == ["true", "wrong"] and list(table["rank"]) == [0, 1]
    exact = (true.exact_log_likelihood(x) - wrong.exact_log_likelihood(x)).detach()
    row = table.loc["wrong"]
    assert row["diff"] > 2 * row["diff_stderr"]
    # Paired: the standard error of the per-datapoint differences, not of each model.
    d = res["true"].per_datapoint - res["wrong"].per_datapoint
    assert row["diff_stderr"] == pytest.approx(float(d.std() / math.sqrt(len(d))))
    assert row["diff_stderr"] < res["true"].stderr + res["wrong"].stderr
    assert row["diff_stderr"] == pytest.approx(float(exact.std() / 10), rel=0.05)
    # Different seeds: the Monte Carlo errors combine as independent and cover the truth.
    assert not row["paired_particles"]
    mc = math.hypot(res["true"].mc_stderr, res["wrong"].mc_stderr)
    assert row["diff_mc_stderr"] == pytest.approx(mc)
    assert abs(row["diff"] - float(exact.mean())) < 4 * row["diff_mc_stderr"]
    assert table.loc["true", "diff"] == 0 and table.loc["true", "diff_mc_stderr"] == 0
    assert table["mean"].tolist() == pytest.approx([r.mean for r in (res["true"], res["wrong"])])
    # Over-dispersed guides: k-hat is low everywhere.
    assert (table["khat_above_threshold"] == 0).all()


def test_common_random_numbers_cancel_the_monte_carlo_error():
    # For a Gaussian posterior and a proposal with c times its Cholesky factor, the
    # normalised weights depend only on the base noise ε, not on the model: with the same
    # seed both models get identical normalised weights and their difference is exact.
    true, wrong, x = _models(n=30)
    a = _estimate(true, x, seed=5, return_log_weights=True)
    b = _estimate(wrong, x, seed=5, return_log_weights=True)
    row = compare({"true": a, "wrong": b}).loc["wrong"]
    exact = (true.exact_log_likelihood(x) - wrong.exact_log_likelihood(x)).detach()
    assert row["paired_particles"]
    assert row["diff_mc_stderr"] < 1e-8 < math.hypot(a.mc_stderr, b.mc_stderr)
    assert row["diff"] == pytest.approx(float(exact.mean()), abs=1e-8)
    # k-hat is computed from the log-weights when the results have none.
    assert 0 <= row["khat_above_threshold"] <= 1


def test_compare_refuses_results_on_different_data():
    true, wrong, x = _models(n=20)
    a = _estimate(true, x, seed=0)
    other = _estimate(wrong, x + 0.1, seed=0)
    with pytest.raises(ValueError, match="different data.*'true'.*'shifted'"):
        compare({"true": a, "shifted": other})
    with pytest.raises(ValueError, match="numbers of datapoints.*'short'"):
        compare({"true": a, "short": _estimate(wrong, x[:10], seed=0)})
    with pytest.raises(ValueError, match="at least one"):
        compare({})
    unknown = compare({"true": _estimate(true, x, seed=0, diagnostics=None)})
    assert unknown["khat_above_threshold"].isna().all()
    assert compare({"true": a})["khat_above_threshold"].between(0, 1).all()


def test_a_missing_monte_carlo_error_propagates_as_nan():
    # A datapoint whose k-hat rejects its estimate has no MC s.e. (NaN): the MC errors of
    # the mean and of the difference it enters are then unknown, not smaller.
    true, wrong, x = _models(n=30)
    a = _estimate(true, x, seed=5, return_log_weights=True)
    b = _estimate(wrong, x, seed=5, return_log_weights=True)
    se = b.mc_stderr_per_datapoint.clone()
    se[3] = math.nan
    b_nan = dataclasses.replace(b, mc_stderr_per_datapoint=se)
    for b_other in (b_nan, dataclasses.replace(b_nan, seed=6)):  # paired and unpaired
        table = compare({"true": a, "wrong": b_other})
        assert math.isnan(table.loc["wrong", "mc_stderr"])
        assert math.isnan(table.loc["wrong", "diff_mc_stderr"])
        assert table.loc["true", "mc_stderr"] == pytest.approx(a.mc_stderr)
        assert table.loc["true", "diff_mc_stderr"] == 0
        # The data-level paired s.e. needs no MC error and stays finite.
        assert math.isfinite(table.loc["wrong", "diff_stderr"])
    assert compare({"true": a, "wrong": b_nan}).loc["wrong", "paired_particles"]
    # The best model's missing s.e. reaches every difference.
    se_a = a.mc_stderr_per_datapoint.clone()
    se_a[0] = math.nan
    a_nan = dataclasses.replace(a, mc_stderr_per_datapoint=se_a)
    for b_other in (b, dataclasses.replace(b, seed=6)):
        table = compare({"true": a_nan, "wrong": b_other})
        assert list(table.index) == ["true", "wrong"]
        assert math.isnan(table.loc["true", "mc_stderr"])
        assert math.isnan(table.loc["wrong", "diff_mc_stderr"])
