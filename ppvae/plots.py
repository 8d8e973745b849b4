"""Figures for trained VAEs: image grids, latent maps, training curves, diagnostics.

Every ``plot_*`` function takes plain tensors or arrays (computing them from a model
is :mod:`ppvae.app.figures`' job) and returns a :class:`matplotlib.figure.Figure`;
:func:`save_figure` writes one to PNG atomically and closes it. Importing this module
leaves matplotlib's backend alone (so figures show inline in notebooks); the command line
calls :func:`use_headless_backend` so that it never needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from ppvae.inference.khat import KHAT_LABELS, khat_labels, khat_threshold

__all__ = [
    "plot_codebook_usage",
    "use_headless_backend",
    "KHAT_CLIP",
    "KHAT_COLOURS",
    "is_image_shape",
    "plot_image_grid",
    "plot_samples",
    "plot_conditional_samples",
    "plot_reconstructions",
    "plot_interpolations",
    "plot_traversals",
    "plot_mutual_information",
    "plot_latent_scatter",
    "plot_elbo_curves",
    "plot_loglik_hist",
    "plot_khat",
    "plot_khat_comparison",
    "plot_is_vs_ais",
    "plot_ess",
    "plot_feature_summary",
    "save_figure",
]

#: Colours of the k-hat labels good, ok, bad and very bad.
KHAT_COLOURS = ("#1b9e77", "#7570b3", "#d95f02", "#e7298a")
#: The k-hat axis shown; values beyond it are drawn at its edge and counted as clipped.
KHAT_CLIP = (-0.5, 1.5)

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def use_headless_backend() -> None:
    """Switch matplotlib to the non-interactive "Agg" backend (no display needed)."""
    matplotlib.use("Agg")


def _np(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def is_image_shape(event_shape: Sequence[int]) -> bool:
    """Whether datapoints of this shape are shown as images ((C, H, W) with C = 1 or 3)."""
    return len(event_shape) == 3 and event_shape[0] in (1, 3)


def _to_unit(images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    return ((images.detach().cpu().float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)


def _grid(images: torch.Tensor, nrow: int, value_range: tuple[float, float]) -> np.ndarray:
    grid = make_grid(_to_unit(images, value_range), nrow=nrow, padding=1, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def plot_image_grid(
    images: torch.Tensor,
    *,
    nrow: int = 8,
    value_range: tuple[float, float] = (0.0, 1.0),
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell_inches: float = 0.6,
) -> Figure:
    """Images ``(N, C, H, W)`` laid out ``nrow`` per row, values mapped from ``value_range``."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    grid = _grid(images, nrow, value_range)
    rows = -(-len(images) // nrow)
    cols = min(nrow, len(images))
    fig, ax = plt.subplots(figsize=(1 + cols * cell_inches, 0.6 + rows * cell_inches))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    h, w = images.shape[-2] + 1, images.shape[-1] + 1  # cell size including padding
    ax.set_xticks([])
    ax.set_yticks([])
    ax.tick_params(length=0)
    if row_labels is not None:
        ax.set_yticks([h * (i + 0.5) for i in range(len(row_labels))], list(row_labels))
    if col_labels is not None:
        ax.set_xticks([w * (j + 0.5) for j in range(len(col_labels))], list(col_labels))
        ax.tick_params(axis="x", labelsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _detached(fig)


def plot_samples(
    images: torch.Tensor, *, value_range: tuple[float, float], nrow: int = 8
) -> Figure:
    """A grid of samples from the model."""
    return plot_image_grid(images, nrow=nrow, value_range=value_range, title="Samples")


def plot_conditional_samples(
    images: torch.Tensor, *, value_range: tuple[float, float], labels: Sequence[str] | None = None
) -> Figure:
    """Class-conditional samples ``(num_classes, n, C, H, W)``: one row per class."""
    num_classes, n = images.shape[:2]
    labels = [str(c) for c in range(num_classes)] if labels is None else labels
    return plot_image_grid(
        images.flatten(0, 1),
        nrow=n,
        value_range=value_range,
        title="Class-conditional samples",
        row_labels=labels,
    )


def plot_reconstructions(
    inputs: torch.Tensor,
    reconstructions: torch.Tensor,
    *,
    value_range: tuple[float, float],
    nrow: int = 8,
) -> Figure:
    """Inputs and their reconstructions in alternating rows."""
    n = len(inputs)
    rows = []
    for start in range(0, n, nrow):
        rows += [inputs[start : start + nrow], reconstructions[start : start + nrow]]
    labels = ["input", "recon."] * len(range(0, n, nrow))
    return plot_image_grid(
        torch.cat(rows),
        nrow=nrow,
        value_range=value_range,
        title="Reconstructions (mean of p(x | z) at the posterior mean)",
        row_labels=labels,
    )


def plot_interpolations(
    images: torch.Tensor, *, value_range: tuple[float, float], method: str = "slerp"
) -> Figure:
    """Decoded latent paths ``(pairs, steps, C, H, W)``; each row joins two datapoints."""
    pairs, steps = images.shape[:2]
    return plot_image_grid(
        images.flatten(0, 1),
        nrow=steps,
        value_range=value_range,
        title=f"Latent interpolation ({method}) between test datapoints",
    )


def plot_traversals(
    images: torch.Tensor,
    *,
    dims: Sequence[int],
    offsets: Sequence[float],
    value_range: tuple[float, float],
    labels: Sequence[str] | None = None,
) -> Figure:
    """Traversals ``(len(dims), len(offsets), C, H, W)``: row i varies latent ``dims[i]``.

    ``labels`` names the rows (default ``z[d]``), e.g. with the factor a dimension captures.
    """
    return plot_image_grid(
        images.flatten(0, 1),
        nrow=len(offsets),
        value_range=value_range,
        title="Latent traversals",
        row_labels=list(labels) if labels is not None else [f"z[{d}]" for d in dims],
        col_labels=[f"{o:+g}" for o in offsets],
    )


def plot_mutual_information(
    mi: ArrayLike, factor_names: Sequence[str], *, title: str | None = None
) -> Figure:
    """Heatmap of a ``(D, K)`` matrix of mutual information between latent dimensions and
    factors, each column normalised by its factor's entropy (so 1 = the factor is known)."""
    mi = _np(mi)
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * mi.shape[1], 0.8 + 0.32 * mi.shape[0]))
    sns.heatmap(
        mi,
        ax=ax,
        vmin=0,
        vmax=1,
        cmap="viridis",
        annot=mi.shape[0] <= 20,
        fmt=".2f",
        annot_kws={"size": 7},
        xticklabels=list(factor_names),
        yticklabels=[f"z[{d}]" for d in range(mi.shape[0])],
        cbar_kws={"label": "I(z_d; factor) / H(factor)"},
    )
    ax.set_title(title or "Mutual information between latents and factors")
    fig.tight_layout()
    return fig


def plot_latent_scatter(
    means: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    method: str = "pca",
    seed: int = 0,
) -> Figure:
    """Posterior means in 2-D (PCA or t-SNE beyond two dimensions), coloured by label."""
    z = _np(means)
    if z.ndim != 2:
        raise ValueError(f"means must have shape (N, latent_dim), got {z.shape}")
    if z.shape[1] == 1:
        z, axes = np.concatenate([z, np.zeros_like(z)], axis=1), ("z[0]", "")
    elif z.shape[1] == 2:
        axes = ("z[0]", "z[1]")
    elif method == "pca":
        from sklearn.decomposition import PCA

        z, axes = PCA(n_components=2, random_state=seed).fit_transform(z), ("PC 1", "PC 2")
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(z) - 1) // 3)))
        tsne = TSNE(n_components=2, random_state=seed, init="pca", perplexity=perplexity)
        z, axes = tsne.fit_transform(z), ("t-SNE 1", "t-SNE 2")
    else:
        raise ValueError(f"unknown projection {method!r}: use 'pca' or 'tsne'")
    fig, ax = plt.subplots(figsize=(6, 5))
    hue = None if labels is None else _np(labels).astype(int).astype(str)
    order = None if hue is None else sorted(set(hue), key=int)
    colours = {} if hue is None else {"hue": hue, "hue_order": order, "palette": "tab10"}
    sns.scatterplot(x=z[:, 0], y=z[:, 1], s=12, ax=ax, linewidth=0, **colours)
    if hue is not None:
        ax.legend(title="label", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title("Posterior means of q(z | x)")
    fig.tight_layout()
    return _detached(fig)


def plot_elbo_curves(
    train_objective: ArrayLike, val_elbo: ArrayLike | None = None, *, objective: str = "ELBO"
) -> Figure:
    """Per-datapoint training objective and validation ELBO per epoch.

    ``objective`` names the training objective in the legend (e.g. "IWAE bound (K=8)"
    for a run trained on the importance-weighted bound).
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    train = _np(train_objective)
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, label=f"train {objective}")
    if val_elbo is not None and len(val_elbo):
        val = _np(val_elbo)
        ax.plot(np.arange(1, len(val) + 1), val, label="validation ELBO")
    finite = train[np.isfinite(train)]
    if len(finite) > 4:  # the first epochs' ELBO would squash the rest of the curve
        ax.set_ylim(bottom=np.quantile(finite, 0.05) - 0.05 * np.ptp(finite))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("Training curves")
    ax.legend()
    fig.tight_layout()
    return _detached(fig)


def plot_loglik_hist(
    per_datapoint: ArrayLike, elbo_per_datapoint: ArrayLike | None = None
) -> Figure:
    """Histogram of per-datapoint log p̂(x) (and the ELBO for comparison)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ll = _np(per_datapoint)
    sns.histplot(ll, ax=ax, label="log p̂(x)", color="C0", stat="count", alpha=0.6)
    if elbo_per_datapoint is not None:
        sns.histplot(_np(elbo_per_datapoint), ax=ax, label="ELBO", color="C1", alpha=0.4)
    ax.axvline(float(np.mean(ll)), color="C0", linestyle="--", label=f"mean {np.mean(ll):.2f}")
    ax.set_xlabel("nats")
    ax.set_title("Per-datapoint log-likelihood estimates")
    ax.legend()
    fig.tight_layout()
    return _detached(fig)


def _draw_khat(ax: plt.Axes, k: np.ndarray, num_samples: int, title: str) -> None:
    """k-hat per datapoint on ``ax``, coloured by label, with the label edges.

    Values outside [−0.5, 1.5] (and infinite or NaN ones) are drawn at the clip value
    as triangles pointing off the axis, and the legend says how many were clipped, so a
    datapoint far above the threshold is neither lost nor mistaken for one at 1.5. The
    legend sits outside the axes, where it cannot cover points.
    """
    threshold = khat_threshold(num_samples)
    cats = khat_labels(k, num_samples)
    lo, hi = KHAT_CLIP
    filled = np.nan_to_num(k, nan=np.inf, posinf=np.inf, neginf=-np.inf)
    shown = np.clip(filled, lo, hi)
    above, below = filled > hi, filled < lo
    inside = ~(above | below)
    idx = np.arange(len(k))
    for name, colour in zip(KHAT_LABELS, KHAT_COLOURS, strict=True):
        sel = cats == name
        if sel.any():
            label = f"{name} ({sel.sum()})"
            ax.scatter(idx[sel & inside], shown[sel & inside], s=8, color=colour, label=label)
            for mask, marker in ((above, "^"), (below, "v")):
                if (sel & mask).any():
                    ax.scatter(idx[sel & mask], shown[sel & mask], s=22, marker=marker,
                               color=colour, edgecolors="black", linewidths=0.4)  # fmt: skip
    for mask, marker, where in ((above, "^", f"above {hi:g}"), (below, "v", f"below {lo:g}")):
        if mask.any():  # a legend entry of its own, in neutral colours, for the count
            ax.scatter([], [], s=22, marker=marker, color="white", edgecolors="black",
                       label=f"clipped: {mask.sum()} {where}")  # fmt: skip
    lines = {0.7: "0.7", 1.0: "1.0", threshold: f"threshold {threshold:.2f}"}
    for value, text in sorted(lines.items()):
        style = "-" if value == threshold else ":"
        ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        # The threshold's label goes under its line, so that it never overlaps 0.7's.
        ax.annotate(
            text,
            (0.99, value),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="top" if value == threshold else "bottom",
            ha="right",
            color="grey",
        )
    ax.set_ylim(lo - 0.1, hi + 0.1)
    ax.set_xlabel("datapoint")
    ax.set_ylabel("Pareto k-hat")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def plot_khat(khat: ArrayLike, *, num_samples: int) -> Figure:
    """Pareto k-hat per datapoint, coloured by its reliability label, with the label edges.

    Labels and threshold are those of :mod:`ppvae.inference.khat` for ``num_samples``.
    """
    fig, ax = plt.subplots(figsize=(8.5, 4))
    title = f"PSIS k-hat of the importance weights per datapoint (S = {num_samples})"
    _draw_khat(ax, _np(khat), num_samples, title)
    fig.tight_layout()
    return _detached(fig)


def plot_khat_comparison(
    guide_khat: ArrayLike,
    final_khat: ArrayLike,
    *,
    num_samples: int,
    final_title: str = "final estimate",
) -> Figure:
    """k-hat with the guide alone (left) beside that of the final estimate (right).

    Both panels share the k-hat axis, so a proposal that fixes the guide's heavy tails
    shows as points moving below the threshold line.
    """
    fig, axes = plt.subplots(1, 2, figsize=(14, 4), sharey=True)
    _draw_khat(axes[0], _np(guide_khat), num_samples, f"guide alone (S = {num_samples})")
    _draw_khat(axes[1], _np(final_khat), num_samples, final_title)
    axes[1].set_ylabel("")
    fig.suptitle("PSIS k-hat of the importance weights per datapoint")
    fig.tight_layout()
    return _detached(fig)


def plot_is_vs_ais(
    is_estimate: ArrayLike,
    ais_estimate: ArrayLike,
    is_stderr: ArrayLike,
    ais_stderr: ArrayLike,
) -> Figure:
    """Per-datapoint difference of importance sampling and AIS, ±2 Monte Carlo s.e.

    Datapoints whose importance-sampling s.e. is not available (NaN: k-hat rejects it)
    are drawn as crosses without a bar.
    """
    d = _np(is_estimate) - _np(ais_estimate)
    se = np.sqrt(_np(is_stderr) ** 2 + _np(ais_stderr) ** 2)
    idx = np.arange(len(d))
    has = np.isfinite(se)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.errorbar(idx[has], d[has], yerr=2 * se[has], fmt="o", ms=4, color="C0", label="±2 MC s.e.")
    if (~has).any():
        ax.scatter(idx[~has], d[~has], marker="x", color="C3", label="no IS s.e. (k-hat)")
    n = len(d)
    sem = d.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
    ax.axhline(d.mean(), color="C1", linestyle="--", label=f"mean {d.mean():+.3f} ± {sem:.3f}")
    ax.set_xlabel("datapoint")
    ax.set_ylabel("IS − AIS (nats)")
    ax.set_title("Importance sampling minus annealed importance sampling, per datapoint")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _detached(fig)


def plot_ess(ess: ArrayLike, *, num_samples: int) -> Figure:
    """Effective sample size of the importance weights per datapoint (log scale)."""
    e = _np(ess)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(np.arange(len(e)), e, s=8, color="C0")
    ax.axhline(num_samples, color="grey", linestyle=":", linewidth=1, label=f"S = {num_samples}")
    ax.set_yscale("log")
    ax.set_xlabel("datapoint")
    ax.set_ylabel("ESS")
    ax.set_title(f"Importance-sampling ESS per datapoint (median {np.median(e):.0f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _detached(fig)


def plot_feature_summary(
    data: ArrayLike, model: ArrayLike, *, feature_names: Sequence[str] | None = None
) -> Figure:
    """Per-feature mean ± sd of the data beside the model's samples, for tabular data."""
    x, s = _np(data).reshape(len(data), -1), _np(model).reshape(len(model), -1)
    idx = np.arange(x.shape[1])
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(idx)), 4))
    for offset, values, name in ((-0.15, x, "data"), (0.15, s, "model samples")):
        ax.errorbar(idx + offset, values.mean(0), yerr=values.std(0), fmt="o", ms=3, label=name)
    if feature_names is not None:
        ax.set_xticks(idx, list(feature_names), rotation=90, fontsize=7)
    ax.set_xlabel("feature")
    ax.set_ylabel("mean ± sd")
    ax.set_title("Per-feature mean and spread: data vs model")
    ax.legend()
    fig.tight_layout()
    return _detached(fig)


def _detached(fig: Figure) -> Figure:
    """``fig``, released by pyplot: shown once in a notebook, by the cell's value.

    pyplot's inline backend shows every figure it still manages at the end of a cell, and
    the returned figure, as the cell's value, would be shown again. A released figure
    can still be saved, shown with ``display(fig)``, or drawn into.
    """
    plt.close(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically (temporary file, then rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def plot_codebook_usage(
    counts: ArrayLike, perplexity: ArrayLike | None = None, *, title: str = "Codebook usage"
) -> Figure:
    """How often each code is used (sorted), and the codebook perplexity per epoch.

    Parameters
    ----------
    counts
        Number of grid positions assigned to each code, ``(K,)``.
    perplexity
        exp of the entropy of the code frequencies per training epoch (K at best).
    """
    counts = np.sort(_np(counts))[::-1]
    panels = 2 if perplexity is not None and len(perplexity) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    ax.bar(np.arange(len(counts)), counts / max(counts.sum(), 1), width=1.0)
    used = int((counts > 0).sum())
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("share of positions")
    ax.set_title(f"{title}: {used} of {len(counts)} codes used")
    if panels == 2:
        p = _np(perplexity)
        axes[0, 1].plot(np.arange(1, len(p) + 1), p)
        axes[0, 1].axhline(len(counts), ls="--", c="grey", lw=1, label="K")
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_ylabel("perplexity")
        axes[0, 1].set_title("Codebook perplexity")
        axes[0, 1].legend()
    fig.tight_layout()
    return fig
