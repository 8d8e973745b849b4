"""Figures (ppvae.plots, ppvae.app.figures) and the HTML report (ppvae.app.report)."""

from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ppvae import plots
from ppvae.app.figures import FigureRecord, display_range, lerp, make_run_figures, slerp
from ppvae.app.report import reliability_sentence, render_report, training_summary, write_report
from ppvae.models.vae import VAE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(n: int, c: int = 1, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.randint(0, 17, (n, c, h, w)).float()


def _all_figures() -> dict[str, Figure]:
    rng = np.random.default_rng(0)
    vr = (0.0, 16.0)
    return {
        "grid": plots.plot_image_grid(_images(10), nrow=4, value_range=vr, title="t"),
        "rgb": plots.plot_image_grid(_images(4, c=3), value_range=vr),
        "samples": plots.plot_samples(_images(16), value_range=vr),
        "conditional": plots.plot_conditional_samples(
            _images(30).reshape(10, 3, 1, 8, 8), value_range=vr
        ),
        "recon": plots.plot_reconstructions(_images(12), _images(12), value_range=vr),
        "interp": plots.plot_interpolations(_images(20).reshape(2, 10, 1, 8, 8), value_range=vr),
        "traversal": plots.plot_traversals(
            _images(21).reshape(3, 7, 1, 8, 8), dims=[2, 0, 1], offsets=range(-3, 4), value_range=vr
        ),
        "scatter_pca": plots.plot_latent_scatter(rng.normal(size=(60, 5)), rng.integers(0, 3, 60)),
        "scatter_tsne": plots.plot_latent_scatter(rng.normal(size=(40, 5)), method="tsne"),
        "scatter_1d": plots.plot_latent_scatter(rng.normal(size=(30, 1))),
        "elbo": plots.plot_elbo_curves(
            [-300.0, -200, -150, -140, -135, -130], [-290.0, -210, -160]
        ),
        "hist": plots.plot_loglik_hist(rng.normal(-100, 5, 200), rng.normal(-105, 5, 200)),
        "khat": plots.plot_khat(np.r_[rng.uniform(0, 1.3, 100), np.nan, -np.inf], num_samples=1000),
        "ess": plots.plot_ess(rng.uniform(1, 1000, 100), num_samples=1000),
        "features": plots.plot_feature_summary(rng.normal(size=(50, 6)), rng.normal(size=(50, 6))),
    }


def test_every_plot_returns_a_figure_and_saves_a_png(tmp_path):
    for name, fig in _all_figures().items():
        assert isinstance(fig, Figure), name
        path = plots.save_figure(fig, tmp_path / f"{name}.png")
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    assert plt.get_fignums() == []  # save_figure closes what it saves
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_image_grid_maps_the_value_range_to_black_and_white():
    images = torch.zeros(2, 1, 4, 4)
    images[1] = 16.0
    fig = plots.plot_image_grid(images, nrow=2, value_range=(0.0, 16.0))
    shown = fig.axes[0].images[0].get_array()
    assert shown.min() == 0.0 and shown.max() == 1.0  # the padding is white (1) too
    assert shown[1:5, 1:5].max() == 0.0 and shown[1:5, 6:10].min() == 1.0
    with pytest.raises(ValueError, match="N, C, H, W"):
        plots.plot_image_grid(torch.zeros(4, 8, 8))


def test_khat_plot_uses_the_diagnostics_labels():
    from ppvae.inference.khat import khat_labels, khat_threshold

    for s in (50, 1000, 5000):
        thr = khat_threshold(s)
        k = np.r_[np.linspace(-0.2, 1.5, 50), thr, 0.7, 1.0, np.nan, np.inf, -np.inf]
        fig = plots.plot_khat(k, num_samples=s)
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        labels = khat_labels(k, s)
        expected = [f"{lab} ({np.sum(labels == lab)})" for lab in dict.fromkeys(labels)]
        assert sorted(legend) == sorted(expected)
        lines = sorted(line.get_ydata()[0] for line in fig.axes[0].get_lines())
        assert lines == sorted({thr, 0.7, 1.0})
        plt.close(fig)


def test_is_image_shape():
    assert plots.is_image_shape((1, 8, 8)) and plots.is_image_shape((3, 32, 32))
    assert not plots.is_image_shape((64,)) and not plots.is_image_shape((5, 8, 8))


def test_slerp_and_lerp():
    z0, z1 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    t = torch.linspace(0, 1, 5)
    path = slerp(z0, z1, t)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    torch.testing.assert_close(path.norm(dim=1), torch.full((5,), 3.0))  # stays on the sphere
    torch.testing.assert_close(path[2], torch.tensor([1.0, 1.0]) * 3 / math.sqrt(2))
    torch.testing.assert_close(lerp(z0, z1, t)[2], torch.tensor([1.5, 1.5]))
    torch.testing.assert_close(slerp(z0, 2 * z0, t)[2], 1.5 * z0)  # parallel: straight line


def test_display_range_uses_the_likelihood_support_else_the_data():
    vae = VAE((1, 8, 8), 2, likelihood="binomial", hidden=(8,))
    assert display_range(vae.likelihood, torch.zeros(3)) == (0.0, 16.0)
    gauss = VAE((4,), 2, likelihood="gaussian", hidden=(8,))
    assert display_range(gauss.likelihood, torch.tensor([-2.0, 5.0])) == (-2.0, 5.0)


def _loglik(n: int) -> dict:
    return {
        "per_datapoint": torch.randn(n) - 100,
        "elbo_per_datapoint": torch.randn(n) - 104,
        "khat": torch.rand(n),
        "ess": torch.rand(n) * 100 + 1,
        "khat_threshold": 0.57,
        "num_samples": 200,
    }


def test_run_figures_for_a_conditional_image_model(tmp_path):
    from ppvae.data import load_dataset

    ds = load_dataset("digits")
    x, y = ds.test[:60], ds.test_labels[:60]
    vae = VAE(ds.event_shape, 3, likelihood="binomial", hidden=(16,), num_labels=10).eval()
    history = {"train_objective": [-400.0, -300.0], "val_elbo": [-390.0, -310.0]}
    records, notes = make_run_figures(vae, x, y, tmp_path, history=history, loglik=_loglik(60))
    names = [r.name for r in records]
    assert names == [
        "samples.png",
        "conditional_samples.png",
        "reconstructions.png",
        "interpolation.png",
        "traversals.png",
        "latent.png",
        "elbo.png",
        "loglik_hist.png",
        "khat.png",
        "ess.png",
    ]
    assert notes == []
    for r in records:
        assert (tmp_path / r.name).read_bytes().startswith(PNG_MAGIC)
        assert r.caption and r.title


def test_run_figures_for_tabular_data_skip_images(tmp_path):
    x = torch.randn(40, 6)
    vae = VAE((6,), 2, likelihood="gaussian", hidden=(8,)).eval()
    records, notes = make_run_figures(vae, x, None, tmp_path)
    assert [r.name for r in records] == ["features.png", "latent.png"]
    assert len(notes) == 1 and "not images" in notes[0]


def test_report_embeds_every_figure_and_escapes_user_strings(tmp_path):
    records = []
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        plots.save_figure(plots.plot_ess(np.arange(1, 10), num_samples=10), tmp_path / name)
        records.append(FigureRecord(name, f"Figure {i}", f"Caption {i} with <b>&"))
    metrics = {
        "split": "test",
        "num_samples": 1000,
        "log_likelihood": -20.5,
        "khat_threshold": 0.6666,
        "share_khat_above_threshold": 0.006,
        "verdict": "reliable: 99% of datapoints have k-hat ≤ 0.67",
    }
    history = {
        "train_objective": [-30.0, -25.0],
        "val_elbo": [-31.0, -26.0],
        "seconds": [1.5, 2.5],
        "images_per_second": [100.0, 300.0],
        "epochs_completed": 2,
    }
    page = render_report(
        title="run <x>",
        config={"dataset": "<script>alert(1)</script>", "hidden": [4, 4]},
        figures=records,
        figures_dir=tmp_path,
        metrics=metrics,
        history=history,
        notes=["a note & more"],
        noun="digits",
    )
    assert page.count("<img") == 3 == page.count('src="data:image/png;base64,')
    for i in range(3):
        assert f"<b>Figure {i}.</b> Caption {i} with &lt;b&gt;&amp;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "reliable for 99.4% of test digits (k-hat ≤ 0.67" in page
    assert "a note &amp; more" in page
    assert "http" not in page.split("</style>")[0]  # no external CSS or scripts
    assert re.search(r"training time \(s\)</td><td class=num>4</td>", page)
    path = write_report(tmp_path / "report.html", page)
    assert path.read_text(encoding="utf-8") == page


def test_reliability_sentence_and_training_summary():
    text = reliability_sentence(
        {
            "share_khat_above_threshold": 0.25,
            "khat_threshold": 0.7,
            "split": "val",
            "num_samples": 5000,
        }
    )
    assert "75.0% of val datapoints" in text and "other 25.0%" in text
    assert "No k-hat" in reliability_sentence({})
    summary = training_summary(
        {
            "seconds": [1.0, 3.0],
            "images_per_second": [10.0, 30.0],
            "epochs_completed": 2,
            "train_objective": [-5.0, -4.0],
        }
    )
    assert summary["epochs"] == 2 and summary["training time (s)"] == 4.0
    assert summary["images per second (mean)"] == 20.0
    assert summary["final train objective (nats)"] == -4.0
