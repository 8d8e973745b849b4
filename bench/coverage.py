"""Coverage of ±2 Monte Carlo s.e. intervals against pPCA's exact log p(x) (README table).

Guides whose Cholesky factor is the exact posterior's times c have importance weights
with Pareto shape k = 1 − c². For each c and seed, 400 datapoints are estimated with
K = 1000 by ``proposal="auto"`` (the default) and by ``proposal="guide"``; the table
gives the share of ``"auto"`` intervals that cover the exact value, and for
``"guide"`` the share of datapoints given an s.e. and the coverage among them.

    .venv/bin/python -m bench.coverage          # about half a minute on one core
"""

from __future__ import annotations

import torch

import ppvae
from ppvae.models import LinearGaussianModel, PosteriorGuide

__all__ = ["coverage_table"]


def _covered(res: ppvae.LogLikelihoodResult, exact: torch.Tensor) -> torch.Tensor:
    return (res.per_datapoint - exact).abs() <= 2 * res.mc_stderr_per_datapoint


def coverage_table(
    scales: tuple[float, ...] = (0.8, 0.62, 0.5, 0.3),
    seeds: tuple[int, ...] = (1, 2, 3),
    num_datapoints: int = 400,
    num_samples: int = 1000,
) -> list[dict[str, float]]:
    """One row per c: coverage of ``"auto"`` (min, max over seeds) and of ``"guide"``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(3)
        model = LinearGaussianModel(6, 2, noise_scale=0.5)
        x = model.marginal().sample((num_datapoints,)).detach()
        exact = model.exact_log_likelihood(x).detach()
        rows = []
        for c in scales:
            guide = PosteriorGuide(model, scale_factor=c).guide
            auto, given, among = [], [], []
            for seed in seeds:
                opts = {"num_samples": num_samples, "seed": seed}
                a = ppvae.log_likelihood(model.model, guide, x, **opts)
                auto.append(float(_covered(a, exact).double().mean()))
                g = ppvae.log_likelihood(model.model, guide, x, proposal="guide", **opts)
                ok = ~g.mc_stderr_per_datapoint.isnan()
                given.append(float(ok.double().mean()))
                among.append(float(_covered(g, exact)[ok].double().mean()) if ok.any() else 0.0)
            rows.append(
                {
                    "true k": 1 - c * c,
                    "auto coverage min": min(auto),
                    "auto coverage max": max(auto),
                    "guide: share given an s.e.": sum(given) / len(given),
                    "guide: coverage among them": sum(among) / len(among),
                }
            )
        return rows
    finally:
        torch.set_default_dtype(old)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for row in coverage_table():
        print("  ".join(f"{k} {v:.3f}" for k, v in row.items()))
