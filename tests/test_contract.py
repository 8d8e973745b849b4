"""Contract test: every prior × guide × likelihood (and the two-layer variant) works.

The cases come from the registries, so a newly registered component is covered
without editing this file. Each case builds a tiny model and checks that its
programs trace, that guide and model agree on the latent sites, that a vectorised
ELBO step sends a finite gradient to every parameter, that the tools return the
right shapes, and that a state-dict round-trip reproduces the model exactly.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

from ppvae.models.guides import LowRankNormalGuide
from ppvae.models.hierarchical import TwoLayerVAE
from ppvae.models.likelihoods import GaussianLikelihood
from ppvae.models.networks import MLPDecoder, MLPEncoder
from ppvae.models.priors import LearnedNormal
from ppvae.models.registry import (
    DECODERS,
    ENCODERS,
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    Registry,
    build,
)
from ppvae.models.vae import VAE
from ppvae.models.vamp import VampPrior

EVENT_SHAPE = (1, 3, 4)
BATCH = 4

_DATA: dict[str, Callable[[tuple[int, ...]], torch.Tensor]] = {
    "bernoulli": lambda s: torch.bernoulli(torch.full(s, 0.5)),
    "binomial": lambda s: torch.randint(0, 17, s).float(),  # total_count 16 by default
    "continuous_bernoulli": lambda s: torch.rand(s).clamp(0.01, 0.99),
    "gaussian": lambda s: torch.randn(s),
    "poisson": lambda s: torch.randint(0, 6, s).float(),
    "categorical": lambda s: torch.randint(0, 256, s).float(),
    "discretized_logistic": lambda s: torch.randint(0, 256, s).float(),
}
# For a likelihood not listed above: the first candidate its check_support accepts,
# from the narrowest support to the widest.
_CANDIDATES = ("bernoulli", "continuous_bernoulli", "binomial", "categorical", "gaussian")


def fake_data(likelihood_name: str, event_shape: Sequence[int], n: int = BATCH) -> torch.Tensor:
    """A batch of ``n`` datapoints in the support of the named likelihood."""
    shape = (n, *event_shape)
    if likelihood_name in _DATA:
        return _DATA[likelihood_name](shape)
    likelihood = build(LIKELIHOODS, likelihood_name, event_shape=event_shape)
    for candidate in _CANDIDATES:
        x = _DATA[candidate](shape)
        try:
            likelihood.check_support(x)
        except ValueError:
            continue
        return x
    raise AssertionError(f"no candidate data fits likelihood {likelihood_name!r}")


def _invalid_by_design(prior: str, guide: str) -> bool:
    # The VampPrior with a flow guide inverts the flow once per component: too slow
    # for this grid; tests/test_priors.py checks that pairing against a brute-force sum.
    return issubclass(PRIORS[prior], VampPrior) and not GUIDES[guide].gaussian


CASES = [
    pytest.param("vae", prior, guide, lik, id=f"{prior}-{guide}-{lik}")
    for prior in sorted(PRIORS)
    for guide in sorted(GUIDES)
    for lik in sorted(LIKELIHOODS)
    if not _invalid_by_design(prior, guide)
] + [
    # The two-layer VAE fixes its top prior to N(0, I).
    pytest.param("two_layer", "normal", guide, lik, id=f"two_layer-{guide}-{lik}")
    for guide in sorted(GUIDES)
    for lik in sorted(LIKELIHOODS)
]


def _build(variant: str, prior: str, guide: str, likelihood: str) -> VAE:
    if variant == "two_layer":
        return TwoLayerVAE(
            EVENT_SHAPE,
            (3, 2),
            guide=guide,
            likelihood=likelihood,
            hidden=(16,),
            latent_hidden=(8,),
        )
    return VAE(EVENT_SHAPE, 3, prior=prior, guide=guide, likelihood=likelihood, hidden=(16,))


def _rebuild(vae: VAE) -> VAE:
    config = dict(vae.config)
    cls = {"VAE": VAE, "TwoLayerVAE": TwoLayerVAE}[config.pop("class", "VAE")]
    return cls(**config)


def _samples(trace: poutine.Trace) -> dict:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


def _vectorised_loss(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    elbo = pyro.infer.Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    return elbo.differentiable_loss(vae.model, vae.guide, x)


@pytest.mark.parametrize("variant,prior,guide,likelihood", CASES)
def test_component_contract(variant: str, prior: str, guide: str, likelihood: str) -> None:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    vae = _build(variant, prior, guide, likelihood)
    x = fake_data(likelihood, EVENT_SHAPE)
    vae.check_data(x)
    latent_dim = vae.latent_dim

    # Programs trace; the guide draws exactly the model's latent sites.
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    model_sites, guide_sites = _samples(model_tr), _samples(guide_tr)
    observed = {n for n, s in model_sites.items() if s["is_observed"]}
    assert observed == {"x"}
    assert set(guide_sites) == set(model_sites) - observed
    assert torch.equal(model_sites["x"]["value"], x)
    for name, site in guide_sites.items():
        assert not site["is_observed"]
        if any(f.name == "data" for f in site["cond_indep_stack"]):
            assert site["value"].shape[0] == BATCH, name
    for tr in (guide_tr, model_tr):
        tr.compute_log_prob()
        for name, site in _samples(tr).items():
            assert torch.isfinite(site["log_prob"]).all(), name

    # The guide's distribution scores its own samples.
    q = vae.guide_net(x)
    assert q.batch_shape == (BATCH,) and q.event_shape == (latent_dim,)
    z = q.sample()
    log_q = q.log_prob(z)
    assert log_q.shape == (BATCH,) and torch.isfinite(log_q).all()

    # One vectorised ELBO step reaches every parameter with a finite gradient.
    loss = _vectorised_loss(vae, x)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"

    # Tools.
    assert vae.sample(2).shape == (2, *EVENT_SHAPE)
    vae.likelihood.check_support(vae.sample(2, mean=False))
    assert vae.reconstruct(x).shape == x.shape
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (BATCH, latent_dim)
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all()
    # A flow's scale is a Monte Carlo standard deviation, which rounds to zero when the
    # guide is narrower than float32 resolution at its location.
    assert (scale > 0).all() if getattr(vae.guide_net, "gaussian", True) else (scale >= 0).all()

    # State-dict round-trip into a model rebuilt from its config under another seed.
    buf = io.BytesIO()
    torch.save(vae.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    clone = _rebuild(vae)
    clone.load_state_dict(torch.load(buf))
    outputs = []
    for model in (vae, clone):
        pyro.set_rng_seed(3)
        with torch.no_grad():
            outputs.append((_vectorised_loss(model, x), model.sample(2), model.encode(x)[0]))
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "prior,guide",
    [(p, g) for p in sorted(PRIORS) for g in sorted(GUIDES) if _invalid_by_design(p, g)],
)
def test_combinations_left_out_of_the_grid_still_build(prior: str, guide: str) -> None:
    # Left out for time only: tests/test_priors.py checks their log densities.
    vae = VAE(EVENT_SHAPE, 3, prior=prior, guide=guide, hidden=(16,))
    assert not vae.guide_net.gaussian


def test_fake_data_fits_every_likelihood() -> None:
    torch.manual_seed(0)
    for name in LIKELIHOODS:
        x = fake_data(name, EVENT_SHAPE)
        assert x.shape == (BATCH, *EVENT_SHAPE)
        build(LIKELIHOODS, name, event_shape=EVENT_SHAPE).check_support(x)


def test_contract_cases_cover_the_registries() -> None:
    ids = {(c.values[1], c.values[2], c.values[3]) for c in CASES if c.values[0] == "vae"}
    expected = math.prod(map(len, (PRIORS, GUIDES, LIKELIHOODS)))
    left_out = sum(_invalid_by_design(p, g) for p in PRIORS for g in GUIDES) * len(LIKELIHOODS)
    assert len(ids) == expected - left_out


# ------------------------------------------------------------------ registries and build
README = Path(__file__).resolve().parents[1] / "README.md"

# registry, a name in it, constructor arguments, the class that name builds
BUILD_CASES: list[tuple[Registry, str, dict[str, Any], type]] = [
    (PRIORS, "learned_normal", {"latent_dim": 3}, LearnedNormal),
    (LIKELIHOODS, "gaussian", {"event_shape": EVENT_SHAPE, "init_scale": 0.5}, GaussianLikelihood),
    (
        GUIDES,
        "lowrank",
        {"encoder": MLPEncoder(EVENT_SHAPE, hidden=(8,)), "latent_dim": 3, "rank": 1},
        LowRankNormalGuide,
    ),
    (ENCODERS, "mlp", {"in_shape": EVENT_SHAPE, "hidden": (8,)}, MLPEncoder),
    (DECODERS, "mlp", {"latent_dim": 3, "out_shape": EVENT_SHAPE, "hidden": (8,)}, MLPDecoder),
]
BUILD_IDS = [registry.kind for registry, *_ in BUILD_CASES]


@pytest.mark.parametrize("registry,name,kwargs,cls", BUILD_CASES, ids=BUILD_IDS)
def test_build_by_name(registry: Registry, name: str, kwargs: dict, cls: type) -> None:
    assert registry[name] is cls
    component = build(registry, name, **kwargs)
    assert type(component) is cls


@pytest.mark.parametrize("registry,name,kwargs,cls", BUILD_CASES, ids=BUILD_IDS)
def test_build_passes_an_instance_through(
    registry: Registry, name: str, kwargs: dict, cls: type
) -> None:
    instance = cls(**kwargs)
    assert build(registry, instance) is instance
    assert build(registry, instance, **kwargs) is instance  # arguments are for names only


@pytest.mark.parametrize("registry", [case[0] for case in BUILD_CASES], ids=BUILD_IDS)
def test_build_rejects_an_unknown_name_and_lists_the_choices(registry: Registry) -> None:
    with pytest.raises(ValueError, match=f"unknown {registry.kind} 'nope'") as info:
        build(registry, "nope")
    for name in registry:
        assert repr(name) in str(info.value)
    assert registry.hint in str(info.value)


def test_build_refuses_a_module_that_is_not_a_likelihood() -> None:
    with pytest.raises(ValueError, match="unknown likelihood.*ppvae.models.Likelihood instance"):
        build(LIKELIHOODS, nn.Linear(2, 2))


def _readme_built_in() -> tuple[set[str], set[str]]:
    """The prior and likelihood names of the README's "Built in:" paragraph."""
    text = README.read_text(encoding="utf-8")
    start = text.index("Built in:")
    priors, likelihoods = text[start : text.index("\n\n", start)].split("Likelihoods:")
    return tuple(set(re.findall(r'`"([a-z_]+)"`', part)) for part in (priors, likelihoods))


def test_registries_hold_every_component_the_readme_lists() -> None:
    priors, likelihoods = _readme_built_in()
    assert priors and likelihoods
    assert priors <= set(PRIORS), sorted(priors - set(PRIORS))
    assert likelihoods <= set(LIKELIHOODS), sorted(likelihoods - set(LIKELIHOODS))
    assert {"diagonal", "lowrank", "fullrank", "iaf", "nsf"} <= set(GUIDES)
    assert {"mlp", "conv"} <= set(ENCODERS) and {"mlp", "conv"} <= set(DECODERS)
