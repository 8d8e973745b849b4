"""Disentanglement scores of a run whose dataset has known factors, and their figures.

``ppvae evaluate`` adds :func:`disentanglement_summary` to ``metrics.json`` when the dataset
carries factors (dsprites-lite, dsprites, array files with a ``factors`` array); the report
shows its table, the mutual-information heatmap and traversals ordered by factor
(:func:`disentanglement_figures`). The representation is the guide's mean of every row of
train, val and test, so that the table holds every combination of factor values once
(what the FactorVAE and BetaVAE scores' sampling assumes, see
:mod:`ppvae.inference.disentanglement_sampling`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppvae import plots
from ppvae.app.figures import FigureRecord, display_range
from ppvae.data import Dataset
from ppvae.inference.disentanglement import disentanglement_metrics
from ppvae.inference.disentanglement_sampling import factor_entropies, mutual_information

__all__ = [
    "disentanglement_figures",
    "disentanglement_html",
    "disentanglement_summary",
    "encode_all",
]

_OFFSETS = [-2.0, -1.0, 0.0, 1.0, 2.0]


@torch.no_grad()
def encode_all(vae: Any, x: torch.Tensor, device: str, batch: int = 2048) -> torch.Tensor:
    """The guide's means of ``x``, in chunks."""
    vae.eval()
    return torch.cat(
        [vae.encode(x[i : i + batch].to(device))[0].cpu() for i in range(0, len(x), batch)]
    )


def disentanglement_summary(
    vae: Any, ds: Dataset, device: str, seed: int = 0
) -> dict[str, Any] | None:
    """Scores, normalised MI matrix and factor names, or ``None`` without factors."""
    if ds.factors is None or vae.num_labels is not None:
        return None
    codes = encode_all(vae, torch.cat([ds.train, ds.val, ds.test]), device).double().numpy()
    factors = ds.factors.numpy()
    scores = disentanglement_metrics(codes, factors, seed=seed)
    rows = np.random.default_rng(seed).permutation(len(codes))[:10_000]
    h = factor_entropies(factors[rows])
    mi = mutual_information(codes[rows], factors[rows]) / np.where(h > 0, h, 1.0)
    return {
        "scores": scores,
        "factor_names": list(ds.factor_names or ()),
        "normalised_mi": mi.tolist(),
        "num_codes": len(codes),
    }


def disentanglement_html(summary: dict[str, Any]) -> str:
    """The scores as an HTML table with a one-line note on their floors."""
    rows = "".join(
        f"<tr><td>{name}</td><td>{value:.3f}</td></tr>" for name, value in summary["scores"].items()
    )
    return (
        "<h2>Disentanglement</h2><table><tr><th>score</th><th>value</th></tr>"
        f"{rows}</table><p>On {summary['num_codes']} guide means against the dataset's "
        "factors (ppvae.disentanglement_metrics, disentanglement_lib's estimators). A constant "
        "representation scores 0 on each except BetaVAE (chance, 1/K) and DCI "
        "informativeness (the majority-class rate).</p>"
    )


@torch.no_grad()
def disentanglement_figures(
    vae: Any, ds: Dataset, summary: dict[str, Any], out_dir: Path, device: str
) -> list[FigureRecord]:
    """The MI heatmap and traversals of the dimension that best captures each factor."""
    names = summary["factor_names"]
    mi = np.asarray(summary["normalised_mi"])
    records = []
    fig = plots.plot_mutual_information(mi, names)
    plots.save_figure(fig, out_dir / "mutual_information.png")
    records.append(
        FigureRecord(
            "mutual_information.png",
            "Mutual information between latents and factors",
            "Plug-in mutual information (20 bins per latent) between each latent dimension's "
            "guide mean and each factor, divided by the factor's entropy. A disentangled "
            "representation has one bright cell per column and per row.",
        )
    )
    x = ds.test.to(device)
    mean = encode_all(vae, x, device)
    spread = mean.std(0)
    dims = [int(np.argmax(mi[:, k])) for k in range(mi.shape[1])]
    rows = []
    for d in dims:
        z = mean[0].repeat(len(_OFFSETS), 1)
        z[:, d] += torch.tensor(_OFFSETS) * spread[d]
        rows.append(vae.decode(z.to(device)).cpu())
    labels = [f"z[{d}] ~ {name}" for d, name in zip(dims, names)]
    value_range = display_range(vae.likelihood, x)
    fig = plots.plot_traversals(
        torch.stack(rows), dims=dims, offsets=_OFFSETS, value_range=value_range, labels=labels
    )
    plots.save_figure(fig, out_dir / "traversals_by_factor.png")
    records.append(
        FigureRecord(
            "traversals_by_factor.png",
            "Traversals ordered by factor",
            "Row k moves the latent dimension with the highest normalised mutual information "
            "with factor k (named on the left) of a test image's guide mean by -2..2 standard "
            "deviations of that dimension over the test set.",
        )
    )
    return records
