"""Augmented datasets: ``ppvae.augment`` (modes, outputs, guides, seeding) and ``ppvae augment``."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import ppvae
from ppvae.app.cli import main
from ppvae.augment import posterior_latents
from ppvae.inference.rng import seeded
from tests.cli_checks import cli

SHAPE = (1, 4, 4)
TINY = ["--latent-dim", "2", "--hidden", "16", "--epochs", "2", "--lr", "0.01", "--quiet"]
# likelihood -> (data of its support, check of a sample, check of the mean output)
LIKELIHOODS = {
    "bernoulli": (
        lambda: torch.bernoulli(torch.full((6, *SHAPE), 0.5)),
        lambda x: ((x == 0) | (x == 1)).all(),
        lambda x: ((x >= 0) & (x <= 1)).all() and not torch.equal(x, x.round()),
    ),
    "binomial": (
        lambda: torch.randint(0, 17, (6, *SHAPE)).float(),
        lambda x: ((x >= 0) & (x <= 16) & (x == x.round())).all(),
        lambda x: ((x >= 0) & (x <= 16) & (x == x.round())).all(),
    ),
    "categorical": (
        lambda: torch.randint(0, 256, (6, *SHAPE)).float(),
        lambda x: ((x >= 0) & (x <= 255) & (x == x.round())).all(),
        lambda x: ((x >= 0) & (x <= 255) & (x == x.round())).all(),
    ),
    "discretized_logistic": (
        lambda: torch.randint(0, 256, (6, *SHAPE)).float(),
        lambda x: ((x >= 0) & (x <= 255) & (x == x.round())).all(),
        lambda x: ((x >= 0) & (x <= 255) & (x == x.round())).all(),
    ),
    "continuous_bernoulli": (
        lambda: torch.rand(6, *SHAPE),
        lambda x: ((x >= 0) & (x <= 1)).all(),
        lambda x: ((x >= 0) & (x <= 1)).all(),
    ),
    "gaussian": (
        lambda: torch.randn(6, *SHAPE),
        lambda x: torch.isfinite(x).all(),
        lambda x: torch.isfinite(x).all(),
    ),
}


def _vae(likelihood: str = "bernoulli", guide: str = "diagonal", **kwargs) -> ppvae.VAE:
    return ppvae.VAE(SHAPE, 3, likelihood=likelihood, guide=guide, hidden=(8,), **kwargs).eval()


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("output", ["sample", "mean"])
def test_augmented_sets_have_the_datas_shape_type_and_support(likelihood, output):
    data, sample_ok, mean_ok = LIKELIHOODS[likelihood]
    in_support = sample_ok if output == "sample" else mean_ok
    cvae = _vae(likelihood, num_labels=3)
    x, y = ppvae.augment(cvae, n_per_class=4, labels=[0, 2], output=output)
    assert x.shape == (8, *SHAPE) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0] * 4 + [2] * 4
    assert in_support(x)
    source, labels = data(), torch.tensor([0, 1, 2, 0, 1, 2])
    x, y = ppvae.augment(cvae, mode="posterior", source=(source, labels), n=12, output=output)
    assert x.shape == (12, *SHAPE) and x.dtype == torch.float32
    assert torch.equal(y, labels.repeat(2))  # rows cycle in order, labels carried over
    assert in_support(x)
    vae = _vae(likelihood)
    x, y = ppvae.augment(vae, n=5, output=output)
    assert x.shape == (5, *SHAPE) and y is None and in_support(x)
    x, y = ppvae.augment(vae, mode="posterior", source=source, output=output)
    assert x.shape == source.shape and y is None and in_support(x)


def test_n_per_class_in_posterior_mode_draws_per_class_from_that_class():
    vae = _vae()
    source = torch.bernoulli(torch.full((5, *SHAPE), 0.5))
    labels = torch.tensor([1, 0, 1, 1, 0])
    x, y = ppvae.augment(vae, mode="posterior", source=(source, labels), n_per_class=3)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = ppvae.augment(vae, mode="posterior", source=(source, labels), labels=[1], n=2)
    assert y.tolist() == [1, 1]


def test_two_layer_vae_augments_in_both_modes():
    vae = ppvae.TwoLayerVAE(SHAPE, (3, 2), hidden=(8,), latent_hidden=(8,), num_labels=2)
    x, y = ppvae.augment(vae.eval(), n_per_class=3)
    assert x.shape == (6, *SHAPE) and y.tolist() == [0, 0, 0, 1, 1, 1]
    source = torch.bernoulli(torch.full((4, *SHAPE), 0.5))
    x, y = ppvae.augment(vae, mode="posterior", source=(source, torch.tensor([0, 1, 1, 0])))
    assert x.shape == (4, *SHAPE) and y.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("guide", ["diagonal", "lowrank", "fullrank"])
def test_temperature_scales_a_gaussian_guides_deviation_exactly(guide):
    vae = _vae(guide=guide)
    x = torch.bernoulli(torch.full((5, *SHAPE), 0.5))
    mean = vae.guide_net(x).mean
    draws = {}
    for t in (1.0, 0.3, 0.0):
        with seeded(7):  # the same noise at every temperature
            draws[t] = posterior_latents(vae, x, temperature=t)
    torch.testing.assert_close(draws[0.3] - mean, 0.3 * (draws[1.0] - mean))
    torch.testing.assert_close(draws[0.0], mean)


@pytest.mark.parametrize("guide", ["iaf", "nsf"])
def test_temperature_of_a_flow_guide_acts_in_its_base_space(guide):
    vae = _vae(guide=guide)
    x = torch.bernoulli(torch.full((1, *SHAPE), 0.5)).expand(400, *SHAPE)
    with seeded(1):
        centre = posterior_latents(vae, x[:1], temperature=0.0)
    with seeded(2):  # T = 0 is deterministic: the flow's image of the base mean
        torch.testing.assert_close(posterior_latents(vae, x[:1], temperature=0.0), centre)
    spread = [posterior_latents(vae, x, temperature=t).std(0).mean() for t in (0.25, 1.0)]
    assert 0 < spread[0] < spread[1]


def test_seeded_draws_repeat_and_leave_the_callers_stream_alone():
    cvae = _vae(num_labels=3)
    state = torch.get_rng_state()
    a = ppvae.augment(cvae, n_per_class=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = ppvae.augment(cvae, n_per_class=3, seed=5)
    c = ppvae.augment(cvae, n_per_class=3, seed=6)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_large_requests_are_drawn_in_chunks():
    cvae = _vae(num_labels=3)
    x, y = ppvae.augment(cvae, n=2500, labels=[2, 0])
    assert x.shape == (2500, *SHAPE) and torch.equal(y, torch.tensor([2, 0]).repeat(1250))
    source = torch.bernoulli(torch.full((3, *SHAPE), 0.5))
    x, y = ppvae.augment(_vae(), mode="posterior", source=source, n=2100)
    assert x.shape == (2100, *SHAPE) and y is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_per_class": 2}, "not conditional"),
        ({"n": 2, "labels": [0]}, "not conditional"),
        ({"n": 0}, "positive"),
        ({"n": 2, "mode": "posterior"}, "source"),
        ({"n": 2, "temperature": 0.5}, "posterior"),
        ({"n": 2, "mode": "nearby"}, "mode"),
    ],
)
def test_bad_requests_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ppvae.augment(_vae(), **kwargs)


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"0\.\.2"):
        ppvae.augment(_vae(num_labels=3), n_per_class=2, labels=[1, 3])


def test_cvae_samples_are_recognised_as_their_class():
    """Conditioning works: a classifier of real digits reads the requested class."""
    ds = ppvae.load_dataset("digits")
    with seeded(0):
        cvae = ppvae.VAE(
            ds.event_shape,
            latent_dim=8,
            likelihood=ds.likelihood,
            likelihood_kwargs=ds.likelihood_kwargs,
            hidden=(128,),
            num_labels=10,
        )
    ppvae.fit(cvae, ds, epochs=20, lr=3e-3, seed=0, progress=False)
    clf = LogisticRegression(max_iter=2000).fit(ds.train.flatten(1), ds.train_labels)
    x, y = ppvae.augment(cvae.eval(), n_per_class=50, output="mean", seed=0)
    # Measured 0.65-0.75 over seeds 0-2 with these settings; chance is 0.1.
    assert clf.score(x.flatten(1), y) >= 0.5
    # a dataset as the source: its training split, labels carried over
    x, y = ppvae.augment(cvae, mode="posterior", source=ds, output="mean")
    assert x.shape == ds.train.shape and torch.equal(y, ds.train_labels)
    assert clf.score(x.flatten(1), y) >= 0.8  # neighbours of real digits stay recognisable


# ----------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("augment_runs")
    out = {}
    for name, flags in (("cond", ["--conditional"]), ("plain", [])):
        out[name] = str(root / name)
        assert main(["train", *flags, *TINY, "--out", out[name]]) == 0
    return out


def test_cli_writes_a_dataset_that_load_dataset_reads_back(runs, tmp_path, capsys):
    out = tmp_path / "aug.npz"
    status, text, err = cli(capsys, "augment", runs["cond"], "--n-per-class", 6, "--out", out)
    assert status == 0, err
    assert out.with_suffix(".png").stat().st_size > 0
    with np.load(out) as f:
        x, y = f["x"], f["y"]
    assert x.shape == (60, 1, 8, 8) and y.tolist() == np.repeat(np.arange(10), 6).tolist()
    ds = ppvae.load_dataset(out)
    back = torch.cat([ds.train, ds.val, ds.test]).flatten(1)
    labels = torch.cat([ds.train_labels, ds.val_labels, ds.test_labels])
    order = np.lexsort(np.c_[x.reshape(60, -1), y].T)
    back_order = np.lexsort(np.c_[back.numpy(), labels.numpy()].T)
    np.testing.assert_array_equal(back.numpy()[back_order], x.reshape(60, -1)[order])
    np.testing.assert_array_equal(labels.numpy()[back_order], y[order])
    # --force replaces it; posterior mode from the written file as the source
    status, _, err = cli(
        capsys, "augment", runs["cond"], "--mode", "posterior", "--source", out,
        "--n-per-class", 2, "--labels", "3,4", "--out", out, "--force",
    )  # fmt: skip
    assert status == 0, err
    with np.load(out) as f:
        assert f["y"].tolist() == [3, 3, 4, 4]


@pytest.mark.parametrize(
    ("run", "args", "fragment"),
    [
        ("cond", ["--n-per-class", "2", "--labels", "0,10"], "--labels must lie in 0..9"),
        ("plain", ["--n-per-class", "2"], "not conditional"),
        ("cond", ["--n-per-class", "0"], "--n-per-class must be at least 1"),
        ("cond", ["--n", "-3"], "--n must be at least 1"),
        ("cond", ["--mode", "posterior", "--n", "2"], "--source"),
        ("cond", ["--mode", "posterior", "--source", "UNLABELLED", "--n", "2"], "no labels"),
        ("cond", ["--n-per-class", "2", "--out-suffix", ".csv"], ".npz"),
        ("cond", ["--n-per-class", "2", "--exists"], "--force"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
    runs, tmp_path, capsys, run, args, fragment
):
    out = tmp_path / "aug.npz"
    if "--out-suffix" in args:
        out = tmp_path / "aug.csv"
        args = args[:-2]
    if "--exists" in args:
        out.write_bytes(b"old")
        args = args[:-1]
    if "UNLABELLED" in args:
        unlabelled = tmp_path / "unlabelled.npy"
        np.save(unlabelled, np.zeros((3, 1, 8, 8)))
        args = [str(unlabelled) if a == "UNLABELLED" else a for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    status, _, err = cli(capsys, "augment", runs[run], *args, "--out", out)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppvae: error: ") and fragment in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if fragment == "--force":  # the existing file is left as it was
        assert out.read_bytes() == b"old"


def test_augment_leaves_the_global_param_store_alone() -> None:
    vae = ppvae.VAE((1, 8, 8), latent_dim=2, num_labels=10, likelihood="binomial")
    ppvae.augment(vae, n_per_class=1, seed=0)
    ppvae.augment(vae, mode="posterior", source=(torch.zeros(3, 1, 8, 8), torch.arange(3)), seed=0)
    assert len(pyro.get_param_store().keys()) == 0


def test_cli_refuses_an_out_whose_folder_is_a_file(runs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    status, _, err = cli(
        capsys, "augment", runs["cond"], "--n-per-class", 1, "--out", blocker / "aug.npz"
    )
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
