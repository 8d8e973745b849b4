"""PSIS k-hat, k-hat summaries and InferenceData export, checked on probabilistic PCA.

Oracle: with the exact posterior of a linear-Gaussian model as proposal every importance
weight equals p(x), so k-hat must say "reliable"; shrinking the proposal's scale makes the
weights heavy-tailed (k-hat > 0.7), widening it keeps them bounded (k-hat < 0.5).
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pyro.distributions as dist
import pytest
import torch

from ppvae.inference.diagnostics import (
    add_diagnostics,
    khat_elpd_data,
    mcmc_summary,
    psis_diagnostics,
    to_inference_data,
)
from ppvae.inference.importance import log_likelihood
from ppvae.inference.khat import khat_labels, khat_summary, khat_threshold, khat_values
from ppvae.inference.resampling import guide_particles, importance_resample, inference_data
from ppvae.models.linear_gaussian import LinearGaussianModel, PosteriorGuide

pytestmark = pytest.mark.usefixtures("float64")


def _ppca(n: int = 20, data_dim: int = 6, latent_dim: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = LinearGaussianModel(data_dim, latent_dim, bias=torch.randn(data_dim), noise_scale=0.5)
    x = model.marginal().sample((n,)).detach()
    return model, x


def test_threshold_and_labels_follow_vehtari_et_al_2024():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert khat_threshold(10_000) == 0.7
    k = [-math.inf, 0.3, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, math.nan, math.inf]
    assert khat_labels(k, 100).tolist() == [
        "good",
        "good",
        "good",
        "ok",
        "ok",
        "bad",
        "bad",
        "very bad",
        "very bad",
        "very bad",
    ]
    # From S = 2154 on the threshold is 0.7 and the "ok" band is empty.
    assert khat_labels([0.69, 0.71], 5000).tolist() == ["good", "bad"]


@pytest.mark.parametrize(
    ("scale_factor", "expect_reliable"), [(1.0, True), (1 / 3, False), (2.0, True)]
)
def test_khat_tracks_the_proposal_width(scale_factor, expect_reliable):
    model, x = _ppca()
    guide = PosteriorGuide(model, scale_factor=scale_factor)
    res = log_likelihood(
        model.model, guide.guide, x, num_samples=2000, seed=1, diagnostics=psis_diagnostics
    )
    khat = res.khat.numpy()
    assert khat.shape == (20,) and res.ess.shape == (20,) and res.reliable.dtype == torch.bool
    assert torch.equal(res.reliable, res.khat <= khat_threshold(2000))
    if scale_factor == 1.0:
        # Constant weights: no tail at all.
        assert np.all(khat == -np.inf) and torch.all(res.ess == 2000)
        exact = model.exact_log_likelihood(x).detach()
        torch.testing.assert_close(res.extras["psis_log_likelihood"], exact)
    elif scale_factor < 1:
        assert np.mean(khat > 0.7) >= 0.75
        assert khat_summary(res)["verdict"].startswith("unreliable")
        assert float(res.ess.mean()) < 0.1 * 2000
    else:
        assert np.all(khat < 0.5)
        assert khat_summary(res)["verdict"].startswith("reliable")
    assert bool(res.reliable.all()) is expect_reliable


def test_exact_posterior_in_float32_counts_as_constant_weights():
    model, x = _ppca()
    model, x = model.float(), x.float()
    lw = guide_particles(model.model, PosteriorGuide(model).guide, x, num_samples=500, seed=0)
    spread = lw.log_weights.max(0).values - lw.log_weights.min(0).values
    assert float(spread.max()) > 0  # round-off noise only
    d = psis_diagnostics(lw.log_weights.T)
    assert torch.all(d["khat"] == -math.inf) and bool(d["reliable"].all())


def test_psis_diagnostics_agrees_with_arviz_and_bounds_ess():
    torch.manual_seed(0)
    # Log-normal weights with growing log-scale: tails from light to heavy.
    lw = torch.randn(6, 1000) * torch.linspace(0.2, 3.0, 6).unsqueeze(-1)
    d = psis_diagnostics(lw)
    smoothed, k_ref = az.psislw(lw.numpy(), reff=1.0, normalize=False)
    np.testing.assert_allclose(d["khat"].numpy(), k_ref)
    lse = torch.logsumexp(torch.as_tensor(smoothed), -1) - math.log(1000)
    torch.testing.assert_close(d["psis_log_likelihood"], lse)
    assert torch.all((d["ess"] >= 1) & (d["ess"] <= 1000))
    assert d["khat"][0] < 0.3 and d["khat"][-1] > 0.7
    assert d["ess"][0] > d["ess"][-1]  # heavier tail, fewer effective draws
    # With light tails PSIS barely changes the plain estimate.
    plain = torch.logsumexp(lw, -1) - math.log(1000)
    assert abs(float(d["psis_log_likelihood"][0] - plain[0])) < 1e-3
    # Too few particles to fit a tail: not estimable, hence not reliable.
    small = psis_diagnostics(torch.randn(3, 10))
    assert torch.all(small["khat"] == math.inf) and not bool(small["reliable"].any())
    with pytest.raises(ValueError, match="shape"):
        psis_diagnostics(torch.randn(10))
    with pytest.raises(ValueError, match="at least 2"):
        psis_diagnostics(torch.randn(3, 1))


def test_add_diagnostics_matches_the_callable_and_needs_weights():
    model, x = _ppca(n=8)
    guide = PosteriorGuide(model, scale_factor=0.5).guide
    kw = {"num_samples": 400, "seed": 3}
    with_cb = log_likelihood(model.model, guide, x, diagnostics=psis_diagnostics, **kw)
    plain = log_likelihood(model.model, guide, x, return_log_weights=True, diagnostics=None, **kw)
    added = add_diagnostics(plain)
    assert plain.khat is None  # a copy, not an update
    torch.testing.assert_close(added.khat, with_cb.khat)
    torch.testing.assert_close(added.ess, with_cb.ess)
    assert torch.equal(added.reliable, with_cb.reliable)
    with pytest.raises(ValueError, match="return_log_weights"):
        add_diagnostics(log_likelihood(model.model, guide, x, diagnostics=None, **kw))


def test_khat_summary_counts_and_worst_points():
    khat = np.array([0.1, 0.9, -np.inf, 0.65, 1.3, 0.2])
    s = khat_summary(khat, 100, worst=2)
    assert s["threshold"] == pytest.approx(0.5)
    assert s["counts"] == {"good": 3, "ok": 1, "bad": 1, "very bad": 1}
    assert s["worst_indices"] == [4, 1] and s["worst_khat"] == [1.3, 0.9]
    assert s["share_above_threshold"] == pytest.approx(0.5)
    assert s["share_above_0.7"] == pytest.approx(2 / 6)
    assert not s["reliable"] and s["verdict"].startswith("unreliable: 50%")
    ok = khat_summary(np.array([0.1] * 99 + [0.9]), 10_000)
    assert ok["reliable"] and ok["verdict"] == "reliable: 99% of datapoints have k-hat ≤ 0.70"
    values, s_ = khat_values(khat, 100)
    assert s_ == 100 and values.shape == (6,)


def test_guide_particles_score_the_model_in_closed_form():
    model, x = _ppca(n=5)
    p = guide_particles(model.model, PosteriorGuide(model, 2.0).guide, x, num_samples=7, seed=0)
    assert p.z.shape == (7, 5, 3) and p.log_weights.shape == p.log_likelihood.shape == (7, 5)
    with torch.no_grad():
        loc = p.z @ model.weight.T + model.bias
        ref = dist.Normal(loc, model.noise_scale).to_event(1).log_prob(x)
        post = PosteriorGuide(model, 2.0)(x)
        prior = dist.Normal(0.0, 1.0).expand([3]).to_event(1)
        ref_w = ref + prior.log_prob(p.z) - post.log_prob(p.z)
    torch.testing.assert_close(p.log_likelihood, ref)
    torch.testing.assert_close(p.log_weights, ref_w)
    z, ll = importance_resample(p, 11, seed=0)
    assert z.shape == (11, 5, 3) and ll.shape == (11, 5)
    # Every resampled draw is one of that datapoint's particles.
    assert all(bool((p.z[:, i] == z[j, i]).all(-1).any()) for i in range(5) for j in range(11))


def test_inference_data_groups_dims_and_round_trip(tmp_path):
    model, x = _ppca(n=4, latent_dim=2)
    guide = PosteriorGuide(model, scale_factor=1.5).guide
    idata = inference_data(model.model, guide, x, num_samples=1000, num_draws=300, seed=0)
    assert set(idata.groups()) == {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    assert idata.posterior["z"].dims == ("chain", "draw", "obs", "latent")
    assert dict(idata.posterior.sizes) == {"chain": 2, "draw": 300, "obs": 4, "latent": 2}
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.observed_data["x"].dims == ("obs", "feature")
    assert idata.observed_data.sizes["feature"] == 6
    stats = idata.sample_stats
    for name in ("log_marginal_likelihood", "mc_stderr", "elbo", "khat", "ess", "reliable"):
        assert stats[name].dims == ("obs",)
    assert stats.attrs["num_samples"] == 1000 and stats["reliable"].dtype == bool
    exact = model.exact_log_likelihood(x).detach().numpy()
    np.testing.assert_allclose(stats["log_marginal_likelihood"], exact, atol=0.05)
    # Importance-resampled draws approximate the exact posterior.
    post = model.posterior(x)
    mean = idata.posterior["z"].mean(("chain", "draw")).values
    np.testing.assert_allclose(mean, post.loc.detach().numpy(), atol=0.1)
    summary = az.summary(idata)
    assert len(summary) == 4 * 2 and (summary["r_hat"] < 1.05).all()
    # arviz.loo on the integrated log-likelihood returns the importance-sampling estimate.
    with pytest.warns(UserWarning, match="Pareto"):
        loo = az.loo(idata)
    assert loo["elpd_loo"] == pytest.approx(float(stats["log_marginal_likelihood"].sum()))
    assert loo["p_loo"] == pytest.approx(0.0, abs=1e-9)
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path), engine="h5netcdf")
    back = az.from_netcdf(str(path), engine="h5netcdf")
    np.testing.assert_allclose(back.posterior["z"], idata.posterior["z"])
    np.testing.assert_array_equal(back.sample_stats["reliable"], stats["reliable"])


def test_arviz_plots_accept_the_exports():
    import matplotlib.pyplot as plt

    model, x = _ppca(n=3, latent_dim=2)
    guide = PosteriorGuide(model, scale_factor=0.7).guide
    res = log_likelihood(
        model.model, guide, x, num_samples=500, seed=0, diagnostics=psis_diagnostics
    )
    packed = khat_elpd_data(res)
    np.testing.assert_allclose(packed.pareto_k.values, res.khat.numpy())
    assert packed.good_k == pytest.approx(khat_threshold(500))
    assert str(packed) == khat_summary(res)["verdict"]
    az.plot_khat(packed, show_hlines=True)
    idata = inference_data(model.model, guide, x, num_samples=500, num_draws=100, result=res)
    az.plot_ess(idata)
    plt.close("all")


def test_to_inference_data_from_a_bare_result():
    model, x = _ppca(n=5)
    res = log_likelihood(
        model.model, PosteriorGuide(model, 0.8).guide, x, num_samples=64, return_log_weights=True
    )
    idata = to_inference_data(res, observed=x, labels=torch.arange(5))
    assert set(idata.groups()) == {"sample_stats", "observed_data", "constant_data"}
    assert idata.sample_stats["log_weight"].dims == ("obs", "particle")
    assert idata.sample_stats.sizes["particle"] == 64
    assert idata.sample_stats.attrs["seed"] == -1
    # k-hat is filled from the log-weights when the result has none.
    np.testing.assert_allclose(idata.sample_stats["khat"], add_diagnostics(res).khat.numpy())
    with pytest.raises(ValueError, match="posterior_draws"):
        to_inference_data(res, posterior_draws=torch.zeros(2, 10, 4, 3))


def test_mcmc_summary_of_independent_draws():
    torch.manual_seed(0)
    draws = torch.randn(2, 1000, 3) * 2.0 + torch.tensor([1.0, -1.0, 0.0])
    table = mcmc_summary(draws, var_name="theta", dims=["component"])
    assert list(table.index) == ["theta[0]", "theta[1]", "theta[2]"]
    np.testing.assert_allclose(table["mean"], [1.0, -1.0, 0.0], atol=5 * 2 / math.sqrt(2000))
    np.testing.assert_allclose(table["sd"], 2.0, rtol=0.1)
    assert (table["r_hat"] < 1.01).all() and (table["ess_bulk"] > 1000).all()
