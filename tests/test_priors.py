"""Contract and exactness tests for the priors in ``ppvae.models.priors``."""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import transform_to

from ppvae.models.constraints import softplus_greater_than
from ppvae.models.priors import ARDPrior, LearnedNormal, MixtureOfGaussians, StudentTPrior
from ppvae.models.registry import PRIORS, build
from ppvae.models.vae import VAE
from ppvae.models.vamp import VampPrior

LATENT = 3
EVENT = (1, 8, 8)
CASES = [
    ("normal", {}),
    ("learned_normal", {}),
    ("mixture", {"num_components": 4}),
    ("vamp", {"num_components": 5}),
    ("vamp", {"num_components": 5, "learn_weights": True}),
    ("student_t", {}),
    ("ard", {}),
]
IDS = [f"{name}{'-weights' if kw.get('learn_weights') else ''}" for name, kw in CASES]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)


def _digits(n: int = 32) -> torch.Tensor:
    return torch.randint(0, 17, (n, *EVENT)).float()


def _vae(prior: str | nn.Module = "normal", **prior_kwargs) -> VAE:
    return VAE(
        EVENT,
        LATENT,
        prior=prior,
        likelihood="binomial",
        hidden=(32,),
        prior_kwargs=prior_kwargs,
    )


def test_registry_names() -> None:
    assert set(PRIORS) == {"normal", "learned_normal", "mixture", "vamp", "student_t", "ard"}
    with pytest.raises(ValueError, match="unknown prior 'nope'"):
        build(PRIORS, "nope", latent_dim=LATENT)


def test_a_prior_instance_must_match_the_vae_latent_dim() -> None:
    with pytest.raises(ValueError, match="latent_dim=4 but the VAE has 3"):
        _vae(LearnedNormal(4))


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_sample_and_log_prob_shapes(name: str, kwargs: dict) -> None:
    vae = _vae(name, **kwargs)
    p = vae.prior()
    assert tuple(p.event_shape) == (LATENT,)
    assert tuple(p.batch_shape) == ()
    z = p.sample((7,))
    assert z.shape == (7, LATENT)
    lp = p.log_prob(z)
    assert lp.shape == (7,)
    assert torch.isfinite(lp).all()
    # The VAE's own sampler goes through the same prior.
    x = vae.sample(6)
    assert x.shape == (6, *EVENT)
    assert ((x >= 0) & (x <= 16)).all()


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_gradient_reaches_every_prior_parameter(name: str, kwargs: dict, vectorize: bool) -> None:
    vae = _vae(name, **kwargs)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, _digits())
    assert torch.isfinite(loss)
    loss.backward()
    params = dict(vae.prior.named_parameters())
    if name != "normal":
        assert params, f"prior {name!r} has no learnable parameters"
    for pname, p in params.items():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_softplus_greater_than_is_the_bound_plus_a_softplus() -> None:
    constraint = softplus_greater_than(0.25)
    u = torch.linspace(-30.0, 30.0, 61)
    to = transform_to(constraint)
    assert torch.equal(to(u), torch.nn.functional.softplus(u) + 0.25)
    inside = torch.linspace(-5.0, 30.0, 36, dtype=torch.float64)  # away from underflow
    torch.testing.assert_close(to.inv(to(inside)), inside)
    assert constraint.check(to(inside)).all() and not constraint.check(torch.tensor(0.2))


def test_learned_normal_starts_at_standard_normal() -> None:
    p = build(PRIORS, "learned_normal", latent_dim=LATENT)()
    z = torch.randn(5, LATENT)
    expected = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(p.log_prob(z), expected, atol=1e-3, rtol=0)


def test_mixture_log_prob_matches_direct_logsumexp() -> None:
    prior = MixtureOfGaussians(LATENT, num_components=6)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(6))
        prior.scales_unconstrained.copy_(torch.randn(6, LATENT))
    # Components start distinct.
    assert torch.cdist(prior.locs, prior.locs).add(torch.eye(6)).min() > 0.1
    z = 2.0 * torch.randn(11, LATENT)
    scales = torch.nn.functional.softplus(prior.scales_unconstrained) + 1e-4
    per_component = torch.distributions.Normal(prior.locs, scales).log_prob(z[:, None, :]).sum(-1)
    expected = torch.logsumexp(per_component + prior.logits.log_softmax(-1), dim=-1)
    torch.testing.assert_close(prior().log_prob(z), expected, atol=1e-5, rtol=1e-5)


def test_vamp_is_mixture_of_guide_posteriors_at_pseudo_inputs() -> None:
    vae = _vae("vamp", num_components=5)
    prior = vae.prior
    u = prior.pseudo_inputs()
    assert u.shape == (5, *EVENT)
    # Binomial(16) data: the pseudo-inputs live in [0, 16].
    assert ((u > 0) & (u < 16)).all()
    z = torch.randn(9, LATENT)
    q = vae.guide_net(u)
    assert tuple(q.batch_shape) == (5,)
    expected = torch.logsumexp(q.log_prob(z[:, None, :]), dim=-1) - math.log(5)
    torch.testing.assert_close(prior().log_prob(z), expected, atol=1e-5, rtol=1e-5)


def test_vamp_does_not_register_the_guide_twice() -> None:
    vae = _vae("vamp", num_components=5)
    prior_params = {id(p) for p in vae.prior.parameters()}
    guide_params = {id(p) for p in vae.guide_net.parameters()}
    assert prior_params.isdisjoint(guide_params)
    assert list(dict(vae.prior.named_parameters())) == ["raw_inputs"]
    assert not any(k.startswith("prior._guide_net") for k in vae.state_dict())
    # A rebuilt VAE loads the state and reproduces the prior exactly.
    other = _vae("vamp", num_components=5)
    other.load_state_dict(vae.state_dict())
    z = torch.randn(4, LATENT)
    torch.testing.assert_close(other.prior().log_prob(z), vae.prior().log_prob(z))
    # A deep copy's prior follows the copied guide, not the original one.
    clone = copy.deepcopy(vae)
    assert clone.prior._guide_net is clone.guide_net


def test_vamp_init_and_value_range() -> None:
    x = _digits(5)
    vae = _vae("vamp", num_components=5, init=x)
    # Clamped 1e-3 of the range inside [0, 16], otherwise reproduced.
    torch.testing.assert_close(vae.prior.pseudo_inputs(), x, atol=16e-3 + 1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="expected"):
        _vae("vamp", num_components=4, init=x)
    binary = VAE((6,), 2, prior="vamp", likelihood="bernoulli", hidden=(8,))
    u = binary.prior.pseudo_inputs()
    assert ((u > 0) & (u < 1)).all()
    counts = VAE((6,), 2, prior="vamp", likelihood="poisson", hidden=(8,))
    assert (counts.prior.pseudo_inputs() > 0).all()
    real = VAE((6,), 2, prior="vamp", likelihood="gaussian", hidden=(8,))
    assert real.prior.pseudo_inputs() is real.prior.raw_inputs


@pytest.mark.parametrize("guide", ["iaf", "nsf"])
def test_vamp_with_flow_guide_is_the_mixture_of_flow_posteriors(guide: str) -> None:
    vae = VAE(
        EVENT,
        4,
        prior="vamp",
        guide=guide,
        likelihood="binomial",
        hidden=(32,),
        prior_kwargs={"num_components": 5},
    )
    z = torch.randn(3, 7, 4)
    u = vae.prior.pseudo_inputs()
    # One component at a time: the flow broadcasts a single pseudo-input's context.
    rows = [vae.guide_net(u[k : k + 1]).log_prob(z.unsqueeze(-2)).squeeze(-1) for k in range(5)]
    expected = torch.logsumexp(torch.stack(rows, -1), -1) - math.log(5)
    torch.testing.assert_close(vae.prior().log_prob(z), expected)


def test_vamp_refuses_conditional_vae() -> None:
    with pytest.raises(ValueError, match="conditional VAE"):
        VAE(EVENT, LATENT, prior="vamp", likelihood="binomial", hidden=(32,), num_labels=3)
    with pytest.raises(RuntimeError, match="setup"):
        VampPrior(LATENT)()


def test_student_t_df_is_learnable_and_above_floor() -> None:
    prior = StudentTPrior(LATENT, init_df=5.0, min_df=1.0)
    torch.testing.assert_close(prior.df, torch.full((LATENT,), 5.0))
    # Heavy-tailed (Cauchy) latents pull the degrees of freedom down towards the floor.
    z = dist.Cauchy(0.0, 1.0).sample((2000, LATENT))
    opt = torch.optim.Adam(prior.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        (-prior().log_prob(z).mean()).backward()
        opt.step()
    assert (prior.df < 3.0).all()
    assert (prior.df > 1.0).all()
    with torch.no_grad():
        prior.df_unconstrained.fill_(-50.0)
    assert (prior.df >= 1.0).all()


def _site_frames(trace: poutine.Trace, name: str) -> set[str]:
    return {frame.name for frame in trace.nodes[name]["cond_indep_stack"]}


def test_ard_global_site_is_outside_the_data_plate_and_scaled_once() -> None:
    vae = _vae("ard")
    x = _digits(8)
    guide_tr = poutine.trace(vae.guide).get_trace(x, num_data=100)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, num_data=100)
    for tr in (guide_tr, model_tr):
        assert ARDPrior.site in tr.nodes
        assert "data" not in _site_frames(tr, ARDPrior.site)
        assert "data" in _site_frames(tr, "z")
        assert float(tr.nodes[ARDPrior.site]["scale"]) == 1.0
        assert float(tr.nodes["z"]["scale"]) == pytest.approx(100 / 8)
    assert float(model_tr.nodes["x"]["scale"]) == pytest.approx(100 / 8)
    assert isinstance(guide_tr.nodes[ARDPrior.site]["fn"].base_dist, dist.LogNormal)
    assert (guide_tr.nodes[ARDPrior.site]["value"] > 0).all()


def test_ard_under_vectorised_particles() -> None:
    vae = _vae("ard")
    x = _digits(8)
    with pyro.plate("particles", 4, dim=-2):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    assert guide_tr.nodes[ARDPrior.site]["value"].shape == (4, 1, LATENT)
    assert model_tr.nodes[ARDPrior.site]["log_prob"].shape == (4, 1)
    assert model_tr.nodes["z"]["log_prob"].shape == (4, 8)
    # Each particle's z is scored under its own precisions.
    tau = guide_tr.nodes[ARDPrior.site]["value"]
    z = guide_tr.nodes["z"]["value"]
    expected = dist.Normal(0.0, tau.rsqrt()).log_prob(z).sum(-1)
    torch.testing.assert_close(model_tr.nodes["z"]["log_prob"], expected)
    for vectorize in (True, False):
        elbo = Trace_ELBO(num_particles=4, vectorize_particles=vectorize, max_plate_nesting=1)
        assert torch.isfinite(elbo.differentiable_loss(vae.model, vae.guide, x))
