"""The importance-weighted objective, checked against bounds computed by hand on pPCA."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO

from ppvae.inference.iwae import IWAE_ELBO, IWAEModule
from ppvae.models.linear_gaussian import LinearGaussianModel, LinearGuide, PosteriorGuide
from ppvae.models.vae import VAE

pytestmark = pytest.mark.usefixtures("float64")


def _ppca(n: int = 5, data_dim: int = 4, latent_dim: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = LinearGaussianModel(data_dim, latent_dim, bias=torch.randn(data_dim), noise_scale=0.5)
    with torch.no_grad():
        x = model.marginal().sample((n,))
    return model, x


def _hand_log_weights(model, guide, x, z):
    """log p(x_n, z) − log q(z | x_n) from pPCA's densities, for z of shape (..., B, L)."""
    loc = z @ model.weight.T + model.bias
    return (
        dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        + dist.Normal(loc, model.noise_scale).log_prob(x).sum(-1)
        - guide(x).log_prob(z)
    )


def _draws(guide, x, k, seed):
    """The guide's particles as drawn by Pyro's own vectorised plate."""
    pyro.set_rng_seed(seed)
    trace = poutine.trace(pyro.plate("p", k, dim=-2)(guide.guide)).get_trace(x)
    return trace.nodes["z"]["value"].detach()


# ---------------------------------------------------------------------- value
def test_value_is_per_datapoint_logsumexp_not_pooled():
    model, x = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    pyro.set_rng_seed(3)
    loss = IWAE_ELBO(6).differentiable_loss(model.model, guide.guide, x)
    with torch.no_grad():
        lw = _hand_log_weights(model, guide, x, _draws(guide, x, 6, 3))  # (K, B)
        per_datapoint = (torch.logsumexp(lw, 0) - math.log(6)).sum()
        pooled = torch.logsumexp(lw.sum(1), 0) - math.log(6)
    torch.testing.assert_close(-loss.detach(), per_datapoint, atol=1e-10, rtol=0)
    assert abs(float(per_datapoint - pooled)) > 1.0


@pytest.mark.parametrize("num_data", [None, 50])
def test_minibatch_scale_multiplies_the_per_datapoint_bound(num_data):
    model, x = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    scale = 1.0 if num_data is None else num_data / len(x)
    pyro.set_rng_seed(4)
    loss = IWAE_ELBO(6).loss(model.model, guide.guide, x, num_data=num_data)
    with torch.no_grad():
        lw = _hand_log_weights(model, guide, x, _draws(guide, x, 6, 4))
        bound = scale * (torch.logsumexp(lw, 0) - math.log(6)).sum()
        # Pyro's RenyiELBO applies the scale inside the log-sum-exp (and pools over the
        # data whenever a site lies outside the data plate): it agrees only unscaled.
        pyro.set_rng_seed(4)
        renyi = RenyiELBO(alpha=0, num_particles=6, vectorize_particles=True, max_plate_nesting=1)
        renyi_loss = renyi.loss(model.model, guide.guide, x, num_data=num_data)
    assert -loss == pytest.approx(float(bound), abs=1e-9)
    if num_data is None:
        assert renyi_loss == pytest.approx(loss, abs=1e-9)
    else:
        assert abs(renyi_loss - loss) > 1.0


@pytest.mark.parametrize("num_data", [None, 50])
def test_one_particle_is_pyro_trace_elbo(num_data):
    model, x = _ppca()
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    pyro.set_rng_seed(5)
    ours = IWAE_ELBO(1).differentiable_loss(model.model, guide.guide, x, num_data=num_data)
    pyro.set_rng_seed(5)
    pyros = Trace_ELBO().differentiable_loss(model.model, guide.guide, x, num_data=num_data)
    torch.testing.assert_close(ours, pyros, atol=1e-10, rtol=0)


def _bound_replicates(k: int, model, guide, x, copies: int, reps: int) -> torch.Tensor:
    """``reps`` independent averages over ``copies`` draws of the K-particle bound."""
    xr = x.repeat(copies, 1)
    objective = IWAE_ELBO(k)
    return torch.tensor(
        [-objective.loss(model.model, guide.guide, xr) / copies for _ in range(reps)]
    )


def test_elbo_below_iwae_below_log_likelihood_and_monotone_in_k():
    model, x = _ppca(n=3)
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    exact = float(model.exact_log_likelihood(x).detach().sum())
    est = {k: _bound_replicates(k, model, guide, x, copies=400, reps=10) for k in (1, 5, 50)}
    mean = {k: float(v.mean()) for k, v in est.items()}
    se = {k: float(v.std() / math.sqrt(len(v))) for k, v in est.items()}
    assert mean[1] + 4 * (se[1] + se[5]) < mean[5]
    assert mean[5] + 4 * (se[5] + se[50]) < mean[50]
    assert mean[50] < exact + 4 * se[50]
    assert exact - mean[1] > 0.5  # the guide is wrong enough for the ordering to be visible


def test_exact_guide_makes_every_k_exact():
    model, x = _ppca()
    guide = PosteriorGuide(model)
    exact = float(model.exact_log_likelihood(x).detach().sum())
    for k in (1, 7):
        assert -IWAE_ELBO(k).loss(model.model, guide.guide, x) == pytest.approx(exact, abs=1e-8)


def _global_mean_model(x):
    """θ ~ N(0, 1) outside the data plate; z_n ~ N(0, 1), x_n ~ N(θ + z_n, 1) inside."""
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(theta + z, 1.0), obs=x)


def _global_mean_guide(theta_scale, z_scale):
    """q(θ) = N(m, (c·s)²) around the exact p(θ | x); q(z_n | x_n, θ) = N((x_n − θ)/2, τ²)."""

    def guide(x):
        n = x.shape[0]
        post_var = 1.0 / (1.0 + n / 2)
        loc = post_var * x.sum() / 2
        theta = pyro.sample("theta", dist.Normal(loc, theta_scale * post_var**0.5))
        with pyro.plate("data", n, dim=-1):
            pyro.sample("z", dist.Normal((x - theta) / 2, z_scale))

    return guide


def test_pooled_renyi_bound_with_a_global_site_is_neither_looser_nor_tighter():
    # With a global θ, Pyro's RenyiELBO(alpha=0) is the IWAE bound on the batch's joint
    # (K joint draws of θ, z_1..z_B), which tends to log p(x_1..x_B) as K grows; ours holds
    # θ at one draw and tends to an ELBO in θ. So the pooled bound is tighter when q(θ) is
    # off and the local guide exact, and looser when the local guide errs on many points.
    torch.manual_seed(0)
    x = 1.5 * torch.randn(20) + 0.7
    k, reps = 64, 100
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    bounds = {}
    for case, (c, tau) in {"global off": (0.3, 0.5**0.5), "local off": (1.0, 0.3)}.items():
        guide = _global_mean_guide(c, tau)
        draws = {
            name: torch.tensor([-elbo.loss(_global_mean_model, guide, x) for _ in range(reps)])
            for name, elbo in (("pooled", renyi), ("ours", IWAE_ELBO(k)))
        }
        se = math.hypot(*(float(d.std()) / math.sqrt(reps) for d in draws.values()))
        bounds[case] = (float(draws["pooled"].mean()), float(draws["ours"].mean()), se)
    pooled, ours, se = bounds["global off"]  # measured: -37.24 vs -37.61
    assert pooled > ours + 4 * se
    pooled, ours, se = bounds["local off"]  # measured: -42.02 vs -39.63
    assert ours > pooled + 1.0 + 4 * se


# ---------------------------------------------------------------------- minibatches
def _closed_form_elbo(model, guide, x):
    """E_q[log p(x, z) − log q(z | x)] per datapoint for Gaussian q, in closed form."""
    q = guide(x)
    m, cov = q.loc, q.covariance_matrix
    w, s = model.weight, model.noise_scale
    prior = dist.Normal(0.0, 1.0).log_prob(m).sum(-1) - 0.5 * cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    fit = dist.Normal(m @ w.T + model.bias, s).log_prob(x).sum(-1)
    fit = fit - (w @ cov @ w.T).diagonal(dim1=-2, dim2=-1).sum(-1) / (2 * s**2)
    return prior + fit + q.entropy()


def test_minibatch_elbo_is_unbiased_for_full_data_elbo():
    model, x = _ppca(n=20)
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    with torch.no_grad():
        full = float(_closed_form_elbo(model, guide, x).sum())
        # The closed form is itself checked against Pyro on the full batch.
        check = Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
        assert -check.loss(model.model, guide.guide, x) == pytest.approx(full, abs=0.5)
        values = torch.tensor(
            [
                -Trace_ELBO().loss(model.model, guide.guide, x[torch.randperm(20)[:5]], num_data=20)
                for _ in range(400)
            ]
        )
    se = float(values.std() / math.sqrt(len(values)))
    assert abs(float(values.mean()) - full) < 4 * se
    assert se < 0.05 * abs(full)


def test_minibatch_iwae_is_unbiased_for_full_data_iwae():
    model, x = _ppca(n=12)
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3)
    iwae = IWAE_ELBO(5)
    full = _bound_replicates(5, model, guide, x, copies=200, reps=10)
    minibatch = torch.tensor(
        [
            -iwae.loss(model.model, guide.guide, x[torch.randperm(12)[:3]], num_data=12)
            for _ in range(400)
        ]
    )
    se = math.sqrt(float(full.var() / len(full) + minibatch.var() / len(minibatch)))
    assert abs(float(minibatch.mean() - full.mean())) < 4 * se


# ---------------------------------------------------------------------- gradients
def _guide_near_posterior(model, seed: int = 1) -> LinearGuide:
    guide = LinearGuide(model.data_dim, model.latent_dim)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return guide


def _gradient_replicates(loss_fn, params, reps: int) -> torch.Tensor:
    out = []
    for _ in range(reps):
        grads = torch.autograd.grad(loss_fn(), params)
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out)


@pytest.mark.parametrize("dreg", [False, True])
def test_gradient_is_unbiased_for_the_bounds_gradient(dreg):
    model, x = _ppca(n=2, data_dim=3)
    guide = _guide_near_posterior(model)
    params = list(model.parameters()) + list(guide.parameters())
    k, copies, reps = 5, 500, 20
    xr = x.repeat(copies, 1)
    iwae = IWAE_ELBO(k, dreg=dreg)
    ours = _gradient_replicates(
        lambda: iwae.differentiable_loss(model.model, guide.guide, xr) / copies, params, reps
    )

    def direct_loss():
        # The bound written out with torch.distributions and reparameterised draws.
        z = guide(x).rsample((copies, k))  # (copies, K, B, L)
        lw = _hand_log_weights(model, guide, x, z)
        return -(torch.logsumexp(lw, 1) - math.log(k)).sum(-1).mean()

    direct = _gradient_replicates(direct_loss, params, reps)
    se = (ours.var(0) / reps + direct.var(0) / reps).sqrt()
    assert ((ours.mean(0) - direct.mean(0)).abs() <= 5 * se + 1e-10).all()
    # Power: most gradient entries are far from zero at this precision.
    assert (direct.mean(0).abs() > 10 * se).sum() >= len(se) // 2


def test_dreg_keeps_value_and_model_gradient_and_lowers_guide_variance():
    model, x = _ppca(n=2, data_dim=3)
    guide = _guide_near_posterior(model)
    model_params, guide_params = list(model.parameters()), list(guide.parameters())
    xr = x.repeat(50, 1)
    grads = {}
    for dreg in (False, True):
        pyro.set_rng_seed(9)
        loss = IWAE_ELBO(20, dreg=dreg).differentiable_loss(model.model, guide.guide, xr)
        grads[dreg] = (loss.detach(), torch.autograd.grad(loss, model_params + guide_params))
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-10, rtol=0)
    for a, b in zip(grads[True][1][:3], grads[False][1][:3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # DReG's guide gradient has lower variance (Tucker et al. 2018), here by a wide margin.
    var = {}
    for dreg in (False, True):
        reps = _gradient_replicates(
            lambda d=dreg: IWAE_ELBO(20, dreg=d).differentiable_loss(model.model, guide.guide, xr),
            guide_params,
            10,
        )
        var[dreg] = float(reps.var(0).sum())
    assert var[True] < 0.5 * var[False]


def test_vae_with_ard_prior_dreg_reaches_every_parameter():
    torch.set_default_dtype(torch.float32)
    vae = VAE((6,), 2, hidden=(8,), prior="ard")
    x = (torch.rand(10, 6) > 0.5).float()
    module = IWAE_ELBO(4, dreg=True, num_outer=2)(vae.model, vae.guide)
    assert isinstance(module, IWAEModule)
    assert {id(p) for p in module.parameters()} == {id(p) for p in vae.parameters()}
    loss = module(x, num_data=100)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert isinstance(IWAE_ELBO(3).loss(vae.model, vae.guide, x), float)
    vae.zero_grad()
    value = IWAE_ELBO(3).loss_and_grads(vae.model, vae.guide, x)  # Pyro's SVI interface
    assert isinstance(value, float) and math.isfinite(value)
    assert all(p.grad is not None for p in vae.parameters())


# ---------------------------------------------------------------------- errors
def test_errors():
    model, x = _ppca()
    with pytest.raises(ValueError, match="num_particles"):
        IWAE_ELBO(0)

    def empty_guide(x, num_data=None):
        with pyro.plate("data", len(x), dim=-1):
            pass

    with pytest.raises(ValueError, match="not sampled by the guide"):
        IWAE_ELBO(3).loss(model.model, empty_guide, x)

    def discrete_model(x):
        with pyro.plate("data", len(x), dim=-1):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def discrete_guide(x):
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample("c", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match="not reparameterisable"):
        IWAE_ELBO(3).differentiable_loss(discrete_model, discrete_guide, x)
