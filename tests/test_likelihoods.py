"""Contract tests for ``ppvae.models.likelihoods`` and exactness tests for
``ppvae.models.distributions.DiscretizedLogistic``."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.nn import functional as F

from ppvae.models.distributions import DiscretizedLogistic
from ppvae.models.likelihoods import GaussianLikelihood, PoissonLikelihood
from ppvae.models.pixel_likelihoods import CategoricalLikelihood
from ppvae.models.registry import LIKELIHOODS, build
from ppvae.models.vae import VAE

EVENT = (1, 4, 4)

# name, constructor kwargs, in-support data of shape (n, *EVENT), (low, high) of the mean
CASES: list[tuple[str, dict, Callable[[int], torch.Tensor], tuple[float, float]]] = [
    ("bernoulli", {}, lambda n: torch.randint(0, 2, (n, *EVENT)).float(), (0, 1)),
    ("binomial", {}, lambda n: torch.randint(0, 17, (n, *EVENT)).float(), (0, 16)),
    ("continuous_bernoulli", {}, lambda n: torch.rand(n, *EVENT), (0, 1)),
    ("gaussian", {}, lambda n: torch.randn(n, *EVENT), (-math.inf, math.inf)),
    ("gaussian", {"scale": "datapoint"}, lambda n: torch.randn(n, *EVENT), (-math.inf, math.inf)),
    ("poisson", {}, lambda n: torch.randint(0, 30, (n, *EVENT)).float(), (0, math.inf)),
    ("categorical", {}, lambda n: torch.randint(0, 256, (n, *EVENT)).float(), (0, 255)),
    ("discretized_logistic", {}, lambda n: torch.randint(0, 256, (n, *EVENT)).float(), (0, 255)),
]
IDS = [name + ("-" + "-".join(map(str, kw.values())) if kw else "") for name, kw, _, _ in CASES]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)


def test_registry_names() -> None:
    assert set(LIKELIHOODS) == {
        "bernoulli",
        "binomial",
        "continuous_bernoulli",
        "gaussian",
        "poisson",
        "categorical",
        "discretized_logistic",
    }
    with pytest.raises(ValueError, match="unknown likelihood 'nope'"):
        build(LIKELIHOODS, "nope", event_shape=EVENT)


@pytest.mark.parametrize(("name", "kwargs", "data", "bounds"), CASES, ids=IDS)
def test_contract(name: str, kwargs: dict, data: Callable, bounds: tuple) -> None:
    lik = build(LIKELIHOODS, name, event_shape=EVENT, **kwargs)
    per_feature = {"categorical": 256, "discretized_logistic": 2}.get(name, 1)
    if kwargs.get("scale") == "datapoint":
        per_feature = 2
    expected = EVENT if per_feature == 1 else (*EVENT, per_feature)
    assert lik.param_shape() == expected
    x = data(5)
    lik.check_support(x)
    params = torch.randn(3, 5, *lik.param_shape())  # (particles, batch, ...)
    d = lik(params)
    assert tuple(d.event_shape) == EVENT
    assert tuple(d.batch_shape) == (3, 5)
    lp = d.log_prob(x)
    assert lp.shape == (3, 5)
    assert torch.isfinite(lp).all()
    s = d.sample()
    assert s.shape == (3, 5, *EVENT)
    lik.check_support(s.float())
    low, high = bounds
    assert lik.value_range() == (low, high)
    mean = lik.mean(params) if hasattr(lik, "mean") else d.mean
    assert mean.shape == (3, 5, *EVENT)
    assert torch.isfinite(mean).all()
    assert ((mean >= low) & (mean <= high)).all()


@pytest.mark.parametrize(("name", "kwargs", "data", "bounds"), CASES, ids=IDS)
def test_inside_a_vae(name: str, kwargs: dict, data: Callable, bounds: tuple) -> None:
    vae = VAE(EVENT, 2, likelihood=name, likelihood_kwargs=kwargs, hidden=(16,))
    x = data(8)
    vae.check_data(x)
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in vae.likelihood.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    low, high = bounds
    decoded = vae.decode(3.0 * torch.randn(50, 2))
    assert decoded.shape == (50, *EVENT)
    assert ((decoded >= low) & (decoded <= high)).all()
    drawn = vae.sample(4, mean=False)
    vae.likelihood.check_support(drawn.float())


@pytest.mark.parametrize(
    ("name", "kwargs", "bad", "phrases"),
    [
        ("bernoulli", {}, 0.5, ["outside {0,1}", "binarize"]),
        ("binomial", {}, 17.0, ["integers in 0..16", "total_count"]),
        ("continuous_bernoulli", {}, 1.5, ["outside [0, 1]", "scale the data", "'gaussian'"]),
        ("continuous_bernoulli", {}, -0.1, ["outside [0, 1]"]),
        ("gaussian", {}, math.nan, ["NaN or infinite"]),
        ("poisson", {}, -1.0, ["nonnegative integers", "'gaussian'"]),
        ("poisson", {}, 2.5, ["nonnegative integers"]),
        ("categorical", {}, 0.5, ["integers in 0..255", "by 255 and round"]),
        ("categorical", {}, 256.0, ["integers in 0..255", "continuous_bernoulli"]),
        ("discretized_logistic", {}, 300.0, ["integers in 0..255", "by 255 and round"]),
        ("discretized_logistic", {"num_values": 17}, 20.0, ["integers in 0..16"]),
    ],
)
def test_support_errors(name: str, kwargs: dict, bad: float, phrases: list[str]) -> None:
    lik = build(LIKELIHOODS, name, event_shape=EVENT, **kwargs)
    x = torch.zeros(3, *EVENT)
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError) as info:
        lik.check_support(x)
    message = str(info.value)
    assert f"likelihood {name!r}" in message
    for phrase in phrases:
        assert phrase in message
    if not math.isnan(bad):
        assert "data range" in message and f"{bad:g}" in message


def test_gaussian_per_feature_scale() -> None:
    lik = GaussianLikelihood(EVENT, init_scale=0.5, min_scale=1e-3)
    assert lik.feature_scale.shape == EVENT
    loc = torch.randn(6, *EVENT)
    d = lik(loc)
    torch.testing.assert_close(d.base_dist.scale, torch.full((6, *EVENT), 0.5))
    x = torch.randn(6, *EVENT)
    expected = torch.distributions.Normal(loc, 0.5).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(d.log_prob(x), expected)
    with torch.no_grad():
        lik.feature_scale_unconstrained.fill_(-100.0)
    assert (lik(loc).base_dist.scale >= 1e-3).all()
    with pytest.raises(ValueError, match="'feature' or 'datapoint'"):
        GaussianLikelihood(EVENT, scale="global")


def test_gaussian_per_datapoint_scale() -> None:
    lik = GaussianLikelihood(EVENT, scale="datapoint")
    assert lik.param_shape() == (*EVENT, 2)
    assert list(lik.parameters()) == []
    params = torch.randn(6, *EVENT, 2)
    x = torch.randn(6, *EVENT)
    scale = F.softplus(params[..., 1]) + 1e-3
    expected = torch.distributions.Normal(params[..., 0], scale).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(lik(params).log_prob(x), expected)
    torch.testing.assert_close(lik.mean(params), params[..., 0])


def test_poisson_rate_is_softplus_and_never_zero() -> None:
    lik = PoissonLikelihood(EVENT)
    params = torch.randn(4, *EVENT)
    x = torch.randint(0, 10, (4, *EVENT)).float()
    rate = F.softplus(params) + 1e-6
    expected = torch.distributions.Poisson(rate).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(lik(params).log_prob(x), expected)
    # Where the softplus underflows, positive counts still have positive probability.
    assert torch.isfinite(lik(torch.full((1, *EVENT), -200.0)).log_prob(x[:1])).all()


def test_categorical_mean_is_expected_level() -> None:
    lik = CategoricalLikelihood(EVENT)
    params = torch.randn(2, *EVENT, 256, dtype=torch.float64)
    levels = torch.arange(256, dtype=torch.float64)
    expected = (params.softmax(-1) * levels).sum(-1)
    torch.testing.assert_close(lik.mean(params), expected)
    peaked = torch.full((1, *EVENT, 256), -30.0)
    peaked[..., 37] = 30.0
    torch.testing.assert_close(lik.mean(peaked), torch.full((1, *EVENT), 37.0))


# ---------------------------------------------------------------- DiscretizedLogistic
LOCS = [-1.5, -1.0, -0.3, 0.0, 0.004, 0.7, 1.0, 1.5]
SCALES = [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_discretized_logistic_normalises(dtype: torch.dtype) -> None:
    loc = torch.tensor(LOCS, dtype=dtype)[:, None]
    scale = torch.tensor(SCALES, dtype=dtype)
    d = DiscretizedLogistic(loc, scale)
    assert tuple(d.batch_shape) == (len(LOCS), len(SCALES))
    values = d.enumerate_support()
    assert values.shape == (256, len(LOCS), len(SCALES))
    lp = d.log_prob(values)
    assert torch.isfinite(lp).all()
    total = lp.exp().sum(0)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def test_discretized_logistic_matches_logistic_cdf() -> None:
    loc = torch.tensor([[-0.2], [0.5]], dtype=torch.float64)
    scale = torch.tensor([0.05, 0.3], dtype=torch.float64)
    d = DiscretizedLogistic(loc, scale)
    k = torch.arange(256, dtype=torch.float64)[:, None, None]
    centre = 2 * k / 255 - 1

    def cdf(t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((t - loc) / scale)

    expected = cdf(centre + 1 / 255) - cdf(centre - 1 / 255)
    expected[0] = cdf(centre[0] + 1 / 255)
    expected[-1] = 1 - cdf(centre[-1] - 1 / 255)
    torch.testing.assert_close(d.log_prob(k).exp(), expected, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize(("loc", "scale"), [(0.2, 0.05), (-1.0, 0.02), (0.98, 0.1)])
def test_discretized_logistic_samples_match_probabilities(loc: float, scale: float) -> None:
    n = 200_000
    d = DiscretizedLogistic(*torch.tensor([loc, scale], dtype=torch.float64))
    s = d.sample((n,))
    assert s.shape == (n,)
    assert d.support.check(s).all()
    freq = torch.bincount(s.long(), minlength=256).double() / n
    probs = d.log_prob(torch.arange(256.0)).exp()
    # Binomial standard error per bin, five of them, plus rounding slack.
    assert ((freq - probs).abs() <= 5 * (probs / n).sqrt() + 2e-5).all()
    tolerance = 5 * s.std().item() / math.sqrt(n)
    assert s.mean().item() == pytest.approx(d.mean.item(), abs=tolerance)


def test_discretized_logistic_mean_support_and_gradients() -> None:
    d = DiscretizedLogistic(*torch.tensor([0.0, 0.2], dtype=torch.float64))
    # The centre of the axis lies half-way between levels 127 and 128.
    assert d.mean.item() == pytest.approx(127.5, abs=1e-9)
    assert d.variance.item() > 0
    assert d.support.check(torch.tensor([0.0, 255.0, 17.0])).all()
    assert not d.support.check(torch.tensor([-1.0, 256.0, 0.5])).any()
    assert DiscretizedLogistic(torch.zeros(3), torch.ones(1), 17).expand((2, 3)).batch_shape == (
        2,
        3,
    )
    # Gradients stay finite for extreme parameters at the edge bins and inside.
    loc = torch.tensor([5.0, -5.0, 0.0, 0.3], requires_grad=True)
    log_scale = torch.tensor([-9.0, -9.0, 3.0, -9.0], requires_grad=True)
    x = torch.tensor([0.0, 255.0, 128.0, 10.0])
    lp = DiscretizedLogistic(loc, log_scale.exp()).log_prob(x)
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()
