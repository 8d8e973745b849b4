"""Training: fit on real data, SVI against pPCA's exact optimum, β-weighting, divergence,
early stopping, exact resumption, and the training step on its own."""

from __future__ import annotations

import functools
import json
import math
import sys
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence

from ppvae.data import Dataset, load_dataset
from ppvae.inference import prepare as prepare_module
from ppvae.inference import train as train_module
from ppvae.inference.batches import BatchLoader
from ppvae.inference.checkpoint import load, load_checkpoint
from ppvae.inference.history import History
from ppvae.inference.objectives import make_elbo
from ppvae.inference.scaling import LatentScale, kl_weight
from ppvae.inference.step import TrainingDivergedError, train_step
from ppvae.inference.train import fit
from ppvae.models.linear_gaussian import (
    LinearGaussianModel,
    LinearGuide,
    ppca_max_log_likelihood,
)
from ppvae.models.vae import VAE


@pytest.fixture(autouse=True)
def _seed() -> None:
    pyro.set_rng_seed(0)


class PPCA(nn.Module):
    """A linear-Gaussian model and its amortised guide, trained together."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.generative = LinearGaussianModel(data_dim, latent_dim)
        self.recognition = LinearGuide(data_dim, latent_dim)

    def model(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        self.generative.model(x, num_data=num_data)

    def guide(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        self.recognition.guide(x, num_data=num_data)


def _ppca_data(n: int = 500, d: int = 5, k: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(d, k, generator=gen, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    z = torch.randn(n, k, generator=gen, dtype=torch.float64)
    return z @ w.T + b + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)


def _tiny_vae(seed: int = 0, **kw) -> VAE:
    torch.manual_seed(seed)
    return VAE((6,), 2, hidden=(8,), **kw)


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ fitting real data
@pytest.fixture(scope="module")
def digits_run():
    pyro.set_rng_seed(0)
    ds = load_dataset("digits")
    make = functools.partial(
        VAE,
        ds.event_shape,
        8,
        likelihood=ds.likelihood,
        likelihood_kwargs=ds.likelihood_kwargs,
        hidden=(64,),
    )
    torch.manual_seed(1)
    untrained = make()
    torch.manual_seed(1)
    vae = make()
    history = fit(vae, ds, epochs=5, batch_size=64, lr=3e-3, seed=0, progress=False)
    return ds, untrained, vae, history


def test_fit_on_digits_improves_the_validation_elbo(digits_run):
    ds, untrained, vae, history = digits_run
    assert history.epochs_completed == 5 and not history.stopped_early
    for values in (history.train_objective, history.val_elbo, history.beta, history.seconds):
        assert len(values) == 5
    assert len(history.images_per_second) == 5 and min(history.images_per_second) > 0
    assert history.beta == [1.0] * 5
    assert history.best_epoch == max(range(1, 6), key=lambda e: history.val_elbo[e - 1])
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        before = -elbo.loss(untrained.model, untrained.guide, ds.val) / len(ds.val)
    # Per datapoint, in nats: an untrained model is near -700, five epochs reach about -165.
    assert history.val_elbo[-1] > history.val_elbo[0] + 50
    assert history.val_elbo[-1] > before + 300
    assert history.train_objective[-1] > history.train_objective[0] + 100


def test_fit_on_digits_improves_the_test_log_likelihood(digits_run):
    importance = pytest.importorskip(
        "ppvae.inference.importance", reason="log-likelihood estimator not available"
    )
    ds, untrained, vae, _ = digits_run
    x = ds.test[:100]
    kw = {"num_samples": 50, "seed": 0}
    trained = importance.log_likelihood(vae.model, vae.guide, x, **kw).mean
    baseline = importance.log_likelihood(untrained.model, untrained.guide, x, **kw).mean
    assert float(trained) > float(baseline) + 300


def test_svi_reaches_the_ppca_maximum_likelihood():
    x = _ppca_data()
    best = ppca_max_log_likelihood(x, 2)["log_likelihood"].item()
    torch.manual_seed(1)
    ppca = PPCA(5, 2).double()
    with torch.no_grad():
        start = ppca.generative.exact_log_likelihood(x).mean().item()
    # Full-batch steps; a tenfold smaller learning rate at the end settles the noise.
    kw = {"num_particles": 4, "batch_size": len(x), "progress": False}
    fit(ppca, x, epochs=160, lr=0.1, seed=0, **kw)
    history = fit(ppca, x, epochs=40, lr=0.01, seed=1, **kw)
    with torch.no_grad():
        reached = ppca.generative.exact_log_likelihood(x).mean().item()
    assert start < best - 1
    assert best - 0.02 < reached <= best + 1e-9
    # The guide family holds the exact posterior, so the ELBO approaches log p(x) too.
    assert abs(history.train_objective[-1] - best) < 0.05


# ------------------------------------------------------------------ β-weighting
def test_latent_scale_weights_the_latent_sites_only():
    ppca = PPCA(5, 2).double()
    x = _ppca_data(20)
    scale = LatentScale(0.5)
    guide_trace = pyro.poutine.trace(scale(ppca.guide)).get_trace(x)
    replayed = pyro.poutine.replay(scale(ppca.model), trace=guide_trace)
    model_trace = pyro.poutine.trace(replayed).get_trace(x)
    assert guide_trace.nodes["z"]["scale"] == 0.5
    assert model_trace.nodes["z"]["scale"] == 0.5
    assert model_trace.nodes["x"]["scale"] == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        scale.beta = -1


def _ppca_terms(ppca: PPCA, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x | z) and log p(z) - log q(z | x) summed over x, for z drawn as the guide does."""
    q = ppca.recognition(x)
    z = q.rsample()
    gen = ppca.generative
    loglik = dist.Normal(z @ gen.weight.T + gen.bias, gen.noise_scale).to_event(1).log_prob(x)
    log_prior = dist.Normal(torch.zeros_like(z), 1.0).to_event(1).log_prob(z)
    return loglik.sum(), (log_prior - q.log_prob(z)).sum()


def test_beta_elbo_matches_the_hand_computation_trace_elbo():
    ppca = PPCA(5, 2).double()
    x = _ppca_data(50)
    scale = LatentScale(0.5)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().differentiable_loss(scale(ppca.model), scale(ppca.guide), x)
    pyro.set_rng_seed(3)
    loglik, log_ratio = _ppca_terms(ppca, x)
    assert loss.item() == pytest.approx(-(loglik + 0.5 * log_ratio).item(), rel=1e-10)


def test_beta_elbo_matches_the_hand_computation_analytic_kl():
    vae = VAE((6,), 3, hidden=(8,))
    x = torch.bernoulli(torch.full((20, 6), 0.3))
    scale = LatentScale(0.5)
    pyro.set_rng_seed(3)
    loss = TraceMeanField_ELBO().differentiable_loss(scale(vae.model), scale(vae.guide), x)
    pyro.set_rng_seed(3)
    q = vae.guide_net(x)
    z = q.rsample()
    loglik = vae.likelihood(vae.decoder(z)).log_prob(x).sum()
    kl = kl_divergence(q, vae.prior()).sum()
    assert kl > 0
    assert loss.item() == pytest.approx(-(loglik - 0.5 * kl).item(), rel=1e-5)


def test_kl_weight_ramps_linearly():
    assert [kl_weight(e, 2.0, 4) for e in range(1, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight(3, 0.7) == 0.7
    with pytest.raises(ValueError, match="numbered from 1"):
        kl_weight(0)


def test_fit_trains_with_the_annealed_beta(monkeypatch):
    """The objective fit optimises in epoch e is E[log p(x|z)] - β_e KL, β_e from kl_weight."""
    ppca = PPCA(5, 2).double()
    x = _ppca_data(100)
    recovered = []

    def spy(loss_fn, optimizer, params, *args, **kwargs):
        pyro.set_rng_seed(11)
        value = loss_fn(*args).item()
        pyro.set_rng_seed(11)
        loglik, log_ratio = _ppca_terms(ppca, args[0])
        recovered.append(-(value + loglik.item()) / log_ratio.item())
        return train_step(loss_fn, optimizer, params, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", spy)
    history = fit(ppca, x, epochs=4, batch_size=100, beta=0.8, kl_anneal=3, progress=False)
    expected = [0.8 / 3, 1.6 / 3, 0.8, 0.8]
    assert recovered == pytest.approx(expected, rel=1e-8)
    assert history.beta == pytest.approx(expected)


# ------------------------------------------------------------------ failures and stopping
class _PoisonedLoader(BatchLoader):
    """Batch 3 of epoch 2 turns to NaN, after fit's up-front data check."""

    def _batches(self, order, generator):
        for step, (xb, yb) in enumerate(super()._batches(order, generator), 1):
            yield (torch.full_like(xb, math.nan) if (self.epoch, step) == (2, 3) else xb), yb


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "BatchLoader", _PoisonedLoader)
    vae = _tiny_vae()
    x = torch.bernoulli(torch.full((160, 6), 0.4))
    snapshots = []
    callback = lambda epoch, history, model: snapshots.append(_params(model))  # noqa: E731
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2, step 3") as err:
        fit(vae, x, epochs=3, batch_size=32, lr=0.01, checkpoint_dir=tmp_path, callback=callback)
    assert (err.value.epoch, err.value.step) == (2, 3) and math.isnan(err.value.loss)
    assert "lr=0.01" in str(err.value) and "last.pt (epoch 1)" in str(err.value)
    assert all(torch.isfinite(p).all() for p in vae.parameters())  # the bad step was skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    saved = load(tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["history"]["epochs_completed"] == 1
    assert all(torch.equal(v, snapshots[0][k]) for k, v in saved.state_dict().items())


def test_early_stopping_restores_the_best_parameters(tmp_path, monkeypatch):
    scores = iter([-10.0, -5.0, -7.0, -8.0, -1.0, -1.0])
    monkeypatch.setattr(train_module, "validation_elbo", lambda *args, **kwargs: next(scores))
    vae = _tiny_vae()
    x = torch.bernoulli(torch.full((64, 6), 0.4))
    snapshots = []
    callback = lambda epoch, history, model: snapshots.append(_params(model))  # noqa: E731
    history = fit(
        vae,
        x,
        val=x[:16],
        epochs=6,
        batch_size=32,
        patience=2,
        checkpoint_dir=tmp_path,
        callback=callback,
        progress=False,
    )
    assert history.stopped_early and history.epochs_completed == 4
    assert history.val_elbo == [-10.0, -5.0, -7.0, -8.0] and history.best_epoch == 2
    assert not torch.equal(
        snapshots[1]["decoder.net.0.weight"], snapshots[3]["decoder.net.0.weight"]
    )
    for k, v in _params(vae).items():
        assert torch.equal(v, snapshots[1][k])
    assert load_checkpoint(tmp_path / "best.pt")["history"]["epochs_completed"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["history"]["stopped_early"]


# ------------------------------------------------------------------ resumption
@pytest.mark.parametrize("binarize", [None, "dynamic"])
def test_resumed_run_equals_the_uninterrupted_run(tmp_path, binarize):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(80, 6, generator=gen)
    x = x if binarize == "dynamic" else torch.bernoulli(x, generator=gen)
    kw = {"val": x[:20], "batch_size": 32, "lr": 0.02, "seed": 5, "patience": 5}
    kw |= {"binarize": binarize, "progress": False}

    whole = _tiny_vae()
    h_whole = fit(whole, x, epochs=4, checkpoint_dir=tmp_path / "a", **kw)
    fit(_tiny_vae(), x, epochs=2, checkpoint_dir=tmp_path / "b", **kw)
    resumed = _tiny_vae(seed=99)  # other initial values: all must come from the checkpoint
    h_resumed = fit(resumed, x, epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **kw)

    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    for field in ("train_objective", "val_elbo", "beta", "epochs_completed", "best_epoch"):
        assert getattr(h_resumed, field) == getattr(h_whole, field)


def test_fit_with_a_seed_is_reproducible_and_leaves_the_global_stream_alone():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(48, 6, generator=gen)
    kw = {"val": x[:16], "epochs": 2, "batch_size": 16, "binarize": "dynamic", "progress": False}
    first = _tiny_vae()
    before = torch.get_rng_state()
    h_first = fit(first, x, seed=11, **kw)
    assert torch.equal(torch.get_rng_state(), before)  # fit drew from its own stream
    second = _tiny_vae()
    h_second = fit(second, x, seed=11, **kw)
    assert h_second.train_objective == h_first.train_objective
    assert h_second.val_elbo == h_first.val_elbo
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    other = _tiny_vae()
    assert fit(other, x, seed=12, **kw).train_objective != h_first.train_objective
    # Without a seed, one draw of the global stream seeds the run.
    torch.manual_seed(5)
    h_a = fit(_tiny_vae(), x, **kw)
    torch.manual_seed(5)
    assert fit(_tiny_vae(), x, **kw).train_objective == h_a.train_objective


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path):
    x = torch.bernoulli(torch.full((40, 6), 0.4))
    fit(_tiny_vae(), x, epochs=1, batch_size=16, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"cannot resume .*lr=0.001 then, 0.01 now"):
        fit(_tiny_vae(), x, epochs=2, lr=0.01, batch_size=16, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="other arguments"):
        fit(
            VAE((6,), 3, hidden=(8,)),
            x,
            epochs=2,
            batch_size=16,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    with pytest.raises(FileNotFoundError, match="no checkpoint .*elsewhere.*last.pt"):
        fit(_tiny_vae(), x, checkpoint_dir=tmp_path / "elsewhere", resume=True)


# ------------------------------------------------------------------ data and objectives
def test_dataset_dynamic_binarisation_and_labels(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    grey = torch.rand(60, 6, generator=gen)
    labels = torch.arange(60) % 3
    ds = Dataset(
        name="toy",
        train=grey[:40],
        val=torch.bernoulli(grey[40:], generator=gen),
        test=grey[40:],
        event_shape=(6,),
        likelihood="bernoulli",
        train_labels=labels[:40],
        val_labels=labels[40:],
        binarize="dynamic",
        num_labels=3,
    )
    seen = []

    def spy(loss_fn, optimizer, params, *args, **kwargs):
        seen.append(args)
        return train_step(loss_fn, optimizer, params, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", spy)
    history = fit(_tiny_vae(num_labels=3), ds, epochs=2, batch_size=40, progress=False)
    assert len(history.val_elbo) == 2
    (x1, y1), (x2, y2) = seen
    assert set(x1.unique().tolist()) <= {0.0, 1.0} and not torch.equal(x1, x2)  # fresh draws
    assert torch.equal(y1.sort().values, labels[:40].sort().values)


def test_fit_takes_any_dataset_with_the_training_data_attributes():
    x = torch.bernoulli(torch.full((40, 6), 0.4))
    no_labels = {"train_labels": None, "val_labels": None}
    ds = SimpleNamespace(train=x[:32], val=x[32:], binarize=None, **no_labels)
    history = fit(_tiny_vae(), ds, epochs=1, batch_size=16, progress=False)
    assert len(history.val_elbo) == 1 and history.train_objective
    with pytest.raises(TypeError, match="train must be a tensor or a dataset"):
        fit(_tiny_vae(), [x], epochs=1)


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fit(_tiny_vae(), torch.bernoulli(torch.full((40, 6), 0.4)), epochs=2, batch_size=16)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "elbo=" in err
    fit(_tiny_vae(), torch.bernoulli(torch.full((40, 6), 0.4)), epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_argument_errors():
    x = torch.bernoulli(torch.full((20, 6), 0.4))
    with pytest.raises(ValueError, match="needs validation data"):
        fit(_tiny_vae(), x, patience=2)
    with pytest.raises(ValueError, match="not a training mode"):
        fit(_tiny_vae(), x, binarize="static")
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\], got range \[0, 2\]"):
        fit(_tiny_vae(), 2 * x, binarize="dynamic")
    with pytest.raises(ValueError, match="values outside"):  # the model's own up-front check
        fit(_tiny_vae(), 0.5 * x)
    with pytest.raises(ValueError, match="validation data are empty"):
        fit(_tiny_vae(), x, val=x[:0])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fit(_tiny_vae(), x, batch_size=0)
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'"):
        fit(_tiny_vae(), x, optimizer="adamax")
    with pytest.raises(ValueError, match="importance-weighted bound"):
        fit(_tiny_vae(), x, elbo="iwae", beta=0.5)


@pytest.mark.parametrize("name", ["jit_trace", "jit_meanfield"])
def test_jit_objectives_are_refused_with_the_reason(name):
    with pytest.raises(ValueError, match="global param store.*module_local_params"):
        make_elbo(name)
    with pytest.raises(ValueError, match=name):
        fit(_tiny_vae(), torch.bernoulli(torch.full((20, 6), 0.4)), elbo=name)


@pytest.mark.parametrize("elbo", ["meanfield", "iwae"])
def test_other_objectives_train(elbo):
    if elbo == "iwae":
        pytest.importorskip("ppvae.inference.iwae", reason="IWAE objective not available")
    x = torch.bernoulli(torch.full((64, 6), 0.3))
    vae = _tiny_vae()
    before = _params(vae)
    history = fit(vae, x, val=x, elbo=elbo, num_particles=3, epochs=2, batch_size=32, lr=0.01)
    assert all(math.isfinite(v) for v in history.train_objective + history.val_elbo)
    assert any(not torch.equal(v, before[k]) for k, v in _params(vae).items())


# ------------------------------------------------------------------ the step and the record
def test_train_step_clips_and_skips_non_finite_losses():
    ppca = PPCA(5, 2).double()
    x = _ppca_data(50)
    params = list(ppca.parameters())
    opt = torch.optim.SGD(params, lr=0.001)
    loss_fn = functools.partial(Trace_ELBO().differentiable_loss, ppca.model, ppca.guide)
    info = train_step(loss_fn, opt, params, x, clip_norm=1.0)
    assert math.isfinite(info.loss) and float(info.grad_norm) > 1.0
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert clipped.item() == pytest.approx(1.0, rel=1e-6)
    assert train_step(loss_fn, opt, params, x).grad_norm is None

    before = [p.detach().clone() for p in params]
    info = train_step(lambda: params[0].sum() + math.inf, opt, params)
    assert info.loss == math.inf and info.grad_norm is None
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_history_round_trips_through_json():
    history = History([-3.0, -2.5], [-3.1, -2.9], [0.5, 1.0], [0.1, 0.2], [900.0, 950.0], 2, 2)
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history
    assert history.best_val_elbo == -2.9
    with pytest.raises(ValueError, match="unknown History fields"):
        History.from_dict({"loss": []})
    # Histories written before the field was renamed still load.
    old = {**history.to_dict(), "train_elbo": history.train_objective}
    del old["train_objective"]
    assert History.from_dict(old) == history
