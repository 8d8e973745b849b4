"""β sweep on dsprites-lite at a fixed budget: disentanglement scores and log p(x) per run.

β-VAE with β = 1, 4, 8 and β-TCVAE (β = 6) over several seeds, each trained for the same
number of epochs with the same network; the table gives each score's mean and its range
over seeds, and the test log-likelihood (importance sampling with the guide, K particles):
the price of β. β ≠ 1 trains a different objective, not a bound on log p(x), so log p(x)
is measured separately for every run.

For context only, Locatello et al. (2019, Fig. 7 and 13) report on full dSprites (64×64,
737,280 images, 300,000 steps) with the same scores roughly: MIG 0.05–0.35, FactorVAE
score 0.55–0.85, BetaVAE score 0.7–0.9, DCI disentanglement 0.1–0.6, SAP 0.0–0.1 over
β-VAE, β-TCVAE and the other methods. This bench uses a 32×32 subset, minutes of CPU
training, and SAP with R² (see :mod:`ppvae.inference.disentanglement`): its numbers are not
comparable to those.

    .venv/bin/python -m bench.disentangle           # quick: a 4608-image grid, ~5 min on 1 core
    .venv/bin/python -m bench.disentangle --full    # all 46,080 images, 6 epochs, ~20 min
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

import ppvae

__all__ = ["CONFIGS", "run_one", "sweep", "summarise"]

# (label, elbo for ppvae.fit, beta for ppvae.fit)
CONFIGS: list[tuple[str, Any, float]] = [
    ("beta=1", "trace", 1.0),
    ("beta=4", "trace", 4.0),
    ("beta=8", "trace", 8.0),
    ("TCVAE beta=6", "tcvae", 1.0),
]
SCORES = ["mig", "dci_disentanglement", "factor_vae", "beta_vae", "sap"]


def run_one(
    ds: ppvae.Dataset,
    label: str,
    elbo: Any,
    beta: float,
    seed: int,
    *,
    epochs: int,
    latent_dim: int = 8,
    hidden: tuple[int, ...] = (256,),
    num_samples: int = 100,
    num_test: int = 500,
    metric_sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Train one model and measure it: scores, test ELBO and log p(x), seconds."""
    torch.manual_seed(seed)
    vae = ppvae.VAE(ds.event_shape, latent_dim=latent_dim, hidden=hidden, likelihood="bernoulli")
    objective = ppvae.TCVAE_ELBO(6.0) if elbo == "tcvae" else elbo
    start = time.perf_counter()
    ppvae.fit(vae, ds, elbo=objective, beta=beta, epochs=epochs, lr=2e-3, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    vae.eval()
    with torch.no_grad():
        x = torch.cat([ds.train, ds.val, ds.test])
        codes = torch.cat([vae.encode(x[i : i + 4096])[0] for i in range(0, len(x), 4096)])
    start = time.perf_counter()
    scores = ppvae.disentanglement_metrics(codes, ds.factors, seed=seed, **(metric_sizes or {}))
    metric_seconds = time.perf_counter() - start
    res = ppvae.log_likelihood(
        vae.model,
        vae.guide,
        ds.test[:num_test],
        num_samples=num_samples,
        proposal="guide",
        seed=seed,
        progress=False,
    )
    return {
        "config": label,
        "seed": seed,
        **scores,
        "elbo": float(res.elbo_per_datapoint.mean()),
        "log_px": res.mean,
        "train_seconds": seconds,
        "metric_seconds": metric_seconds,
    }


def sweep(ds: ppvae.Dataset, seeds: tuple[int, ...], epochs: int, **kwargs: Any) -> pd.DataFrame:
    """One row per (config, seed)."""
    rows = [
        run_one(ds, label, elbo, beta, seed, epochs=epochs, **kwargs)
        for label, elbo, beta in CONFIGS
        for seed in seeds
    ]
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and [min, max] over seeds of each score and of log p(x), per config."""
    out = {}
    for col in [*SCORES, "log_px"]:
        g = table.groupby("config", sort=False)[col]
        fmt = "{:.1f} [{:.1f}, {:.1f}]" if col == "log_px" else "{:.2f} [{:.2f}, {:.2f}]"
        out[col] = [
            fmt.format(m, lo, hi) for m, lo, hi in zip(g.mean(), g.min(), g.max(), strict=True)
        ]
    return pd.DataFrame(out, index=table["config"].unique())


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub table of a frame of strings (pandas' own needs the optional tabulate)."""
    lines = ["| config | " + " | ".join(frame.columns) + " |"]
    lines.append("|---" * (len(frame.columns) + 1) + "|")
    lines += [f"| {i} | " + " | ".join(map(str, row)) + " |" for i, row in frame.iterrows()]
    return "\n".join(lines)


def metric_timing(num_codes: int = 10_000, dims: int = 10, seed: int = 0) -> float:
    """Seconds of :func:`ppvae.disentanglement_metrics` on ``num_codes`` entangled codes:
    a random rotation of the standardised factors of the full dsprites-lite grid, plus noise
    dimensions (a harder case for the tree-based DCI than the ground truth)."""
    rng = np.random.default_rng(seed)
    grid = (3, 6, 10, 16, 16)
    factors = np.stack(np.unravel_index(rng.permutation(int(np.prod(grid)))[:num_codes], grid), 1)
    z = (factors - factors.mean(0)) / factors.std(0)
    codes = np.concatenate([z, rng.normal(size=(num_codes, dims - 5))], axis=1)
    codes = codes @ np.linalg.qr(rng.normal(size=(dims, dims)))[0]
    start = time.perf_counter()
    ppvae.disentanglement_metrics(codes, factors, seed=seed)
    return time.perf_counter() - start


def main(full: bool = False) -> None:
    torch.set_num_threads(1)
    if full:
        ds = ppvae.load_dataset("dsprites-lite")
        seeds, epochs = (0, 1, 2), 6
    else:
        ds = ppvae.load_dataset("dsprites-lite", grid=(3, 4, 6, 8, 8))
        seeds, epochs = (0, 1, 2), 8
    print(f"scoring 10,000 codes (10 dims) takes {metric_timing():.1f} s")
    start = time.perf_counter()
    table = sweep(ds, seeds, epochs)
    print(table.round(4).to_csv(index=False))
    print(
        f"dsprites-lite {ds.event_shape}, {len(ds.factors)} images, grid "
        f"{[int(ds.factors[:, k].max()) + 1 for k in range(5)]}, {epochs} epochs, seeds {seeds}"
    )
    print(_markdown(summarise(table)))
    print(
        f"\nmean seconds per run: training {table['train_seconds'].mean():.1f}, scores "
        f"{table['metric_seconds'].mean():.1f}; "
        f"total {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main(full="--full" in sys.argv[1:])
