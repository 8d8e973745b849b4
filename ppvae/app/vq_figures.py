"""The report figures of a VQ-VAE run: reconstructions, samples from the learned code prior,
and codebook usage."""

from __future__ import annotations

from typing import Any

import torch

from ppvae import plots

__all__ = ["vq_figures"]


@torch.no_grad()
def vq_figures(
    vq: Any,
    x: torch.Tensor,
    value_range: tuple[float, float] | None,
    history: dict[str, Any] | None,
    seed: int,
) -> list[tuple[str, Any, str, str]]:
    """``(file name, figure, title, caption)`` of each VQ figure (image ones for images)."""
    figures = []
    codes = torch.cat([vq.encode(x[i : i + 1024]) for i in range(0, len(x), 1024)])
    counts = torch.bincount(codes.reshape(-1), minlength=vq.num_codes)
    perplexity = (history or {}).get("metrics", {}).get("perplexity")
    figures.append(
        (
            "codebook.png",
            plots.plot_codebook_usage(counts, perplexity),
            "Codebook usage",
            "Share of the held-out grid positions assigned to each code (sorted) and, per "
            "training epoch, the perplexity of the codes' frequencies (K when all are used "
            "equally).",
        )
    )
    if value_range is None:
        return figures
    torch.manual_seed(seed)
    pick = torch.randperm(len(x))[:16]
    figures.append(
        (
            "reconstructions.png",
            plots.plot_reconstructions(x[pick], vq.reconstruct(x[pick]), value_range=value_range),
            "Reconstructions",
            "Inputs and the mean of p(x | e[k]) at their nearest codes k.",
        )
    )
    source = "the autoregressive code prior" if vq.prior_kind == "learned" else "p(k)"
    figures.append(
        (
            "samples.png",
            plots.plot_samples(vq.sample(32), value_range=value_range),
            "Samples",
            f"Mean of p(x | e[k]) for code grids k drawn from {source}.",
        )
    )
    return figures
