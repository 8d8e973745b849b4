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
    # The guide's own weights: "auto" would re-estimate the rejected points.
    res = log_likelihood(
        model.model,
        guide.guide,
        x,
        num_samples=2000,
        seed=1,
        diagnostics=psis_diagnostics,
        proposal="guide",
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


def test_exact_float32_posterior_stays_constant_after_widening_to_float64():
    # log_likelihood keeps float64 log-weights; weights computed in float32 and widened
    # keep float32 round-off, which float64's tolerance would send to a tail fit.
    model, x = _ppca(n=200, data_dim=2, latent_dim=1, seed=3)
    model, x = model.float(), x.float()
    guide = PosteriorGuide(model).guide
    kw = {"num_samples": 1000, "seed": 0, "proposal": "guide"}
    res = log_likelihood(model.model, guide, x, return_log_weights=True, diagnostics=None, **kw)
    assert res.log_weights.dtype == torch.float64
    added = add_diagnostics(res)
    assert torch.all(added.khat == -math.inf) and bool(added.reliable.all())
    assert torch.all(added.ess == 1000)
    # The caller can also name the precision the weights were computed in.
    eps32 = torch.finfo(torch.float32).eps
    told = psis_diagnostics(res.log_weights, eps=eps32)
    assert torch.all(told["khat"] == -math.inf)
    # log_likelihood's own diagnostics see the weights in the model's float32.
    direct = log_likelihood(model.model, guide, x, **kw)
    assert torch.all(direct.khat == -math.inf) and bool(direct.reliable.all())
    # float64 weights keep float64's tolerance: a 1e-6 spread is not round-off there.
    torch.manual_seed(0)
    lw64 = -7.0 + 1e-6 * torch.randn(3, 1000, dtype=torch.float64)
    assert torch.all(psis_diagnostics(lw64)["khat"] > -math.inf)
    assert torch.all(psis_diagnostics(lw64, eps=eps32)["khat"] == -math.inf)


def test_zero_weights_count_as_draws_without_mass():
    k = 200
    torch.manual_seed(0)
    lw = torch.randn(4, k, dtype=torch.float64)
    lw[0, 3:] = -math.inf  # 197 of 200 weights zero, the other three equal
    lw[0, :3] = 0.0
    lw[1, 3:] = -math.inf  # 197 zeros, three unequal weights
    lw[2, :50] = -math.inf  # a quarter of the weights zero, the rest log-normal
    lw[3, :50] = -math.inf  # a quarter zero, the rest equal: bounded weights
    lw[3, 50:] = -2.0
    d = psis_diagnostics(lw)
    # Three draws carry all the mass: ESS 3 (not K), and no tail fit is possible.
    assert d["ess"][0] == pytest.approx(3.0) and d["ess"][1] <= 3.0
    assert d["khat"][0] == math.inf and d["khat"][1] == math.inf
    assert not bool(d["reliable"][:2].any())
    # With enough mass-carrying draws, PSIS runs on those, and the zeros still count in K.
    finite = lw[2, 50:].numpy()
    smoothed, k_ref = az.psislw(finite[None], reff=1.0, normalize=False)
    assert float(d["khat"][2]) == pytest.approx(float(k_ref[0]))
    lse = torch.logsumexp(torch.as_tensor(smoothed[0]), -1) - math.log(k)
    assert float(d["psis_log_likelihood"][2]) == pytest.approx(float(lse))
    assert 1 <= float(d["ess"][2]) <= 150
    # Equal weights beside zeros: bounded, so no tail, but only 150 effective draws.
    assert d["khat"][3] == -math.inf and d["ess"][3] == pytest.approx(150.0)
    assert float(d["psis_log_likelihood"][3]) == pytest.approx(-2.0 + math.log(150 / 200))
    assert bool(d["reliable"][2:].all())


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
    kw = {"num_samples": 400, "seed": 3, "proposal": "guide"}
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
    expected = "reliable: 99 of 100 datapoints (99.0%) have k-hat ≤ 0.70"
    assert ok["reliable"] and ok["verdict"] == expected
    values, s_ = khat_values(khat, 100)
    assert s_ == 100 and values.shape == (6,)


@pytest.mark.parametrize("num_samples", [2, 10, 20])
def test_khat_summary_with_too_few_particles_says_so(num_samples):
    # PSIS cannot fit a tail on K ≤ 20 (k-hat inf), and min(1 − 1/log10 K, 0.7) ≤ 0.23
    # there: a "k-hat > 0.00" verdict blaming the guide would be meaningless.
    lw = torch.randn(4, num_samples, dtype=torch.float64)
    s = khat_summary(psis_diagnostics(lw)["khat"], num_samples)
    assert not s["reliable"] and s["verdict"].startswith("not assessed")
    assert f"K = {num_samples}" in s["verdict"] and "K ≥ 100" in s["verdict"]
    assert "k-hat >" not in s["verdict"] and "narrow" not in s["verdict"]
    assert s["counts"]["very bad"] == 4


def test_khat_summary_names_a_measured_cause():
    khat = np.array([0.9, 0.95, 0.2])
    s = khat_summary(khat, 1000, cause="the guide's mean sits 3.6 posterior sd from the mode")
    assert s["verdict"].startswith("unreliable: 67% of datapoints have k-hat > 0.67 — the guide's")
    assert "narrow" not in s["verdict"]
    # Without a measured cause the verdict claims none, and names the remedy that works.
    plain = khat_summary(khat, 1000)["verdict"]
    assert "narrow" not in plain and "proposal='auto'" in plain


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
    res = log_likelihood(model.model, guide, x, num_samples=500, seed=0, proposal="guide")
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
    guide = PosteriorGuide(model, 0.8).guide
    res = log_likelihood(
        model.model, guide, x, num_samples=64, return_log_weights=True, proposal="guide"
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
