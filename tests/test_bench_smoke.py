"""Smoke test of the benchmark references (the benchmarks themselves are not run by tests)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from pyro import poutine

from ppvae.models import VAE

# bench/ is a folder of the source tree, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.reference import (  # noqa: E402
    ReferenceVAE,
    pyro_programs,
    reference_elbo,
    reference_log_likelihood,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _pair() -> tuple[VAE, ReferenceVAE, torch.Tensor]:
    vae = VAE((1, 6, 6), 3, likelihood="bernoulli", hidden=(8, 8))
    ref = ReferenceVAE((1, 6, 6), 3, hidden=(8, 8)).copy_from(vae)
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    return vae, ref, x


def test_reference_copies_ppvae_networks() -> None:
    vae, ref, x = _pair()
    loc, scale = vae.encode(x)
    ref_loc, ref_scale = ref.encode(x)
    torch.testing.assert_close(ref_loc, loc)
    torch.testing.assert_close(ref_scale, scale)
    z = torch.randn(4, 3)
    torch.testing.assert_close(ref.decode(z).sigmoid().reshape(4, 1, 6, 6), vae.decode(z))


def test_reference_elbo_matches_ppvae_trace() -> None:
    # Same weights and the same z: the hand-written log p(x, z) − log q(z | x) must equal
    # the log-densities in ppvae's Pyro traces, datapoint by datapoint.
    vae, ref, x = _pair()
    torch.manual_seed(1)
    elbo = reference_elbo(ref, x)
    torch.manual_seed(1)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    expected = (
        model_tr.nodes["z"]["fn"].log_prob(model_tr.nodes["z"]["value"])
        + model_tr.nodes["x"]["fn"].log_prob(x)
        - guide_tr.nodes["z"]["fn"].log_prob(guide_tr.nodes["z"]["value"])
    )
    torch.testing.assert_close(elbo, expected)
    assert elbo.shape == (5,) and torch.isfinite(elbo).all()


def test_reference_estimator_is_exact_when_guide_is_prior_and_decoder_constant() -> None:
    # Zero decoder weights make p(x | z) independent of z, and a guide equal to the prior
    # (zero encoder head, raw scale giving σ = 1) makes every weight equal p(x): the
    # estimate is then exact at any K and in any chunking.
    _, ref, x = _pair()
    with torch.no_grad():
        for p in ref.decoder.parameters():
            p.zero_()
        ref.head.weight.zero_()
        ref.head.bias[:3] = 0.0
        ref.head.bias[3:] = math.log(math.expm1(1.0 - 1e-5))
    ll = reference_log_likelihood(ref, x, num_samples=7, chunk_elements=2 * 36 * 5)
    expected = torch.full((5,), 36 * math.log(0.5))
    torch.testing.assert_close(ll, expected, rtol=0, atol=1e-4)
    model, guide = pyro_programs(ref)
    tr = poutine.trace(guide).get_trace(x)
    assert tr.nodes["z"]["value"].shape == (5, 3)
    model_tr = poutine.trace(poutine.replay(model, trace=tr)).get_trace(x)
    assert model_tr.nodes["x"]["fn"].event_shape == (1, 6, 6)
