"""Importance-sampled log-likelihood, checked against exact answers.

Oracles: probabilistic PCA (closed-form log p(x) and posterior) and, for global latent
sites, a pPCA with a Gamma-distributed precision shared by all datapoints, whose
per-datapoint marginal likelihood is a 1-D integral done by quadrature.
"""

from __future__ import annotations

import functools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from ppvae.inference.importance import log_likelihood
from ppvae.inference.iwae import IWAE_ELBO
from ppvae.inference.result import LogLikelihoodResult
from ppvae.inference.weights import per_datapoint_log_weights
from ppvae.models.linear_gaussian import LinearGaussianModel, PosteriorGuide
from ppvae.models.vae import VAE

pytestmark = pytest.mark.usefixtures("float64")


def _ppca(n: int = 5, data_dim: int = 4, latent_dim: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = LinearGaussianModel(data_dim, latent_dim, bias=torch.randn(data_dim), noise_scale=0.5)
    with torch.no_grad():
        x = model.marginal().sample((n,))
        exact = model.exact_log_likelihood(x)
    return model, x, exact


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("k", [1, 10, 1000])
def test_exact_posterior_guide_gives_exact_log_likelihood(k):
    model, x, exact = _ppca()
    res = log_likelihood(
        model.model, PosteriorGuide(model).guide, x, num_samples=k, seed=1, return_log_weights=True
    )
    assert res.per_datapoint.dtype == torch.float64 and res.per_datapoint.shape == (5,)
    torch.testing.assert_close(res.per_datapoint, exact, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.elbo_per_datapoint, exact, atol=1e-8, rtol=0)
    assert res.log_weights.shape == (5, k)
    torch.testing.assert_close(res.log_weights, exact[:, None].expand(5, k), atol=1e-8, rtol=0)
    if k == 1:
        assert torch.isnan(res.mc_stderr_per_datapoint).all()
    else:
        assert res.mc_stderr_per_datapoint.max() < 1e-6


def test_log_weights_match_closed_form_densities():
    model, x, _ = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    pyro.set_rng_seed(3)
    lw = per_datapoint_log_weights(model.model, guide.guide, (x,), {}, 6)
    pyro.set_rng_seed(3)  # the same draws, from Pyro's own vectorised plate
    with torch.no_grad():
        z = poutine.trace(pyro.plate("p", 6, dim=-2)(guide.guide)).get_trace(x).nodes["z"]["value"]
        loc = z @ model.weight.T + model.bias
        by_hand = (
            dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            + dist.Normal(loc, model.noise_scale).log_prob(x).sum(-1)
            - guide(x).log_prob(z)
        )
    assert lw.shape == (6, 5)
    torch.testing.assert_close(lw.detach(), by_hand, atol=1e-10, rtol=0)


def test_minibatch_scale_does_not_leak_into_weights():
    model, x, _ = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    plain = log_likelihood(model.model, guide.guide, x, num_samples=50, seed=4)
    scaled = log_likelihood(
        functools.partial(model.model, num_data=1000),
        functools.partial(guide.guide, num_data=1000),
        x,
        num_samples=50,
        seed=4,
    )
    torch.testing.assert_close(scaled.per_datapoint, plain.per_datapoint, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------- Monte Carlo
def test_wrong_guide_converges_as_k_grows():
    model, x, exact = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    opts = {"proposal": "guide", "seed": 2}
    small = log_likelihood(model.model, guide.guide, x, num_samples=10, **opts)
    large = log_likelihood(model.model, guide.guide, x, num_samples=10000, chunk_size=2500, **opts)
    err_small = (small.per_datapoint - exact).abs().mean()
    err_large = (large.per_datapoint - exact).abs()
    assert err_large.mean() < 0.2 * err_small
    assert (err_large < 4 * large.mc_stderr_per_datapoint).all()
    assert large.mc_stderr_per_datapoint.max() < 0.05
    # Under the guide the ELBO is strictly below log p(x) here.
    assert (large.elbo_per_datapoint < exact - 0.05).all()


def test_mc_stderr_matches_spread_of_repeated_estimates():
    model, x, exact = _ppca(n=4, data_dim=3)
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    reps = 200
    # Rows of the repeated data get independent particles: 200 estimates per datapoint.
    res = log_likelihood(model.model, guide.guide, x.repeat(reps, 1), num_samples=100, seed=7)
    est = res.per_datapoint.reshape(reps, 4)
    se = res.mc_stderr_per_datapoint.reshape(reps, 4)
    z = (est - exact) / se
    assert (z.abs() <= 2).double().mean() >= 0.85
    assert (z.abs() <= 3).double().mean() >= 0.97
    ratio = est.std(0) / se.mean(0)
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio


def test_chunk_and_batch_sizes_agree_within_mc_error():
    model, x, exact = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    results = [
        log_likelihood(
            model.model, guide.guide, x, num_samples=700, chunk_size=c, batch_size=b, seed=s
        )
        for c, b, s in [(None, None, 1), (64, 2, 2), (700, 1, 3)]
    ]
    for res in results:
        assert res.num_samples == 700 and len(res) == 5
        assert ((res.per_datapoint - exact).abs() < 4 * res.mc_stderr_per_datapoint).all()
    a, b = results[0], results[1]
    se = (a.mc_stderr_per_datapoint**2 + b.mc_stderr_per_datapoint**2).sqrt()
    assert ((a.per_datapoint - b.per_datapoint).abs() < 4 * se).all()
    # A chunk size that does not divide K still gives K weights per datapoint.
    res = log_likelihood(
        model.model, guide.guide, x, num_samples=10, chunk_size=3, return_log_weights=True
    )
    assert res.log_weights.shape == (5, 10) and torch.isfinite(res.log_weights).all()


def test_seed_reproducible_and_leaves_global_rng_alone():
    model, x, _ = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = log_likelihood(model.model, guide.guide, x, num_samples=20, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = log_likelihood(model.model, guide.guide, x, num_samples=20, seed=5)
    c = log_likelihood(model.model, guide.guide, x, num_samples=20, seed=6)
    assert torch.equal(a.per_datapoint, b.per_datapoint) and a.seed == 5
    assert not torch.equal(a.per_datapoint, c.per_datapoint)
    log_likelihood(model.model, guide.guide, x, num_samples=20)
    assert not torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------- the result
def test_result_statistics_summary_and_dict():
    model, x, _ = _ppca(n=6)
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    res = log_likelihood(
        model.model, guide.guide, x, num_samples=30, seed=1, device="cpu", diagnostics=None
    )
    pd, se = res.per_datapoint, res.mc_stderr_per_datapoint
    assert isinstance(res, LogLikelihoodResult) and len(res) == 6
    assert res.mean == pytest.approx(float(pd.mean()))
    assert res.stderr == pytest.approx(float(pd.std() / math.sqrt(6)))
    assert res.mc_stderr == pytest.approx(float(se.square().sum().sqrt() / 6))
    assert res.elbo == pytest.approx(float(res.elbo_per_datapoint.mean()))
    assert res.gap == pytest.approx(res.mean - res.elbo) and res.gap > 0
    assert res.log_weights is None and res.khat is None and res.ess is None
    default = log_likelihood(model.model, guide.guide, x, num_samples=30, proposal="guide", seed=1)
    assert torch.equal(default.per_datapoint, res.per_datapoint)
    assert default.khat.shape == (6,) and default.reliable.dtype == torch.bool
    assert "reliable" in default.summary()
    text = repr(res)
    assert f"log p(x) = {res.mean:.2f} ± {res.stderr:.2f} (data s.e.)" in text
    assert "K=30, N=6" in text and "ELBO" in text
    d = json.loads(json.dumps(res.to_dict()))
    assert d["num_samples"] == 30 and d["num_datapoints"] == 6 and d["seed"] == 1
    assert d["per_datapoint"] == pytest.approx(pd.tolist())
    k1 = log_likelihood(model.model, guide.guide, x, num_samples=1).to_dict()
    assert k1["mc_stderr"] is None and k1["mc_stderr_per_datapoint"] == [None] * 6


def test_data_fingerprint_tells_data_apart():
    model, x, _ = _ppca()
    guide = PosteriorGuide(model)
    fp = [
        log_likelihood(model.model, guide.guide, xx, num_samples=2).data_fingerprint
        for xx in (x, x.clone(), x + 1e-9, x[:4])
    ]
    assert fp[0] == fp[1] and len({fp[0], fp[2], fp[3]}) == 3 and len(fp[0]) == 16


def test_diagnostics_hook_concatenates_per_batch_outputs():
    model, x, _ = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    seen = []

    def hook(lw: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(tuple(lw.shape))
        w = torch.softmax(lw, dim=-1)
        ess = 1.0 / w.square().sum(-1)
        return {"ess": ess, "khat": lw.max(-1).values, "reliable": ess > 5, "first": lw[:, 0]}

    res = log_likelihood(
        model.model,
        guide.guide,
        x,
        num_samples=40,
        batch_size=2,
        seed=3,
        return_log_weights=True,
        diagnostics=hook,
    )
    assert seen == [(2, 40), (2, 40), (1, 40)]
    w = torch.softmax(res.log_weights, dim=-1)
    torch.testing.assert_close(res.ess, 1.0 / w.square().sum(-1))
    torch.testing.assert_close(res.khat, res.log_weights.max(-1).values)
    assert res.reliable.dtype == torch.bool and res.reliable.shape == (5,)
    torch.testing.assert_close(res.extras["first"], res.log_weights[:, 0])
    assert "reliable" in res.summary()
    with pytest.raises(ValueError, match="one value per datapoint"):
        log_likelihood(
            model.model, guide.guide, x, num_samples=4, diagnostics=lambda lw: {"ess": lw}
        )


# ---------------------------------------------------------------------- ppvae's VAE
def test_vae_check_data_labels_and_float32():
    torch.set_default_dtype(torch.float32)
    vae = VAE((6,), 2, hidden=(8,), num_labels=3)
    x = (torch.rand(7, 6) > 0.5).float()
    y = torch.arange(7) % 3
    res = log_likelihood(vae.model, vae.guide, x, y=y, num_samples=16, seed=0)
    assert res.per_datapoint.dtype == torch.float64 and torch.isfinite(res.per_datapoint).all()
    assert (
        res.data_fingerprint
        != log_likelihood(vae.model, vae.guide, x, y=y.flip(0), num_samples=2).data_fingerprint
    )
    with pytest.raises(ValueError, match="conditional VAE"):
        log_likelihood(vae.model, vae.guide, x, num_samples=4)
    with pytest.raises(ValueError, match="bernoulli"):
        log_likelihood(vae.model, vae.guide, x * 3, y=y, num_samples=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    model, x, exact = _ppca()
    model = model.cuda()
    res = log_likelihood(model.model, PosteriorGuide(model).guide, x, num_samples=8, device="cuda")
    torch.testing.assert_close(res.per_datapoint, exact, atol=1e-8, rtol=0)


# ---------------------------------------------------------------------- error cases
def test_error_cases():
    model, x, _ = _ppca()
    guide = PosteriorGuide(model)
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        log_likelihood(model.model, guide.guide, x, num_samples=0)
    with pytest.raises(ValueError, match="chunk_size"):
        log_likelihood(model.model, guide.guide, x, num_samples=4, chunk_size=0)

    def empty_guide(x):
        with pyro.plate("data", len(x), dim=-1):
            pass

    with pytest.raises(ValueError, match=r"\['z'\] of the model are not sampled by the guide"):
        log_likelihood(model.model, empty_guide, x, num_samples=4)

    def no_plate_model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(x), 2]).to_event(2))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(2), obs=x)

    def no_plate_guide(x):
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(x), 2]).to_event(2))

    with pytest.raises(ValueError, match=r"pyro.plate\('data'"):
        log_likelihood(no_plate_model, no_plate_guide, x, num_samples=4)

    def global_z_guide(x):  # draws z outside the data plate
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(x), 2]).to_event(2))

    with pytest.raises(ValueError, match="same plates"):
        log_likelihood(model.model, global_z_guide, x, num_samples=4)
    with pytest.raises(ValueError, match="global_sites"):
        log_likelihood(model.model, guide.guide, x, num_samples=4, global_sites="ignore")


# ---------------------------------------------------------------------- global sites
class SharedPrecisionPPCA(PyroModule):
    """τ ~ Gamma(3, 2) shared by all datapoints; z_n | τ ~ N(0, I/τ); x_n ~ N(W z_n + b, σ²I).

    The guide draws τ ~ Gamma(c, r) and z_n from the exact posterior given τ, shifted.
    """

    def __init__(self, shift: float = 0.2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(3, 2, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
        self.q_conc = nn.Parameter(torch.tensor(4.0, dtype=torch.float64))
        self.q_rate = nn.Parameter(torch.tensor(2.5, dtype=torch.float64))
        self.noise, self.shift = 0.5, shift
        self.hyper = (3.0, 2.0)

    def prior_tau(self) -> dist.Gamma:
        return dist.Gamma(torch.tensor(self.hyper[0]), torch.tensor(self.hyper[1]))

    def q_tau(self) -> dist.Gamma:
        return dist.Gamma(self.q_conc, self.q_rate)

    def prior_z(self, tau: torch.Tensor) -> dist.Distribution:
        return dist.Normal(torch.zeros(2), tau.rsqrt().unsqueeze(-1)).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        return dist.Normal(z @ self.weight.T + self.bias, self.noise).to_event(1)

    def posterior(self, x: torch.Tensor, tau: torch.Tensor) -> dist.MultivariateNormal:
        w, s2 = self.weight, self.noise**2
        m = w.T @ w + (tau * s2)[..., None, None] * torch.eye(2)
        loc = torch.linalg.solve(m, ((x - self.bias) @ w).unsqueeze(-1)).squeeze(-1)
        return dist.MultivariateNormal(loc + self.shift, covariance_matrix=s2 * torch.linalg.inv(m))

    def model(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        tau = pyro.sample("tau", self.prior_tau())
        sub = None if num_data is None else torch.arange(len(x))
        with pyro.plate("data", num_data or len(x), subsample=sub, dim=-1):
            z = pyro.sample("z", self.prior_z(tau))
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        tau = pyro.sample("tau", self.q_tau())
        sub = None if num_data is None else torch.arange(len(x))
        with pyro.plate("data", num_data or len(x), subsample=sub, dim=-1):
            pyro.sample("z", self.posterior(x, tau))

    @staticmethod
    def quadrature(log_f) -> torch.Tensor:
        """log ∫ exp(log_f(τ)) dτ by the trapezoid rule in u = log τ on [-12, 6]."""
        u = torch.linspace(-12.0, 6.0, 20001)
        weights = torch.ones_like(u)
        weights[[0, -1]] = 0.5
        f = log_f(u.exp()) + u + weights.log()
        return torch.logsumexp(f, dim=-1) + math.log(float(u[1] - u[0]))

    @torch.no_grad()
    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_n) = log ∫ Gamma(τ) N(x_n; b, W Wᵀ/τ + σ² I) dτ, by quadrature."""

        def log_f(tau: torch.Tensor) -> torch.Tensor:
            cov = (self.weight @ self.weight.T) / tau[:, None, None] + self.noise**2 * torch.eye(3)
            log_px = dist.MultivariateNormal(self.bias, covariance_matrix=cov).log_prob(x[:, None])
            return self.prior_tau().log_prob(tau) + log_px

        return self.quadrature(log_f)

    def hand_log_weights(self, x: torch.Tensor, tau: torch.Tensor, z: torch.Tensor):
        """log p(x_n, z | τ) − log q(z | x_n, τ) and log p(τ) − log q(τ), from the formulas."""
        local = (
            self.prior_z(tau).log_prob(z)
            + self.likelihood(z).log_prob(x)
            - self.posterior(x, tau).log_prob(z)
        )
        return local, self.prior_tau().log_prob(tau) - self.q_tau().log_prob(tau)


def _global_data(n: int = 4) -> tuple[SharedPrecisionPPCA, torch.Tensor]:
    m = SharedPrecisionPPCA()
    torch.manual_seed(11)
    with torch.no_grad():
        z = torch.randn(n, 2) / 1.5**0.5
        return m, m.likelihood(z).sample()


def test_quadrature_oracle_integrates_the_prior_exactly():
    m, _ = _global_data()
    prior = m.prior_tau()
    assert float(m.quadrature(prior.log_prob)) == pytest.approx(0.0, abs=1e-9)
    mean = m.quadrature(lambda t: prior.log_prob(t) + t.log()).exp()
    assert float(mean) == pytest.approx(1.5, abs=1e-9)


def test_global_sites_prior_predictive_converges_to_quadrature():
    m, x = _global_data()
    exact = m.log_marginal(x)
    opts = {"seed": 0, "proposal": "guide", "global_sites": "prior_predictive"}
    res = log_likelihood(m.model, m.guide, x, num_samples=10000, chunk_size=5000, **opts)
    assert res.mc_stderr_per_datapoint.max() < 0.03
    assert ((res.per_datapoint - exact).abs() < 4 * res.mc_stderr_per_datapoint).all()
    small = log_likelihood(m.model, m.guide, x, num_samples=5, **opts)
    assert (res.per_datapoint - exact).abs().mean() < (small.per_datapoint - exact).abs().mean()
    with pytest.raises(ValueError, match=r"\['tau'\].*global_sites='error'"):
        log_likelihood(m.model, m.guide, x, num_samples=4, global_sites="error")


def test_global_sites_of_the_ard_prior_are_named():
    torch.set_default_dtype(torch.float32)
    vae = VAE((5,), 2, hidden=(8,), prior="ard")
    x = (torch.rand(6, 5) > 0.5).float()
    res = log_likelihood(vae.model, vae.guide, x, num_samples=8, seed=0)
    assert torch.isfinite(res.per_datapoint).all()
    with pytest.raises(ValueError, match="ard_precision"):
        log_likelihood(vae.model, vae.guide, x, num_samples=8, global_sites="error")


@pytest.mark.parametrize("num_data", [None, 40])
def test_iwae_with_global_sites_equals_documented_bound(num_data):
    m, x = _global_data()
    iwae = IWAE_ELBO(7)
    pyro.set_rng_seed(5)
    loss = iwae.differentiable_loss(m.model, m.guide, x, num_data=num_data)
    pyro.set_rng_seed(5)
    terms = iwae.particle_terms(m.model, m.guide, x, num_data=num_data)
    tau = terms.guide_trace.nodes["tau"]["value"]
    z = terms.guide_trace.nodes["z"]["value"]
    assert tau.shape == (1, 1) and z.shape == (7, 4, 2)  # one τ shared by the particles
    with torch.no_grad():
        local, glob = m.hand_log_weights(x, tau, z)
        scale = 1.0 if num_data is None else num_data / 4
        bound = glob.squeeze() + scale * (torch.logsumexp(local, 0) - math.log(7)).sum()
    torch.testing.assert_close(-loss.detach(), bound, atol=1e-10, rtol=0)


def test_iwae_with_global_sites_dreg_agrees_with_plain_gradient():
    m, x = _global_data()
    params = list(m.parameters())
    xr = x.repeat(100, 1)  # 100 independent copies per datapoint in one call
    grads = {}
    for dreg in (False, True):
        iwae = IWAE_ELBO(10, dreg=dreg)
        reps = []
        for r in range(20):
            pyro.set_rng_seed(100 + r)
            g = torch.autograd.grad(iwae.differentiable_loss(m.model, m.guide, xr), params)
            reps.append(torch.cat([t.reshape(-1) for t in g]))
        grads[dreg] = torch.stack(reps)
    a, b = grads[False], grads[True]
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() <= 5 * se + 1e-9).all()
    assert (a.mean(0).abs() > 5 * se).sum() >= 4  # the comparison has power
