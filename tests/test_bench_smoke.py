"""Smoke tests of the benchmark references, and of the issue-12 benchmarks at tiny sizes.

The benchmarks' timings are not checked (no timed assertions): only that the references
compute what ppvae computes and that the benchmark functions return well-formed results.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from pyro import poutine

from ppvae.inference.local_target import LocalTarget
from ppvae.inference.refine import RefineSettings
from ppvae.models import VAE

# bench/ is a folder of the source tree, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.ais_reference import binomial_log_joint, reference_ais  # noqa: E402
from bench.ais_throughput import ais_throughput  # noqa: E402
from bench.reference import (  # noqa: E402
    ReferenceVAE,
    pyro_programs,
    reference_elbo,
    reference_log_likelihood,
)
from bench.refined import refined_evaluation  # noqa: E402


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


def _binomial_vae() -> tuple[VAE, torch.Tensor]:
    kwargs = {"likelihood_kwargs": {"total_count": 16}, "hidden": (8, 8)}
    vae = VAE((1, 3, 3), 2, likelihood="binomial", **kwargs)
    return vae, torch.randint(0, 17, (5, 1, 3, 3)).to(torch.get_default_dtype())


@pytest.mark.usefixtures("float64")
def test_hand_written_ais_target_is_ppvae_local_target() -> None:
    # The hand-written AIS must target the same log p(x, z) as ppvae's LocalTarget, in
    # both forms of the Binomial log-density; ppvae's first call (Pyro's checks) and later
    # calls (without them) must agree too.
    vae, x = _binomial_vae()
    target = LocalTarget(vae.model, vae.guide, (x,))
    z = torch.randn(3, 5, 2, dtype=torch.float64)
    first, later = target.log_joint(z), target.log_joint(z)
    for closed_form in (False, True):
        expected = binomial_log_joint(vae.decoder, x, 16, closed_form=closed_form)(z)
        torch.testing.assert_close(first, expected)
        torch.testing.assert_close(later, expected)
    assert first.shape == (3, 5) and torch.isfinite(first).all()


def test_hand_written_ais_returns_chain_weights_and_adapts_per_datapoint() -> None:
    vae, x = _binomial_vae()
    mean, std = vae.encode(x)
    run = reference_ais(vae.decoder, x, mean, std, num_steps=4, num_chains=3, leapfrog_steps=2)
    assert run.log_weights.shape == (3, 5) and torch.isfinite(run.log_weights).all()
    assert ((run.accept_rate >= 0) & (run.accept_rate <= 1)).all()
    assert run.step_size.shape == (5,) and (run.step_size != 0.2).any()


def test_refined_evaluation_benchmark_structure() -> None:
    settings = RefineSettings(map_steps=3, newton_steps=1, iwae_steps=2, iwae_particles=4)
    res = refined_evaluation(epochs=1, num_samples=40, repeats=1, num_data=4, refine=settings)
    by = res["by_proposal"]
    for proposal in ("guide", "refine", "auto"):
        assert 0.0 <= by[proposal]["reliable_share"] <= 1.0
        assert math.isfinite(by[proposal]["mean_log_likelihood"])
        assert by[proposal]["median_seconds"] > 0
    for proposal in ("refine", "auto"):
        ratio = by[proposal]["ratio_to_plain"]
        assert math.isfinite(ratio) and ratio > 0
    assert by["guide"]["num_refined"] == 0 and by["refine"]["num_refined"] == 4
    assert len(res["rows"]) == 3 and res["notes"]  # the short training is noted


def test_ais_throughput_benchmark_structure() -> None:
    res = ais_throughput(
        epochs=1,
        num_data=3,
        num_steps=2,
        num_chains=2,
        leapfrog_steps=2,
        repeats=1,
        wide=(4, 1),
        cost_rounds=1,
    )
    assert res["gradient_evaluations_per_run"] == 1 + 2 * 2
    ratios = [res["ratio_vs_reference"], res["ratio_vs_closed_form"]]
    ratios += [res["wide"]["ratio_vs_reference"], res["wide"]["ratio_vs_closed_form"]]
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    assert all(math.isfinite(r) and r > 0 for r in res["evaluations_per_second"].values())
    assert all(math.isfinite(ms) and ms > 0 for ms in res["ms_per_evaluation"].values())
    assert all(math.isfinite(v) for v in res["mean_log_likelihood"].values())
    assert math.isfinite(res["ppvae_minus_reference"]["stderr"])
    assert all(0.0 <= a <= 1.0 for a in res["accept_rate"].values())
    assert len(res["rows"]) == 5
