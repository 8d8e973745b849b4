"""Guides: shapes, gradients under vectorised particles, flow caching and densities."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppvae.models.flows import FlowGuide, IAFGuide, SplineFlowGuide
from ppvae.models.guides import DiagonalNormalGuide, FullRankNormalGuide, LowRankNormalGuide
from ppvae.models.networks import MLPEncoder
from ppvae.models.registry import GUIDES, build
from ppvae.models.vae import VAE

FLOWS = sorted(name for name, cls in GUIDES.items() if not cls.gaussian)


def _encoder(in_dim: int = 5, num_labels: int | None = None) -> MLPEncoder:
    return MLPEncoder((in_dim,), hidden=(16,), num_labels=num_labels)


def test_registry_holds_every_guide_family() -> None:
    assert {"diagonal", "lowrank", "fullrank", "iaf", "nsf"} <= set(GUIDES)
    assert GUIDES["iaf"] is IAFGuide and GUIDES["nsf"] is SplineFlowGuide
    assert set(FLOWS) >= {"iaf", "nsf"}
    assert all(issubclass(GUIDES[name], FlowGuide) for name in ("iaf", "nsf"))


def test_build_names_choices_and_passes_instances_through() -> None:
    with pytest.raises(ValueError, match="unknown guide 'nope'.*diagonal"):
        build(GUIDES, "nope", encoder=_encoder(), latent_dim=3)
    guide = DiagonalNormalGuide(_encoder(), 3)
    assert build(GUIDES, guide, encoder=_encoder(), latent_dim=3) is guide
    assert build(GUIDES, "lowrank", encoder=_encoder(), latent_dim=3, rank=1).rank == 1


@pytest.mark.parametrize("name", sorted(GUIDES))
@pytest.mark.parametrize("labels", [False, True])
def test_forward_shapes(name: str, labels: bool) -> None:
    num_labels = 3 if labels else None
    guide = GUIDES[name](_encoder(num_labels=num_labels), 4)
    x = torch.randn(6, 5)
    y = nn.functional.one_hot(torch.arange(6) % 3, 3).float() if labels else None
    q = guide(x, y)
    assert q.batch_shape == (6,) and q.event_shape == (4,)
    z = q.rsample((2,))
    assert z.shape == (2, 6, 4)
    assert q.log_prob(z).shape == (2, 6)
    loc, scale = guide.mean_and_scale(x, y)
    assert loc.shape == scale.shape == (6, 4) and (scale > 0).all()


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_vectorised_elbo_reaches_every_parameter(name: str) -> None:
    # Pyro expands the guide's distribution to (particles, batch) and the flows receive a
    # (batch, context) conditioning tensor with (particles, batch, latent) inputs.
    vae = VAE((5,), 3, guide=name, hidden=(16,))
    x = torch.bernoulli(torch.full((7, 5), 0.5))
    elbo = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in vae.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname
    guide_params = [p for pname, p in vae.named_parameters() if pname.startswith("guide_net.")]
    assert any(p.grad.abs().sum() > 0 for p in guide_params)


def test_lowrank_covariance_is_factor_plus_diagonal() -> None:
    guide = LowRankNormalGuide(_encoder(), 4, rank=2)
    q = guide(torch.randn(3, 5))
    assert q.cov_factor.shape == (3, 4, 2)
    cov = q.cov_factor @ q.cov_factor.mT + torch.diag_embed(q.cov_diag)
    torch.testing.assert_close(q.covariance_matrix, cov)
    # Off-diagonal structure has the declared rank.
    assert torch.linalg.matrix_rank(cov - torch.diag_embed(q.cov_diag)).max() == 2


def test_fullrank_scale_tril_is_a_cholesky_factor() -> None:
    guide = FullRankNormalGuide(_encoder(), 4)
    assert guide.head.out_features == 4 + 4 * 5 // 2
    q = guide(torch.randn(3, 5))
    tril = q.scale_tril
    assert torch.equal(tril, tril.tril())
    assert (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    rows, cols = torch.tril_indices(4, 4, offset=-1)
    assert (tril[:, rows, cols] != 0).all()  # every strictly-lower entry is free


def _correlated_target(dim: int) -> dist.MultivariateNormal:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.3 * torch.eye(dim, dtype=torch.float64)
    loc = torch.randn(dim, generator=g, dtype=torch.float64)
    return dist.MultivariateNormal(loc, covariance_matrix=cov)


@pytest.mark.parametrize("name,kwargs", [("fullrank", {}), ("lowrank", {"rank": 3})])
def test_gaussian_guides_recover_a_correlated_gaussian_exactly(name: str, kwargs: dict) -> None:
    # With a rich enough family the reverse KL to a Gaussian target can reach zero.
    target = _correlated_target(3)
    guide = GUIDES[name](MLPEncoder((1,), hidden=(8,)), 3, **kwargs).double()
    x = torch.zeros(1, 1, dtype=torch.float64)
    opt = torch.optim.Adam(guide.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        kl = torch.distributions.kl_divergence(guide(x), target).sum()
        kl.backward()
        opt.step()
    q = guide(x)
    assert kl.item() < 1e-3
    torch.testing.assert_close(
        q.covariance_matrix[0], target.covariance_matrix, atol=0.02, rtol=0.02
    )


@pytest.mark.parametrize("name", FLOWS)
def test_flow_guides_beat_the_best_diagonal_gaussian(name: str) -> None:
    # Best mean-field Gaussian for N(m, Σ): variances 1/Λ_ii, KL = ½ (Σ log Λ_ii + log|Σ|).
    rho = 0.9
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    target = dist.MultivariateNormal(torch.tensor([0.5, -0.5], dtype=torch.float64), cov)
    precision = torch.linalg.inv(cov)
    best_diag_kl = 0.5 * (precision.diagonal().log().sum() + torch.logdet(cov)).item()
    assert best_diag_kl == pytest.approx(-0.5 * math.log(1 - rho**2))
    guide = GUIDES[name](MLPEncoder((1,), hidden=(8,)), 2, num_flows=2).double()
    x = torch.zeros(1, 1, dtype=torch.float64)
    opt = torch.optim.Adam(guide.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        q = guide(x)
        z = q.rsample((32,))
        kl = (q.log_prob(z) - target.log_prob(z)).mean()
        kl.backward()
        opt.step()
    with torch.no_grad():
        q = guide(x)
        z = q.sample((4096,))
        kl = (q.log_prob(z) - target.log_prob(z)).mean().item()
    assert kl < 0.4 * best_diag_kl


def _sequential(transforms: list, eps: torch.Tensor) -> torch.Tensor:
    for t in transforms:
        eps = t(eps)
    return eps


@pytest.mark.parametrize("name", FLOWS)
def test_flow_log_prob_matches_change_of_variables(name: str) -> None:
    # log q(z) = log p₀(ε) − log|det ∂z/∂ε| with the Jacobian from autograd: fails if the
    # flow scored its samples in the wrong direction or with a wrong log-determinant.
    guide = GUIDES[name](_encoder(), 3, num_flows=3).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    q = guide(x)
    eps = q.base_dist.sample()[0]
    jac = torch.autograd.functional.jacobian(
        lambda e: _sequential(q.transforms, e.unsqueeze(0))[0], eps
    )
    z = _sequential(q.transforms, eps.unsqueeze(0))
    expected = q.base_dist.log_prob(eps.unsqueeze(0)) - torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(q.log_prob(z), expected, atol=1e-8, rtol=1e-8)
    # A fresh distribution has empty caches and scores z through the inverse.
    torch.testing.assert_close(guide(x).log_prob(z.clone()), expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", FLOWS)
def test_flow_log_prob_of_own_samples_uses_the_cache(name: str) -> None:
    latent_dim, num_flows = 4, 3
    guide = GUIDES[name](_encoder(), latent_dim, num_flows=num_flows).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    calls = []
    for step in guide.steps:
        step.nn.register_forward_hook(lambda *_: calls.append(1))

    q = guide(x).expand((2, 6))  # as Pyro's particle plate does
    cached = [t for t in q.transforms if hasattr(t, "arn")]
    assert len(cached) == num_flows and all(t._cache_size == 1 for t in cached)
    assert all(t._cache_size == 1 for t in q.transforms)

    z = q.rsample()
    assert z.shape == (2, 6, latent_dim)
    assert len(calls) == num_flows  # sampling: one network pass per step
    log_q = q.log_prob(z)
    assert len(calls) == num_flows  # scoring its own sample: no further pass

    # Recomputed without cache through the inverse: latent_dim passes per step.
    log_q_fresh = guide(x).log_prob(z.clone())
    assert len(calls) == num_flows + num_flows * latent_dim
    torch.testing.assert_close(log_q, log_q_fresh, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(log_q).all()


def test_flow_guides_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="num_flows"):
        IAFGuide(_encoder(), 3, num_flows=0)
    with pytest.raises(ValueError, match="hidden_dims"):
        IAFGuide(_encoder(), 8, hidden_dims=(4,))
    with pytest.raises(ValueError, match="order"):
        SplineFlowGuide(_encoder(), 3, order="cubic")


def test_flow_guides_rebuild_identically_from_a_state_dict() -> None:
    # The autoregressive order is fixed, so a guide built under another seed loads a
    # checkpoint and computes the same density.
    a = SplineFlowGuide(_encoder(), 3)
    torch.manual_seed(123)
    b = SplineFlowGuide(_encoder(), 3)
    b.load_state_dict(a.state_dict())
    x, z = torch.randn(4, 5), torch.randn(4, 3)
    torch.testing.assert_close(a(x).log_prob(z), b(x).log_prob(z))


def test_one_dimensional_flow_builds_without_warnings() -> None:
    guide = IAFGuide(_encoder(), 1)
    assert guide(torch.randn(2, 5)).event_shape == (1,)
