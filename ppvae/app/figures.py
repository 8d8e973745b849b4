"""The figures of a run: compute what to draw from a trained VAE, then draw it with ``plots``.

:func:`make_run_figures` writes every figure that applies to a model and its data
(image figures for image data, a per-feature summary for tabular data, training
curves when a history exists, the log-likelihood and k-hat figures once the run
has been evaluated, with the guide's k-hat beside the final estimate's and the
IS-vs-AIS differences when those were computed) and returns a :class:`FigureRecord`
per file with its caption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppvae import plots
from ppvae.app.evaluation_figures import evaluation_figures
from ppvae.app.vq_figures import vq_figures

__all__ = ["FigureRecord", "display_range", "slerp", "lerp", "make_run_figures"]


@dataclass
class FigureRecord:
    """One written figure: file name (relative to the figures folder), title and caption."""

    name: str
    title: str
    caption: str


def display_range(likelihood: Any, data: torch.Tensor) -> tuple[float, float]:
    """Value range mapped to black..white: the likelihood's support, else the data's."""
    lo, hi = getattr(likelihood, "value_range", lambda: (-math.inf, math.inf))()
    if not math.isfinite(lo):
        lo = float(data.min())
    if not math.isfinite(hi):
        hi = float(data.max())
    return float(lo), (float(hi) if hi > lo else float(lo) + 1.0)


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line ``(1 - t) z0 + t z1`` for each ``t``; shape ``(len(t), d)``."""
    t = t[:, None]
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation; stays in the typical set of a Gaussian prior.

    References
    ----------
    Shoemake (1985), "Animating rotation with quaternion curves", SIGGRAPH;
    White (2016), "Sampling Generative Networks", arXiv:1609.04468.
    """
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4 or (math.pi - omega).abs() < 1e-4:  # (anti)parallel: any path
        return lerp(z0, z1, t)
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def _pick(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(k, n)]


def _image_figures(
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    value_range: tuple[float, float],
    seed: int,
    interpolation: str,
) -> list[tuple[str, Any, str, str]]:
    conditional = getattr(vae, "num_labels", None) is not None
    yc = y if conditional else None
    out = []
    torch.manual_seed(seed)
    out.append(
        (
            "samples.png",
            plots.plot_samples(vae.sample(64), value_range=value_range),
            "Samples",
            "Mean of p(x | z) for 64 draws z from the prior"
            + (" (classes in turn)." if conditional else "."),
        )
    )
    if conditional:
        n = 8
        labels = torch.arange(vae.num_labels).repeat_interleave(n)
        imgs = vae.sample(len(labels), y=labels).reshape(vae.num_labels, n, *x.shape[1:])
        out.append(
            (
                "conditional_samples.png",
                plots.plot_conditional_samples(imgs, value_range=value_range),
                "Class-conditional samples",
                "One row per class: the mean of p(x | z, y) for prior draws z and label y.",
            )
        )
    idx = _pick(len(x), 32, seed)
    rec = vae.reconstruct(x[idx], None if yc is None else yc[idx])
    out.append(
        (
            "reconstructions.png",
            plots.plot_reconstructions(x[idx], rec, value_range=value_range),
            "Reconstructions",
            "Held-out inputs (odd rows) and the mean of p(x | z) at their posterior "
            "mean (even rows).",
        )
    )
    pairs, steps = _pick(len(x), 12, seed + 1).reshape(-1, 2), 10
    mean, _ = vae.encode(x[pairs.flatten()], None if yc is None else yc[pairs.flatten()])
    mean = mean.reshape(len(pairs), 2, -1)
    path = slerp if interpolation == "slerp" else lerp
    t = torch.linspace(0, 1, steps)
    rows = []
    for p in range(len(pairs)):
        z = path(mean[p, 0], mean[p, 1], t)
        rows.append(vae.decode(z, None if yc is None else yc[pairs[p, 0]].expand(steps)))
    out.append(
        (
            "interpolation.png",
            plots.plot_interpolations(
                torch.stack(rows), value_range=value_range, method=interpolation
            ),
            "Latent interpolation",
            f"Decoded {interpolation} paths between the posterior means of pairs of "
            "held-out datapoints (first and last column).",
        )
    )
    out.append(_traversal_figure(vae, x, yc, value_range, seed))
    return out


def _traversal_figure(
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    value_range: tuple[float, float],
    seed: int,
) -> tuple[str, Any, str, str]:
    mean, scale = vae.encode(x, y)
    q = torch.distributions.Normal(mean, scale.clamp_min(1e-6))
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0)
    dims = torch.argsort(kl, descending=True)[:10]
    # The aggregate posterior's spread per dimension: a datapoint's own posterior sd
    # is far too narrow on an informative dimension to show anything change.
    spread = (mean.var(0) + scale.pow(2).mean(0)).sqrt()
    offsets = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    i = int(_pick(len(x), 1, seed + 2)[0])
    rows = []
    for d in dims.tolist():
        z = mean[i].repeat(len(offsets), 1)
        z[:, d] += torch.tensor(offsets) * spread[d]
        rows.append(vae.decode(z, None if y is None else y[i].expand(len(offsets))))
    fig = plots.plot_traversals(
        torch.stack(rows), dims=dims.tolist(), offsets=offsets, value_range=value_range
    )
    kl_text = ", ".join(f"z[{d}] {kl[d]:.2f}" for d in dims[:5].tolist())
    caption = (
        "Each row moves one latent dimension of a held-out datapoint's posterior mean by "
        "k = -3..3 standard deviations of the aggregate posterior on that dimension; rows "
        f"are the {len(dims)} dimensions with the largest mean KL(q(z_d | x) || N(0, 1)) "
        f"({kl_text}, ...). Rows that do not change are unused dimensions."
    )
    return "traversals.png", fig, "Latent traversals", caption


def make_run_figures(
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out_dir: str | Path,
    *,
    split: str = "test",
    history: dict[str, Any] | None = None,
    loglik: dict[str, Any] | None = None,
    seed: int = 0,
    interpolation: str = "slerp",
    projection: str = "pca",
    max_points: int = 2000,
    objective: str = "ELBO",
) -> tuple[list[FigureRecord], list[str]]:
    """Write a run's figures into ``out_dir``.

    Parameters
    ----------
    vae
        Trained :class:`ppvae.models.vae.VAE` (in eval mode).
    x, y
        Held-out data ``(N, *event_shape)`` and labels (or ``None``).
    history
        ``History.to_dict()`` of the training run, for the training curves.
    loglik
        Per-datapoint evaluation record with ``per_datapoint``, ``elbo_per_datapoint``
        and, when diagnostics ran, ``khat``, ``ess``, ``khat_threshold`` and
        ``num_samples``; optionally ``guide_only_khat`` with ``proposal_per_datapoint``,
        and ``ais_per_datapoint`` with the standard errors of both estimates.
    interpolation, projection
        ``"slerp"`` or ``"linear"``; ``"pca"`` or ``"tsne"``.

    Returns
    -------
    records, notes
        The written figures, and remarks for the report (e.g. skipped image figures).
    """
    out_dir = Path(out_dir)
    figures: list[tuple[str, Any, str, str]] = []
    notes: list[str] = []
    with torch.no_grad():
        if hasattr(vae, "codebook"):  # a VQ-VAE: no continuous latent to draw
            image = plots.is_image_shape(x.shape[1:])
            value_range = display_range(vae.likelihood, x) if image else None
            figures += vq_figures(vae, x, value_range, history, seed)
        elif plots.is_image_shape(x.shape[1:]):
            value_range = display_range(vae.likelihood, x)
            figures += _image_figures(vae, x, y, value_range, seed, interpolation)
        else:
            notes.append(
                f"Image figures (samples, reconstructions, interpolations, traversals) are "
                f"skipped: datapoints of shape {tuple(x.shape[1:])} are not images."
            )
            if len(x.shape[1:]) == 1:
                figures.append(_feature_figure(vae, x, split, seed))
        if not hasattr(vae, "codebook"):
            figures.append(_latent_figure(vae, x, y, split, seed, projection, max_points))
    if history and history.get("train_objective"):
        figures.append(
            (
                "elbo.png",
                plots.plot_elbo_curves(
                    history["train_objective"], history.get("val_elbo"), objective=objective
                ),
                "Training curves",
                f"Per-datapoint training objective, the {objective} (averaged over each "
                "epoch), and the validation ELBO at the end of each epoch.",
            )
        )
    if loglik is not None:
        figures += evaluation_figures(loglik, split)
    records = []
    for name, fig, title, caption in figures:
        plots.save_figure(fig, out_dir / name)
        records.append(FigureRecord(name, title, caption))
    return records, notes


def _feature_figure(vae: Any, x: torch.Tensor, split: str, seed: int) -> tuple[str, Any, str, str]:
    torch.manual_seed(seed)
    fig = plots.plot_feature_summary(x, vae.sample(len(x)))
    caption = (
        f"Mean ± sd of each feature over the {split} data and over as many "
        "model samples (means of p(x | z), so the model's spread is understated)."
    )
    return "features.png", fig, "Per-feature summary", caption


def _latent_figure(
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    split: str,
    seed: int,
    projection: str,
    max_points: int,
) -> tuple[str, Any, str, str]:
    conditional = getattr(vae, "num_labels", None) is not None
    idx = _pick(len(x), max_points, seed)
    yi = None if y is None else y[idx]
    mean, _ = vae.encode(x[idx], yi if conditional else None)
    more = f"{projection.upper()} projection" if mean.shape[1] > 2 else "the latent coordinates"
    return (
        "latent.png",
        plots.plot_latent_scatter(mean, yi, method=projection, seed=seed),
        "Latent space",
        f"Posterior means of {len(idx)} {split} datapoints in {more}"
        + (", coloured by label." if yi is not None else "."),
    )
