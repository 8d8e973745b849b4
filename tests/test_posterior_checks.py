"""NUTS gold-standard check and amortisation-gap decomposition on probabilistic PCA.

Oracles: the exact posterior N(m, S) of the linear-Gaussian model, and the best diagonal
Gaussian under KL(q ‖ p), which has mean m and variances 1 / diag(S⁻¹).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from ppvae.inference.amortization import amortization_gap, local_guide
from ppvae.inference.importance import log_likelihood
from ppvae.inference.posterior_checks import gaussian_w2, nuts_check
from ppvae.models.linear_gaussian import LinearGaussianModel, LinearGuide, PosteriorGuide
from ppvae.models.vae import VAE

pytestmark = pytest.mark.usefixtures("float64")


def _ppca(n: int, data_dim: int = 5, latent_dim: int = 2):
    torch.manual_seed(0)
    model = LinearGaussianModel(data_dim, latent_dim, bias=torch.randn(data_dim), noise_scale=0.7)
    return model, model.marginal().sample((n,)).detach()


def test_gaussian_w2_closed_forms():
    m1, m2 = torch.tensor([0.0, 1.0]), torch.tensor([3.0, 1.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 1.0]))
    # Commuting covariances: W2² = |Δm|² + |√s1 − √s2|²_F.
    expected = math.sqrt(9.0 + (1 - 3) ** 2 + (2 - 1) ** 2)
    assert float(gaussian_w2(m1, s1, m2, s2)) == pytest.approx(expected)
    full = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    assert float(gaussian_w2(m1, full, m1, full)) == pytest.approx(0.0, abs=1e-6)


def test_nuts_recovers_the_exact_posterior_and_measures_the_guide():
    model, x = _ppca(n=2)
    guide = PosteriorGuide(model, scale_factor=0.5)
    check = nuts_check(model.model, guide.guide, x, num_samples=200, warmup=150, seed=0)
    post = model.posterior(x)
    mean = post.loc.detach().reshape(-1).numpy()
    sd = post.variance.detach().sqrt().reshape(-1).numpy()
    t = check.table
    assert check.samples.shape == (2, 200, 2, 2) and len(t) == 4
    assert check.max_rhat < 1.05 and check.min_ess > 100
    assert (abs(t["mean_nuts"] - mean) < 4 * t["mcse_mean"]).all()
    assert (abs(t["sd_nuts"] / sd - 1) < 0.15).all()
    # The guide has the right means and half the posterior's scale.
    assert check.mean_abs_std_diff < 0.2
    assert check.mean_sd_ratio == pytest.approx(0.5, rel=0.15)
    assert (check.wasserstein > 0.1).all()
    assert model.weight.grad is None  # the model's parameters were left alone
    assert "R-hat" in check.summary()


def test_nuts_check_runs_on_a_vae():
    torch.manual_seed(0)
    vae = VAE((4,), 2, likelihood="gaussian", hidden=(8,)).double()
    x = torch.randn(1, 4)
    check = nuts_check(vae.model, vae.guide, x, num_samples=60, warmup=60, seed=1)
    assert check.samples.shape == (2, 60, 1, 2)
    assert set(check.table.index.names) == {"obs", "latent"}
    assert torch.isfinite(check.wasserstein).all()
    with pytest.raises(ValueError, match="2 chains"):
        nuts_check(vae.model, vae.guide, x, num_chains=1)


def test_amortization_gap_reaches_the_best_diagonal_gaussian():
    model, x = _ppca(n=8, data_dim=6, latent_dim=3)
    torch.manual_seed(1)
    amortized = LinearGuide(6, 3)  # untrained: far from the posterior
    opts = {"steps": 300, "num_particles": 32, "num_samples": 2000, "seed": 0}
    gap = amortization_gap(model.model, amortized, x, family="diagonal", **opts)
    assert gap.family == "diagonal" and gap.scale_tril is None
    post = model.posterior(x)
    with torch.no_grad():
        best_scale = torch.linalg.inv(post.covariance_matrix).diagonal(dim1=-2, dim2=-1).rsqrt()
        torch.testing.assert_close(gap.loc, post.loc, atol=0.08, rtol=0)
        torch.testing.assert_close(gap.scale, best_scale, atol=0, rtol=0.06)
        log_p = model.exact_log_likelihood(x)
        best_q = dist.MultivariateNormal(post.loc, scale_tril=torch.diag_embed(best_scale))
        elbo_best = log_p - kl_divergence(best_q, post)
        elbo_amortized = log_p - kl_divergence(amortized(x), post)
    t = gap.table
    col = lambda name: torch.tensor(t[name].to_numpy(copy=True))  # noqa: E731
    # Each estimate against its closed form, within Monte Carlo error (+ optimiser slack).
    se = col("log_likelihood_mc_stderr")
    ok = se.isfinite()  # NaN where k-hat rejects the estimate
    assert ok.float().mean() >= 0.75
    assert (abs(col("log_likelihood") - log_p) < 4 * se)[ok].all()
    slack = 4 * col("elbo_optimized_mc_stderr") + 0.02
    assert (abs(col("elbo_optimized") - elbo_best) < slack).all()
    se_a = col("elbo_amortized_mc_stderr")
    assert (abs(col("elbo_amortized") - elbo_amortized) < 4 * se_a).all()
    # Both gaps are non-negative and add up to log p(x) − amortised ELBO.
    assert (col("approximation_gap") > -4 * col("elbo_optimized_mc_stderr") - 0.02).all()
    assert (col("amortization_gap") > 1.0).all()  # a random guide is far off
    torch.testing.assert_close(
        col("approximation_gap") + col("amortization_gap"), col("inference_gap")
    )
    assert (abs(col("inference_gap") - (log_p - elbo_amortized)) < 4 * se_a + 0.05).all()
    # The approximation gap is KL(best diagonal ‖ posterior): here, posterior correlations.
    kl_best = (log_p - elbo_best).mean()
    assert gap.means()["approximation_gap"] == pytest.approx(float(kl_best), abs=0.03)


def test_amortization_gap_of_an_exact_full_rank_guide_is_zero():
    # The exact posterior is a full-rank Gaussian: q* must be sought in a family that
    # contains it, or the "best" per-datapoint guide is worse than the amortised one.
    model, x = _ppca(n=8, data_dim=6, latent_dim=3)
    exact = PosteriorGuide(model)
    opts = {"steps": 300, "num_particles": 32, "num_samples": 2000, "seed": 0}
    gap = amortization_gap(model.model, exact.guide, x, **opts)
    t = gap.table
    tol = 4 * t["elbo_optimized_mc_stderr"] + 0.01
    assert (t["amortization_gap"] > -tol).all()
    assert (t["approximation_gap"].abs() < tol).all()
    assert gap.family == "fullrank"
    post = model.posterior(x)
    with torch.no_grad():
        torch.testing.assert_close(gap.loc, post.loc, atol=0.05, rtol=0)
        torch.testing.assert_close(gap.scale_tril, post.scale_tril, atol=0.05, rtol=0)
        marginal = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        torch.testing.assert_close(gap.scale, marginal, atol=0.05, rtol=0)
    # The fitted guide serves any batch of its datapoints (rows matched by value).
    fitted = local_guide(gap.loc, scale_tril=gap.scale_tril, data=x)
    res = log_likelihood(model.model, fitted, x, num_samples=200, batch_size=3, proposal="guide")
    exact_lp = model.exact_log_likelihood(x).detach()
    assert (abs(res.per_datapoint - exact_lp) < 5 * res.mc_stderr_per_datapoint).all()
    with pytest.raises(ValueError, match="not fitted to"):
        log_likelihood(model.model, fitted, x + 1.0, num_samples=10, proposal="guide")
    # The diagonal family, asked for explicitly, cannot reach the correlated posterior.
    diagonal = amortization_gap(model.model, exact.guide, x, family="diagonal", **opts)
    assert diagonal.family == "diagonal" and diagonal.scale_tril is None
    assert diagonal.means()["amortization_gap"] < -0.05
    with pytest.raises(ValueError, match="family"):
        amortization_gap(model.model, exact.guide, x, family="lowrank", **opts)


def test_amortization_gap_on_a_vae_starts_from_the_encoder():
    torch.manual_seed(0)
    vae = VAE((4,), 2, likelihood="gaussian", hidden=(8,)).double()
    x = torch.randn(5, 4)
    gap = amortization_gap(vae.model, vae, x, steps=0, num_samples=200, seed=0)
    loc, scale = vae.encode(x)
    torch.testing.assert_close(gap.loc, loc)
    torch.testing.assert_close(gap.scale, scale)
    # Without optimisation the per-datapoint guide is the amortised one: no amortisation gap
    # up to Monte Carlo error (the two estimates use different particles).
    se = gap.table["elbo_amortized_mc_stderr"] + gap.table["elbo_optimized_mc_stderr"]
    assert (gap.table["amortization_gap"].abs() < 4 * se).all()
    improved = amortization_gap(vae.model, vae.guide, x, steps=100, num_samples=200, seed=0)
    assert improved.means()["amortization_gap"] > 0
    assert "amortisation gap" in improved.summary()
