"""β-TCVAE and annealed-capacity objectives: the TC estimator against an exact answer, and the
objectives against Pyro's ELBOs where they must agree."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import ppvae
from ppvae.inference.disentangle_objectives import (
    TCVAE_ELBO,
    AnnealedCapacityELBO,
    mss_log_weights,
    total_correlation,
)


def _gaussian_posteriors(n: int, cov: torch.Tensor, noise: float, seed: int = 0):
    """Posteriors N(μ_n, noise² I) whose mixture is close to N(0, cov)."""
    gen = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov - noise**2 * torch.eye(len(cov)))
    loc = torch.randn(n, len(cov), generator=gen) @ chol.T
    scale = torch.full_like(loc, noise)
    z = loc + scale * torch.randn(loc.shape, generator=gen)
    return z, dist.Normal(loc, scale)


def _exact_tc(cov: torch.Tensor) -> float:
    return 0.5 * (cov.diagonal().log().sum() - torch.logdet(cov)).item()


COV = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, -0.3], [0.2, -0.3, 1.0]], dtype=torch.float64)


def test_mss_weights_sum_to_one():
    for batch, n in [(5, 100), (64, 1000), (8, 8)]:
        assert torch.allclose(
            mss_log_weights(batch, n).exp().sum(1), torch.ones(batch, dtype=torch.float64)
        )


def test_tc_of_whole_set_matches_gaussian(float64):
    z, post = _gaussian_posteriors(3000, COV, 0.4)
    tc = total_correlation(z, post, num_data=3000)
    assert tc.mean().item() == pytest.approx(_exact_tc(COV), abs=0.04)


def test_tc_under_minibatching_uses_the_dataset_size(float64):
    z, post = _gaussian_posteriors(4000, COV, 0.4, seed=1)
    batches = [
        total_correlation(
            z[i : i + 500], dist.Normal(post.loc[i : i + 500], post.scale[i : i + 500]), 4000
        )
        for i in range(0, 4000, 500)
    ]
    assert torch.cat(batches).mean().item() == pytest.approx(_exact_tc(COV), abs=0.06)
    # the MWS estimate is shifted up by at least (D - 1) log N: far from TC
    mws = total_correlation(z[:500], dist.Normal(post.loc[:500], post.scale[:500]), 4000, "mws")
    assert mws.mean().item() > _exact_tc(COV) + math.log(4000)


def _vae_and_data():
    x = (torch.rand(40, 6) > 0.5).float()
    vae = ppvae.VAE((6,), latent_dim=3, hidden=(8,), likelihood="bernoulli")
    return vae, x


def test_tcvae_at_beta_one_is_the_elbo():
    vae, x = _vae_and_data()
    pyro.set_rng_seed(3)
    ours = TCVAE_ELBO(beta=1).loss(vae.model, vae.guide, x[:10], num_data=40)
    pyro.set_rng_seed(3)
    ref = Trace_ELBO().loss(vae.model, vae.guide, x[:10], num_data=40)
    assert ours == pytest.approx(ref, rel=1e-5)


def test_tcvae_penalises_total_correlation():
    vae, x = _vae_and_data()
    pyro.set_rng_seed(3)
    one = TCVAE_ELBO(beta=1).loss(vae.model, vae.guide, x[:10], num_data=40)
    pyro.set_rng_seed(3)
    six = TCVAE_ELBO(beta=6).loss(vae.model, vae.guide, x[:10], num_data=40)
    assert six != pytest.approx(one)


def test_capacity_zero_gamma_one_is_the_meanfield_elbo():
    vae, x = _vae_and_data()
    pyro.set_rng_seed(3)
    ours = AnnealedCapacityELBO(capacity=0.0, gamma=1.0).loss(vae.model, vae.guide, x, num_data=40)
    pyro.set_rng_seed(3)
    ref = TraceMeanField_ELBO().loss(vae.model, vae.guide, x, num_data=40)
    assert ours == pytest.approx(ref, rel=1e-5)


def test_capacity_rises_with_gradient_steps_only():
    vae, x = _vae_and_data()
    elbo = AnnealedCapacityELBO(capacity=10.0, capacity_steps=4)
    elbo.loss(vae.model, vae.guide, x)
    assert elbo.current_capacity == 0.0
    for _ in range(2):
        elbo.differentiable_loss(vae.model, vae.guide, x)
    assert elbo.current_capacity == pytest.approx(5.0)


@pytest.mark.parametrize("objective", [TCVAE_ELBO(beta=4), AnnealedCapacityELBO(5.0, 10, 10.0)])
def test_objectives_train_with_fit_and_svi(objective):
    vae, x = _vae_and_data()
    hist = ppvae.fit(vae, x, elbo=objective, epochs=2, batch_size=10, progress=False, seed=0)
    assert len(hist.train_objective) == 2 and all(math.isfinite(v) for v in hist.train_objective)
    vae.zero_grad()
    value = objective.loss_and_grads(vae.model, vae.guide, x[:10], num_data=40)  # SVI's call
    assert math.isfinite(value)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())


def test_refuses_guides_that_do_not_factorise():
    vae = ppvae.VAE((6,), latent_dim=3, hidden=(8,), likelihood="bernoulli", guide="fullrank")
    x = (torch.rand(10, 6) > 0.5).float()
    with pytest.raises(ValueError, match="Independent distribution"):
        TCVAE_ELBO(beta=4).loss(vae.model, vae.guide, x)


def test_a_batch_of_one_trains_without_the_tc_term():
    vae, x = _vae_and_data()
    pyro.set_rng_seed(3)
    ours = TCVAE_ELBO(beta=6).loss(vae.model, vae.guide, x[:1], num_data=40)
    pyro.set_rng_seed(3)
    assert ours == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x[:1], num_data=40))
