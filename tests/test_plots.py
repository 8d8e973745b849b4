"""Figures (ppvae.plots, ppvae.app.figures) and the HTML report (ppvae.app.report)."""

from __future__ import annotations

import html
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
from ppvae.app.summaries import headline_sentence, objective_name
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
        "khat_pair": plots.plot_khat_comparison(
            rng.uniform(0, 1.3, 50), rng.uniform(-0.2, 0.6, 50), num_samples=1000
        ),
        "is_vs_ais": plots.plot_is_vs_ais(
            rng.normal(-100, 1, 8),
            rng.normal(-100, 1, 8),
            np.r_[np.full(7, 0.1), np.nan],
            np.full(8, 0.05),
        ),
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
        # nan and inf are drawn at 1.5, -inf at -0.5, and counted as clipped
        expected += ["clipped: 2 above 1.5", "clipped: 1 below -0.5"]
        assert sorted(legend) == sorted(expected)
        lines = sorted(line.get_ydata()[0] for line in fig.axes[0].get_lines())
        assert lines == sorted({thr, 0.7, 1.0})
        plt.close(fig)


def test_khat_comparison_shows_the_guide_beside_the_final_estimate():
    from ppvae.inference.khat import khat_labels

    guide, final = np.r_[0.2, 0.9, 1.2, np.nan], np.r_[0.1, 0.3, 0.8, 0.2]
    fig = plots.plot_khat_comparison(guide, final, num_samples=1000, final_title="after")
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "after"
    for ax, k in zip(fig.axes, (guide, final), strict=True):
        legend = sorted(t.get_text() for t in ax.get_legend().get_texts())
        labels = khat_labels(k, 1000)
        expected = [f"{lab} ({np.sum(labels == lab)})" for lab in set(labels)]
        expected += ["clipped: 1 above 1.5"] if np.isnan(k).any() else []
        assert legend == sorted(expected)
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()  # one k-hat scale for both


def test_khat_plot_draws_clipped_points_at_the_edge_and_its_legend_outside():
    k = np.r_[np.linspace(0.0, 1.2, 40), np.full(7, 3.0), np.inf]
    fig = plots.plot_khat(k, num_samples=1000)
    ax = fig.axes[0]
    triangles = [c for c in ax.collections if len(c.get_offsets()) == 8]
    (clipped,) = triangles
    assert np.allclose(np.asarray(clipped.get_offsets())[:, 1], 1.5)
    assert np.allclose(np.asarray(clipped.get_offsets())[:, 0], np.arange(40, 48))
    assert "clipped: 8 above 1.5" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 >= ax.get_window_extent().x1  # beside the axes, over no point
    plt.close(fig)


def test_training_curves_name_the_objective():
    fig = plots.plot_elbo_curves([-300.0, -200.0], [-310.0, -205.0], objective="IWAE bound (K=8)")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["train IWAE bound (K=8)", "validation ELBO"]
    plt.close(fig)
    assert objective_name("iwae", 8) == "IWAE bound (K=8)"
    assert objective_name("trace") == "ELBO"
    assert objective_name("trace", beta=4.0) == "β-weighted ELBO (β=4)"
    summary = training_summary({"train_objective": [-100.0]}, objective="IWAE bound (K=8)")
    assert summary["final training IWAE bound (K=8) (nats)"] == -100.0


def test_headline_sentence_gives_estimate_error_data_and_verdict():
    m = {"log_likelihood": -95.321, "stderr": 0.412, "num_datapoints": 359, "split": "test",
         "khat_threshold": 0.67, "share_khat_above_threshold": 0.02, "mc_stderr": 0.0012,
         "num_without_stderr": 0}  # fmt: skip
    text = headline_sentence(m, "digits")
    assert text.startswith("log p(x) = -95.32 ± 0.41 nats per datapoint on 359 held-out test")
    assert "mostly reliable: k-hat ≤ 0.67 for 98.0 % of them" in text
    html_text = render_report(title="t", config={}, figures=[], figures_dir=".", metrics=m)
    body = html_text[html_text.index("<body>") :]
    assert body.index("class=headline") < body.index("<table")


def test_is_vs_ais_draws_bars_only_where_both_errors_exist():
    d_is, d_ais = np.array([-10.0, -11.0, -12.0]), np.array([-10.5, -11.0, -11.0])
    fig = plots.plot_is_vs_ais(d_is, d_ais, np.r_[0.1, np.nan, 0.2], np.r_[0.1, 0.1, 0.1])
    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers]  # the error bars of the datapoints with an s.e.
    assert np.allclose(bars.lines[0].get_ydata(), [0.5, -1.0])
    crosses = ax.collections[-1].get_offsets()
    assert np.allclose(np.asarray(crosses), [[1.0, 0.0]])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("mean -0.167") for t in legend)


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


def test_evaluation_figures_show_the_guide_khat_and_ais_when_recorded(tmp_path):
    x = torch.randn(20, 6)
    vae = VAE((6,), 2, likelihood="gaussian", hidden=(8,)).eval()
    loglik = {
        **_loglik(20),
        "guide_only_khat": torch.rand(20) + 0.5,
        "proposal_per_datapoint": ["refine"] * 15 + ["guide"] * 5,
        "mc_stderr_per_datapoint": torch.full((20,), 0.1),
        "ais_per_datapoint": torch.randn(4) - 100,
        "ais_mc_stderr_per_datapoint": torch.full((4,), 0.05),
        "estimator": "importance sampling with K = 200, guide proposal refined on 15 of 20",
    }
    records, _ = make_run_figures(vae, x, None, tmp_path, loglik=loglik)
    by_name = {r.name: r for r in records}
    assert list(by_name)[-4:] == ["loglik_hist.png", "khat.png", "ess.png", "ais.png"]
    assert "guide alone (left)" in by_name["khat.png"].caption
    assert "15 of 20" in by_name["khat.png"].caption
    assert "first 4" in by_name["ais.png"].caption
    assert loglik["estimator"] in by_name["loglik_hist.png"].caption


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


def test_report_shows_the_estimator_comparisons_and_bdmc_in_words(tmp_path):
    metrics = {
        "split": "test",
        "num_samples": 1000,
        "num_datapoints": 359,
        "estimator": "importance sampling with K = 1000, guide proposal refined on 359 of 359",
        "log_likelihood": -86.1,
        "stderr": 0.82,
        "mc_stderr": None,
        "num_without_stderr": 2,
        "khat_threshold": 0.7,
        "share_khat_above_threshold": 2 / 359,
        "num_reliable": 357,
        "verdict": "reliable: 99% of datapoints have k-hat ≤ 0.70",
        "guide_only": {
            "log_likelihood": -87.59,
            "mc_stderr": None,
            "num_without_stderr": 350,
            "num_reliable": 9,
            "difference": 1.49,
            "difference_stderr": 0.05,
            "verdict": "unreliable: 97% of datapoints have k-hat > 0.70",
        },
        "ais": {
            "num_datapoints": 20,
            "num_steps": 1000,
            "num_chains": 16,
            "importance_sampling": -85.0,
            "ais": -85.01,
            "difference": 0.01,
            "difference_stderr": 0.02,
            "agree": True,
            "sentence": "On the first 20 datapoints, IS − AIS = +0.010 ± 0.020 nats: agree",
        },
    }
    bdmc = {
        "num_datapoints": 10,
        "num_steps": 1000,
        "num_chains": 16,
        "mean_lower": -80.02,
        "mean_upper": -80.0,
        "mean_gap": 0.02,
        "max_gap": 0.05,
    }
    page = render_report(
        title="r",
        config={},
        figures=[],
        figures_dir=tmp_path,
        metrics=metrics,
        bdmc=bdmc,
        noun="digits",
    )
    assert "log p(x) = -86.10 ± 0.82 nats per datapoint" in page
    assert f"estimated by {metrics['estimator']}" in page
    # No Monte Carlo s.e. the diagnostics reject: words, in the headline and in the table.
    assert page.count("not available: k-hat rejects 2 of 359 digits") == 3  # headline too
    assert "not available: k-hat rejects 350 of 359 digits" in page
    assert "Refined estimate vs the guide alone" in page and "higher by 1.490 ± 0.050" in page
    assert "Importance sampling vs annealed importance sampling" in page
    assert html.escape(metrics["ais"]["sentence"]) in page
    assert "Bidirectional Monte Carlo" in page and "gap is +0.020 nats per datapoint" in page
    assert "the schedule is long enough there" in page
    assert "guide_only" not in page  # nested records get sections, not a table row
    without = render_report(title="r", config={}, figures=[], figures_dir=tmp_path, metrics={
        "split": "test", "log_likelihood": -1.0, "khat_threshold": 0.7,
        "share_khat_above_threshold": 0.0,
    })  # fmt: skip
    assert "Bidirectional" not in without and "guide alone" not in without


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
    assert summary["final training ELBO (nats)"] == -4.0
