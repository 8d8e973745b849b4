"""Exact enumeration and importance sampling on VQ-VAEs small enough to enumerate."""

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

import ppvae
from ppvae.models import VQVAE


def _spread(vq: VQVAE, scale: float = 1.0) -> VQVAE:
    """Codebook vectors far apart, so that codes lead to distinct decodings."""
    with torch.no_grad():
        vq.codebook.weight.normal_(0.0, scale)
    return vq


def _tabular(grid: int, num_codes: int, posterior: str = "soft") -> VQVAE:
    vq = VQVAE(
        (5,),
        num_codes=num_codes,
        code_dim=2,
        grid=grid,
        hidden=(16,),
        likelihood="gaussian",
        posterior=posterior,
        init_sigma=3.0,
    )
    return _spread(vq)


def test_exact_matches_pyro_enumeration_on_one_position(float64):
    vq = _tabular(1, 32)
    x = torch.randn(6, 5)
    exact = ppvae.exact_log_likelihood(vq.model, x)
    # Pyro's parallel enumeration sums the single code site exactly (empty guide).
    enum_loss = TraceEnum_ELBO(max_plate_nesting=2).loss(
        config_enumerate(vq.model), lambda x: None, x
    )
    assert exact.per_datapoint.sum().item() == pytest.approx(-enum_loss, rel=1e-10)
    assert exact.num_samples == 32 and exact.proposal == ["exact"] * 6


def test_exact_matches_brute_force_on_two_positions(float64):
    vq = _tabular(2, 16)
    x = torch.randn(4, 5)
    exact = ppvae.exact_log_likelihood(vq.model, x, chunk_size=37)  # chunks of odd size
    codes = torch.cartesian_prod(torch.arange(16), torch.arange(16))  # (256, 2)
    log_prior = vq.prior_logits.log_softmax(-1)
    params = vq.decoder(vq.codebook(codes))  # every configuration at once
    log_joint = vq.likelihood(params).log_prob(x.unsqueeze(1))  # (4, 256)
    log_joint = log_joint + log_prior[0, codes[:, 0]] + log_prior[1, codes[:, 1]]
    expected = log_joint.logsumexp(-1)
    torch.testing.assert_close(exact.per_datapoint, expected.detach(), rtol=1e-10, atol=1e-10)


def test_exact_refuses_too_many_configurations():
    vq = VQVAE((5,), num_codes=64, grid=4, likelihood="gaussian")
    with pytest.raises(ValueError, match=r"16777216 configurations .*64\^4"):
        ppvae.exact_log_likelihood(vq.model, torch.randn(2, 5))


def test_exact_refuses_continuous_latents():
    vae = ppvae.VAE((5,), 2, likelihood="gaussian", hidden=(8,))
    with pytest.raises(ValueError, match="not a discrete scalar"):
        ppvae.exact_log_likelihood(vae.model, torch.randn(2, 5))


@pytest.mark.parametrize("grid,num_codes", [(1, 64), (2, 16)])
def test_soft_guide_importance_sampling_converges_to_exact(float64, grid, num_codes):
    vq = _tabular(grid, num_codes)
    x = vq.sample(8) + 0.3 * torch.randn(8, 5)  # data the model could have generated
    exact = ppvae.exact_log_likelihood(vq.model, x).per_datapoint
    res = ppvae.log_likelihood(vq.model, vq.guide, x, num_samples=3000, proposal="guide", seed=1)
    se = res.mc_stderr_per_datapoint
    finite = torch.isfinite(se)
    assert finite.sum() >= 6  # the s.e. is supported by k-hat for most datapoints
    err = (res.per_datapoint - exact).abs()
    assert (err[finite] <= 4 * se[finite] + 1e-9).all(), (err, se)
    assert abs(res.mean - exact.mean().item()) <= 4 * res.stderr + 1e-9
    # ... and the error shrinks with K: ten particles are visibly worse on average.
    few = ppvae.log_likelihood(vq.model, vq.guide, x, num_samples=10, proposal="guide", seed=1)
    assert (few.per_datapoint - exact).abs().mean() > err.mean()


def test_hard_guide_bound_is_log_joint_at_nearest_codes(float64):
    vq = VQVAE((5,), num_codes=16, code_dim=2, grid=2, hidden=(16,), likelihood="gaussian")
    vq = _spread(vq)
    x = torch.randn(6, 5)
    res = ppvae.log_likelihood(vq.model, vq.guide, x, num_samples=5, proposal="guide")
    k_star = vq.encode(x)  # (6, 2)
    params = vq.decoder(vq.codebook(k_star))
    log_prior = vq.prior_logits.log_softmax(-1).gather(-1, k_star.T).sum(0)  # log p(k*)
    expected = vq.likelihood(params).log_prob(x) + log_prior
    torch.testing.assert_close(res.per_datapoint, expected.detach(), rtol=0, atol=1e-12)
    # the uniform prior's term is -G log K exactly
    torch.testing.assert_close(log_prior, torch.full((6,), -2 * torch.tensor(16.0).log()))
    # the bound is below the exact log-likelihood
    assert (res.per_datapoint <= ppvae.exact_log_likelihood(vq.model, x).per_datapoint).all()
    # and the VQ objective's loss is the same bound
    loss = ppvae.VQ_ELBO().loss(vq.model, vq.guide, x)
    assert loss == pytest.approx(-expected.sum().item(), rel=1e-12)


def test_auto_proposal_keeps_the_guide_for_discrete_codes():
    vq = _tabular(2, 16)
    x = torch.randn(6, 5)
    res = ppvae.log_likelihood(vq.model, vq.guide, x, num_samples=50, seed=0)
    assert res.proposal == ["guide"] * 6
    if "unrefined_discrete" in res.extras:
        assert res.extras["unrefined_discrete"].dtype == torch.bool
    with pytest.raises(ValueError, match="continuous local latents.*codes"):
        ppvae.log_likelihood(vq.model, vq.guide, x, num_samples=50, proposal="refine")


def test_plate_nesting_is_read_from_the_model():
    vq = _tabular(2, 16)
    x = torch.randn(3, 5)
    with pytest.raises(ValueError):
        # with one plate, the grid plate's dim collides with the particle plate
        with pyro.validation_enabled(True):
            ppvae.log_likelihood(
                vq.model, vq.guide, x, num_samples=4, proposal="guide", max_plate_nesting=1
            )
    res = ppvae.log_likelihood(vq.model, vq.guide, x, num_samples=4, proposal="guide")
    assert res.per_datapoint.shape == (3,)
