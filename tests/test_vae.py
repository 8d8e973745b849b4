"""VAE variants: conditional VAE, user-defined components, separate parameters, TwoLayerVAE."""

from __future__ import annotations

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.nn import functional as F

from ppvae.models.hierarchical import TwoLayerVAE
from ppvae.models.vae import VAE

VECTORISED = dict(vectorize_particles=True, max_plate_nesting=1)


def _traces(model, guide, *args, **kwargs):
    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return model_tr, guide_tr


def _samples(tr) -> dict:
    return {n: s for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def _two_patterns(n: int, flip: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary data whose class fixes the image: two 16-pixel patterns with pixel flips."""
    patterns = torch.stack([torch.tensor([1.0] * 8 + [0.0] * 8), torch.tensor([0.0, 1.0] * 8)])
    y = torch.arange(n) % 2
    noise = torch.bernoulli(torch.full((n, 16), flip))
    return (patterns[y] + noise) % 2, y, patterns


def _estimate_loss(model, guide, *args, particles: int = 256) -> float:
    elbo = pyro.infer.Trace_ELBO(num_particles=particles, **VECTORISED)
    with torch.no_grad():
        return elbo.differentiable_loss(model, guide, *args).item()


# --------------------------------------------------------------- conditional VAE
def test_conditional_vae_traces_with_labels() -> None:
    vae = VAE((16,), 2, num_labels=4, hidden=(8,))
    x, y = torch.bernoulli(torch.full((5, 16), 0.5)), torch.tensor([0, 1, 2, 3, 1])
    model_tr, guide_tr = _traces(vae.model, vae.guide, x, y)
    assert _samples(model_tr)["z"]["value"].shape == (5, 2)
    assert _samples(model_tr)["x"]["is_observed"]
    assert _samples(model_tr)["x"]["fn"].batch_shape == (5,)
    assert _samples(model_tr)["x"]["fn"].event_shape == (16,)
    assert set(_samples(guide_tr)) == {"z"}
    # The labels reach the decoder: one latent, two classes, two different images.
    z = torch.zeros(3, 2)
    assert not torch.allclose(vae.decode(z, 0), vae.decode(z, 1))
    # ... and the encoder.
    m0, _ = vae.encode(x, torch.zeros(5, dtype=torch.long))
    m1, _ = vae.encode(x, torch.ones(5, dtype=torch.long))
    assert not torch.allclose(m0, m1)


def test_conditional_vae_sample_and_label_errors() -> None:
    vae = VAE((16,), 2, num_labels=4, hidden=(8,))
    assert vae.sample(6, y=3).shape == (6, 16)
    assert vae.sample(4, y=torch.tensor([0, 1, 2, 3])).shape == (4, 16)
    assert vae.sample(5).shape == (5, 16)  # without y the classes cycle
    x = torch.bernoulli(torch.full((5, 16), 0.5))
    with pytest.raises(ValueError, match="conditional VAE.*labels"):
        vae.model(x)
    with pytest.raises(ValueError, match="conditional VAE.*labels"):
        vae.guide(x)
    with pytest.raises(ValueError, match="conditional VAE"):
        vae.check_data(x)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        vae.sample(2, y=4)
    with pytest.raises(ValueError, match="not conditional"):
        VAE((16,), 2, hidden=(8,)).sample(2, y=1)


def test_conditional_vae_learns_to_generate_the_requested_class() -> None:
    x, y, patterns = _two_patterns(200)
    vae = VAE((16,), 2, num_labels=2, hidden=(32,))
    vae.check_data(x, y)

    def agreement(c: int) -> float:
        return (vae.sample(100, y=c).round() == patterns[c]).float().mean().item()

    assert max(agreement(0), agreement(1)) < 0.9  # not there by construction
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    elbo = pyro.infer.Trace_ELBO()
    for _ in range(300):
        opt.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x, y).backward()
        opt.step()
    for c in (0, 1):
        assert agreement(c) > 0.97
    # Class 0 samples do not look like class 1 (the patterns differ in half the pixels).
    assert (vae.sample(100, y=0).round() == patterns[1]).float().mean() < 0.6


# ------------------------------------------------------- user-defined components
class LaplacePrior(PyroModule):
    """Factorised Laplace prior with a learnable scale per latent dimension."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> dist.Distribution:
        scale = self.log_scale.exp()
        return dist.Laplace(torch.zeros_like(scale), scale).to_event(1)


class TinyGuide(nn.Module):
    """A diagonal Gaussian guide with its own one-layer network."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        loc, raw = self.net(x).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)


def test_user_defined_prior_and_guide_train() -> None:
    prior, guide = LaplacePrior(2), TinyGuide(16, 2)
    vae = VAE((16,), 2, prior=prior, guide=guide, hidden=(16,))
    assert vae.prior is prior and vae.guide_net is guide
    # The unused built-in encoder is not kept: every parameter belongs to a used part.
    assert {n.split(".")[0] for n, _ in vae.named_parameters()} == {"prior", "guide_net", "decoder"}
    x, _, _ = _two_patterns(64)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    loss_before = _estimate_loss(vae.model, vae.guide, x)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-2)
    elbo = pyro.infer.Trace_ELBO()
    for _ in range(40):
        opt.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        opt.step()
    assert _estimate_loss(vae.model, vae.guide, x) < 0.7 * loss_before
    for name in ("prior.log_scale", "guide_net.net.weight", "guide_net.net.bias"):
        assert not torch.equal(dict(vae.named_parameters())[name], before[name]), name
    assert vae.encode(x)[0].shape == (64, 2)


def test_two_vaes_keep_separate_parameters() -> None:
    pyro.clear_param_store()
    a = VAE((16,), 2, hidden=(8,))
    b = VAE((16,), 2, hidden=(8,))
    assert not {id(p) for p in a.parameters()} & {id(p) for p in b.parameters()}
    frozen_b = {k: v.clone() for k, v in b.state_dict().items()}
    start_a = {k: v.clone() for k, v in a.state_dict().items()}
    x, _, _ = _two_patterns(32)
    opt = torch.optim.Adam(a.parameters(), lr=1e-2)
    # A torch.optim loop is written under Pyro's module-local parameters (as ppvae.fit runs).
    with pyro.settings.context(module_local_params=True):
        for _ in range(5):
            opt.zero_grad()
            pyro.infer.Trace_ELBO().differentiable_loss(a.model, a.guide, x).backward()
            opt.step()
    assert all(torch.equal(v, frozen_b[k]) for k, v in b.state_dict().items())
    assert not all(torch.equal(v, start_a[k]) for k, v in a.state_dict().items())
    assert len(pyro.get_param_store()) == 0  # module-local parameters only


# ----------------------------------------------------------------- TwoLayerVAE
def test_two_layer_vae_sites_shapes_and_scaling() -> None:
    vae = TwoLayerVAE((16,), (4, 3), hidden=(16,), latent_hidden=(8,))
    x, _, _ = _two_patterns(5)
    model_tr, guide_tr = _traces(vae.model, vae.guide, x, num_data=100)
    sites = _samples(model_tr)
    assert set(sites) == {"z1", "z2", "x"} and set(_samples(guide_tr)) == {"z1", "z2"}
    assert sites["z1"]["value"].shape == (5, 4) and sites["z2"]["value"].shape == (5, 3)
    assert sites["x"]["is_observed"] and not sites["z1"]["is_observed"]
    for tr in (model_tr, guide_tr):
        for site in _samples(tr).values():
            assert [f.name for f in site["cond_indep_stack"]] == ["data"]
            assert site["scale"] == pytest.approx(20.0)  # num_data / batch
    # The model's z1 is the guide's, and p(z1 | z2) depends on z2.
    assert torch.equal(sites["z1"]["value"], _samples(guide_tr)["z1"]["value"])
    z2 = torch.randn(2, 3)
    assert not torch.allclose(vae.p_z1(z2).mean[0], vae.p_z1(z2).mean[1])


def test_two_layer_vae_tools_config_and_round_trip() -> None:
    vae = TwoLayerVAE((16,), (4, 3), hidden=(16,), latent_hidden=(8,))
    x, _, _ = _two_patterns(6)
    assert vae.sample(7).shape == (7, 16)
    draws = vae.sample(7, mean=False)
    assert ((draws == 0) | (draws == 1)).all()
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (6, 4) and (scale > 0).all()  # q(z1 | x)
    assert vae.reconstruct(x).shape == (6, 16)
    assert vae.prior().event_shape == (3,)  # the top prior p(z2)

    config = dict(vae.config)
    assert config.pop("class") == "TwoLayerVAE"
    assert config["latent_dims"] == [4, 3] and "latent_dim" not in config
    buf = io.BytesIO()
    torch.save(vae.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(99)
    clone = TwoLayerVAE(**config)
    clone.load_state_dict(torch.load(buf))
    elbo = pyro.infer.Trace_ELBO(num_particles=3, **VECTORISED)
    losses = []
    for m in (vae, clone):
        pyro.set_rng_seed(5)
        losses.append(elbo.differentiable_loss(m.model, m.guide, x).item())
        pyro.set_rng_seed(5)
        losses.append(m.sample(3))
    assert losses[0] == losses[2]
    torch.testing.assert_close(losses[1], losses[3], rtol=0, atol=0)


def test_two_layer_vae_trains_and_takes_labels() -> None:
    x, y, _ = _two_patterns(64)
    vae = TwoLayerVAE((16,), (4, 2), hidden=(32,), latent_hidden=(16,), num_labels=2)
    assert vae.sample(4, y=1).shape == (4, 16)
    with pytest.raises(ValueError, match="conditional VAE"):
        vae.model(x)
    before = _estimate_loss(vae.model, vae.guide, x, y)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    elbo = pyro.infer.Trace_ELBO(num_particles=4, **VECTORISED)
    for _ in range(100):
        opt.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x, y).backward()
        opt.step()
    assert _estimate_loss(vae.model, vae.guide, x, y) < 0.5 * before


def test_two_layer_vae_rejects_bad_latent_dims() -> None:
    with pytest.raises(ValueError, match="latent_dims"):
        TwoLayerVAE((16,), (4,))
    with pytest.raises(ValueError, match="latent_dims"):
        TwoLayerVAE((16,), (4, 0))
