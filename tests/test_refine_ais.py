"""Refined proposals, AIS and BDMC against the exact answers of probabilistic PCA."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

from ppvae import khat_summary, log_likelihood
from ppvae.inference.ais import AISSettings, ais_log_weights, sigmoid_schedule
from ppvae.inference.bdmc import bdmc, simulate
from ppvae.inference.local_target import LocalTarget
from ppvae.inference.passes import summarise_log_weights
from ppvae.inference.refine import RefineSettings, fit_refined_proposal, refined_log_weights
from ppvae.models import LinearGaussianModel, PosteriorGuide

pytestmark = pytest.mark.usefixtures("float64")


class ShiftedGuide(PyroModule):
    """The exact posterior's covariance, its mean moved by ``shift`` posterior s.d.s."""

    def __init__(self, model: LinearGaussianModel, shift: float) -> None:
        super().__init__()
        self.__dict__["target"] = model
        self.shift = shift

    def guide(self, x, num_data=None):
        post = self.target.posterior(x)
        k = post.loc.shape[-1]
        direction = torch.full((k, 1), self.shift / math.sqrt(k))
        loc = post.loc + (post.scale_tril @ direction).squeeze(-1)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=post.scale_tril))


def _ppca(n=20, d=8, k=3, seed=0):
    torch.manual_seed(seed)
    model = LinearGaussianModel(d, k, noise_scale=0.5)
    x = model.marginal().sample((n,)).detach()
    return model, x


def test_local_target_log_joint_matches_closed_form():
    model, x = _ppca(n=5)
    target = LocalTarget(model.model, PosteriorGuide(model).guide, (x,))
    assert (target.batch_size, target.dim, target.global_sites) == (5, 3, [])
    z = torch.randn(4, 5, 3)
    with torch.no_grad():
        got = target.log_joint(z)
        prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        lik = dist.Normal(z @ model.weight.T + model.bias, model.noise_scale).log_prob(x)
        assert torch.allclose(got, prior + lik.sum(-1))
        post = model.posterior(x)
        assert torch.allclose(target.guide_log_density(z), post.log_prob(z))
    mean, std = target.guide_moments()
    assert torch.allclose(mean, post.loc.detach())
    assert torch.allclose(std, post.variance.sqrt().detach())


def test_laplace_fit_is_the_exact_posterior_and_refined_estimate_exact():
    model, x = _ppca()
    target = LocalTarget(model.model, ShiftedGuide(model, 3.0).guide, (x,))
    fitted = fit_refined_proposal(target, RefineSettings(iwae_steps=20))
    post = model.posterior(x)
    assert torch.allclose(fitted.mode, post.loc.detach(), atol=1e-6)
    assert torch.allclose(fitted.laplace_scale_tril, post.scale_tril.detach(), atol=1e-6)
    lw = refined_log_weights(target, fitted, 500)
    est, se, _ = summarise_log_weights(lw.T)
    exact = model.exact_log_likelihood(x).detach()
    assert ((est - exact).abs() < 4 * se).all() and se.max() < 0.02
    # Without the IWAE polish the refined component is the exact posterior, so the
    # weights p/r with r = 0.9 exact + 0.1 guide lie in (0, p(x)/0.9].
    laplace = fit_refined_proposal(target, RefineSettings(iwae_steps=0))
    lw = refined_log_weights(target, laplace, 500)
    assert (lw - exact).max() <= math.log(1 / 0.9) + 1e-6


def test_refine_settings_are_checked():
    with pytest.raises(ValueError, match="defensive"):
        RefineSettings(defensive=1.0)
    with pytest.raises(ValueError, match="iwae_particles"):
        RefineSettings(iwae_particles=0)


def test_sigmoid_schedule_runs_from_zero_to_one_increasing():
    betas = sigmoid_schedule(100)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 101
    assert (betas.diff() > 0).all()
    # Steps are small at both ends, where the distributions change fastest.
    assert betas.diff()[0] < betas.diff()[50] > betas.diff()[-1]


def test_ais_converges_to_the_exact_log_likelihood():
    model, x = _ppca(n=10)
    target = LocalTarget(model.model, PosteriorGuide(model, scale_factor=0.7).guide, (x,))
    run = ais_log_weights(target, AISSettings(num_steps=300, num_chains=32))
    est = run.log_weights.logsumexp(0) - math.log(32)
    err = est - model.exact_log_likelihood(x).detach()
    assert err.abs().mean() < 0.02
    assert err.abs().max() < 0.06
    assert ((run.accept_rate - 0.65).abs() < 0.15).all()


def test_ais_with_one_step_is_importance_sampling_from_the_base():
    model, x = _ppca(n=3)
    target = LocalTarget(model.model, PosteriorGuide(model, scale_factor=1.5).guide, (x,))
    run = ais_log_weights(target, AISSettings(num_steps=1, num_chains=4000))
    est = run.log_weights.logsumexp(0) - math.log(4000)
    assert (est - model.exact_log_likelihood(x).detach()).abs().max() < 0.03


def test_simulate_draws_from_the_model():
    model, x = _ppca(n=2000)
    x_sim, latents = simulate(model.model, x)
    assert x_sim.shape == x.shape and set(latents) == {"z"}
    assert latents["z"].std(0).sub(1).abs().max() < 0.1
    cov = model.marginal().covariance_matrix.detach()
    assert (torch.cov(x_sim.T) - cov).abs().max() < 0.15


def test_bdmc_brackets_the_exact_value_and_the_gap_shrinks():
    model, x = _ppca(n=20)
    guide = PosteriorGuide(model, scale_factor=0.6, shift=0.2).guide
    opts = {"num_datapoints": 20, "num_chains": 32, "seed": 1}
    short = bdmc(model.model, guide, x, num_steps=10, **opts)
    long = bdmc(model.model, guide, x, num_steps=200, **opts)
    assert torch.equal(short.x, long.x)  # same seed, same simulated data
    exact = model.exact_log_likelihood(long.x).detach()
    for res in (short, long):
        # Stochastic bounds: each holds in expectation, so allow 3 standard errors.
        for bound, sign in ((res.lower, 1), (res.upper, -1)):
            err = bound - exact
            tol = 3 * err.std() / math.sqrt(len(err))
            assert sign * err.mean() < tol
    assert short.mean_gap > 0.2
    assert long.mean_gap < short.mean_gap / 5
    assert "mean gap" in repr(long)


def test_bdmc_refuses_global_latents():
    from ppvae import VAE

    vae = VAE((4,), 2, prior="ard", likelihood="gaussian", hidden=(8,))
    with pytest.raises(ValueError, match="outside"):
        bdmc(vae.model, vae.guide, torch.randn(3, 4), num_datapoints=3, num_steps=2)


# --- log_likelihood with proposals, honest errors, global latents --------------------


def test_shifted_guide_is_rejected_and_refine_and_auto_fix_it():
    model, x = _ppca(n=100, seed=2)
    guide = ShiftedGuide(model, 3.0).guide
    exact = model.exact_log_likelihood(x).detach()
    plain = log_likelihood(model.model, guide, x, num_samples=1000, proposal="guide", seed=0)
    assert (plain.khat > 0.7).float().mean() > 0.9
    assert plain.mc_stderr_per_datapoint[plain.khat > plain.khat_threshold].isnan().all()
    assert math.isnan(plain.mc_stderr)
    for proposal in ("refine", "auto"):
        res = log_likelihood(model.model, guide, x, num_samples=1000, proposal=proposal, seed=0)
        assert (res.khat < 0.5).float().mean() >= 0.95
        assert list(set(res.proposal)) == ["refine"]
        err = (res.per_datapoint - exact).abs()
        assert (err <= 2 * res.mc_stderr_per_datapoint).float().mean() >= 0.9
        assert res.guide_only is not None and res.guide_only.num_samples == 1000
        assert torch.equal(res.guide_only.per_datapoint, plain.per_datapoint)


@pytest.mark.parametrize("c", [0.8, 0.62, 0.5, 0.3])
def test_auto_intervals_cover_the_exact_value_at_the_nominal_rate(c):
    # 400 independent datapoints stand for 400 seeds: each has its own particles.
    model, x = _ppca(n=400, d=6, k=2, seed=3)
    guide = PosteriorGuide(model, scale_factor=c).guide  # true k = 1 − c²
    exact = model.exact_log_likelihood(x).detach()
    res = log_likelihood(model.model, guide, x, num_samples=1000, seed=1)
    se = res.mc_stderr_per_datapoint
    assert not se.isnan().any()
    covered = ((res.per_datapoint - exact).abs() <= 2 * se).float().mean()
    assert 0.92 <= covered <= 0.98, (c, float(covered), sorted(set(res.proposal)))


def test_guide_proposal_reports_no_error_above_the_threshold():
    model, x = _ppca(n=400, d=6, k=2, seed=3)
    res = log_likelihood(
        model.model, PosteriorGuide(model, scale_factor=0.5).guide, x, proposal="guide", seed=1
    )
    above = res.khat > res.khat_threshold
    assert above.any() and res.mc_stderr_per_datapoint[above].isnan().all()
    assert not res.mc_stderr_per_datapoint[~above].isnan().any()
    middle = (res.khat > 0.5) & ~above
    assert torch.equal(res.mc_stderr_approximate, middle)


def test_custom_proposal_callable():
    model, x = _ppca(n=10)

    def exact_proposal(target, num_samples, chunk_size=None):
        post = model.posterior(target.args[0])  # the batch the target was built on
        z = post.sample((num_samples,))
        return target.log_joint(z) - post.log_prob(z)

    res = log_likelihood(model.model, PosteriorGuide(model, 0.5).guide, x, proposal=exact_proposal)
    exact = model.exact_log_likelihood(x).detach()
    assert torch.allclose(res.per_datapoint, exact, atol=1e-8)
    assert list(set(res.proposal)) == ["custom"]


class GlobalMeanPPCA(PyroModule):
    """pPCA whose mean θ ~ N(0, s² I) is a global latent; the guide's q(θ) = N(m, v I).

    The guide's local part is the exact posterior of z given θ, so every estimand has a
    closed form: E_q(θ) p(x_n | θ) = N(x_n; m, WWᵀ + (σ² + v) I) and the single-datapoint
    prior predictive p(x_n) = N(x_n; 0, WWᵀ + (σ² + s²) I).
    """

    def __init__(self, d=5, k=2, s=2.0, m=0.5, v=0.3, sigma=0.5):
        super().__init__()
        self.w = torch.randn(d, k) / math.sqrt(k)
        self.d, self.k, self.s, self.m, self.v, self.sigma = d, k, s, m, v, sigma

    def model(self, x):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(self.d), self.s).to_event(1))
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.k), 1.0).to_event(1))
            loc = z @ self.w.T + theta  # θ has a singleton data dim under particles
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        theta_q = dist.Normal(torch.full((self.d,), self.m), math.sqrt(self.v)).to_event(1)
        theta = pyro.sample("theta", theta_q)
        eye = torch.eye(self.k)
        prec = self.w.T @ self.w / self.sigma**2 + eye
        cov = torch.linalg.inv(prec)
        loc = ((x - theta) @ self.w / self.sigma**2) @ cov
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=cov))

    def exact(self, x, spread):
        cov = self.w @ self.w.T + (self.sigma**2 + spread) * torch.eye(self.d)
        mean = torch.full((self.d,), self.m if spread == self.v else 0.0)
        return dist.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def test_global_latents_each_estimand_against_its_exact_value():
    torch.manual_seed(4)
    g = GlobalMeanPPCA()
    x = torch.randn(30, g.k) @ g.w.T + g.sigma * torch.randn(30, g.d) + g.m
    held = log_likelihood(g.model, g.guide, x, num_samples=20000, proposal="guide", seed=0)
    err = held.per_datapoint - g.exact(x, g.v)
    assert not held.mc_stderr_per_datapoint.isnan().any()
    assert (err.abs() < 4 * held.mc_stderr_per_datapoint).all()
    # The shared θ_k make the datapoints' errors correlated; the mean's s.e. knows it.
    assert abs(float(err.mean())) < 3 * held.mc_stderr
    naive = float(held.mc_stderr_per_datapoint.pow(2).sum().sqrt() / len(x))
    assert held.mc_stderr > 1.5 * naive
    # The prior predictive is an opt-in, and needs q(θ) wider than p(θ) to be estimable.
    wide = GlobalMeanPPCA(s=0.5, m=0.0, v=0.5)
    prior = log_likelihood(
        wide.model,
        wide.guide,
        x,
        num_samples=20000,
        proposal="guide",
        seed=0,
        global_sites="prior_predictive",
    )
    err = prior.per_datapoint - wide.exact(x, wide.s**2)
    se = prior.mc_stderr_per_datapoint
    assert (~se.isnan()).float().mean() > 0.8
    assert (err.abs() < 4 * se)[~se.isnan()].all()
    # Per-datapoint ELBOs are not charged the global KL (about 4 nats here): with the
    # exact conditional guide each is E_q(θ) log p(x_n | θ), which is, in closed form,
    # log N(x_n; m, C) − v tr(C⁻¹) / 2 with C = WWᵀ + σ² I.
    cov = g.w @ g.w.T + g.sigma**2 * torch.eye(g.d)
    base = dist.MultivariateNormal(torch.full((g.d,), g.m), covariance_matrix=cov)
    elbo = base.log_prob(x) - 0.5 * g.v * torch.linalg.inv(cov).trace()
    assert (held.elbo_per_datapoint - elbo).abs().max() < 0.05
    with pytest.raises(ValueError, match="theta"):
        log_likelihood(g.model, g.guide, x, global_sites="error")


def test_verdict_names_the_measured_cause_and_the_remedy():
    model, x = _ppca(n=60, seed=2)
    shifted = ShiftedGuide(model, 3.0).guide
    res = log_likelihood(model.model, shifted, x, num_samples=1000, seed=0)
    verdict = khat_summary(res)["verdict"]
    assert verdict.startswith("reliable")
    assert "misplaced, not too narrow" in verdict and "re-estimated" in verdict
    assert 2.5 < float(res.extras["guide_offset"].median()) < 3.5  # the 3 s.d. shift
    plain = khat_summary(res.guide_only)["verdict"]
    assert plain.startswith("unreliable") and "proposal='auto'" in plain
    narrow = PosteriorGuide(model, scale_factor=0.3).guide
    res = log_likelihood(model.model, narrow, x, num_samples=1000, seed=0)
    assert "too narrow" in khat_summary(res)["verdict"]
    assert float(res.extras["guide_scale_ratio"].median()) == pytest.approx(0.3, abs=0.05)
