"""Gold-standard check of an amortised guide against NUTS on p(z | x).

For a handful of datapoints, :func:`nuts_check` samples the exact posterior p(z | x_i) of
the trained model (its parameters held fixed) with the No-U-Turn sampler, checks the
chains' convergence with rank-normalised R-hat and bulk/tail ESS (computed by ArviZ via
:func:`ppvae.inference.diagnostics.mcmc_summary`), and compares the guide's marginals
with the NUTS posterior: standardised mean differences (μ_q − μ_nuts) / σ_nuts, scale
ratios σ_q / σ_nuts, and the 2-Wasserstein distance between Gaussian fits of the two.
A guide that is too narrow shows σ_q / σ_nuts < 1, the same failure that makes
importance weights heavy-tailed (high Pareto k-hat).

The chains run one after another in this process (``pyro.infer.MCMC`` would otherwise
start one process per chain), which keeps the check reproducible and safe in notebooks.

References
----------
Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15.
Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-Normalization, Folding, and
Localization: An Improved R-hat for Assessing Convergence of MCMC", Bayesian Analysis.
Givens & Shortt (1984), "A class of Wasserstein metrics for probability distributions",
Michigan Mathematical Journal 31 (the Gaussian 2-Wasserstein distance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS

from ppvae.inference.diagnostics import mcmc_summary
from ppvae.inference.rng import seeded
from ppvae.models.programs import local_params_method

__all__ = ["NutsCheck", "nuts_check", "gaussian_w2"]


@dataclass
class NutsCheck:
    """NUTS posterior against the guide for a few datapoints.

    Attributes
    ----------
    table
        One row per (``obs``, ``latent``): ``mean_nuts``, ``sd_nuts``, ``mcse_mean``,
        ``ess_bulk``, ``ess_tail``, ``r_hat`` (NUTS), ``mean_q``, ``sd_q`` (guide),
        ``std_mean_diff`` = (μ_q − μ_nuts) / σ_nuts and ``sd_ratio`` = σ_q / σ_nuts.
    samples
        NUTS draws, shape ``(chain, draw, B, *latent_shape)``.
    wasserstein
        2-Wasserstein distance between Gaussian fits of guide and NUTS, per datapoint.
    """

    table: pd.DataFrame
    samples: torch.Tensor
    wasserstein: torch.Tensor

    @property
    def max_rhat(self) -> float:
        return float(self.table["r_hat"].max())

    @property
    def min_ess(self) -> float:
        return float(self.table["ess_bulk"].min())

    @property
    def mean_abs_std_diff(self) -> float:
        """Mean over datapoints and dims of |μ_q − μ_nuts| / σ_nuts."""
        return float(self.table["std_mean_diff"].abs().mean())

    @property
    def mean_sd_ratio(self) -> float:
        """Mean over datapoints and dims of σ_q / σ_nuts (1 is ideal, < 1 too narrow)."""
        return float(self.table["sd_ratio"].mean())

    def summary(self) -> str:
        return (
            f"NUTS: max R-hat {self.max_rhat:.3f}, min bulk ESS {self.min_ess:.0f}; guide vs "
            f"NUTS: mean |Δμ|/σ {self.mean_abs_std_diff:.2f}, mean σ_q/σ {self.mean_sd_ratio:.2f}"
            f", mean W2 {float(self.wasserstein.mean()):.3f}"
        )


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(a)
    return evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.transpose(-1, -2)


def gaussian_w2(
    m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor
) -> torch.Tensor:
    """2-Wasserstein distance between N(m1, s1) and N(m2, s2) (batched over leading dims).

    W2² = |m1 − m2|² + tr(s1 + s2 − 2 (s1^½ s2 s1^½)^½).
    """
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    trace = (s1 + s2 - 2 * cross).diagonal(dim1=-2, dim2=-1).sum(-1)
    return ((m1 - m2).square().sum(-1) + trace).clamp_min(0).sqrt()


def _cov(draws: torch.Tensor) -> torch.Tensor:
    """Covariance over the leading axis of draws ``(S, B, D)`` → ``(B, D, D)``."""
    centred = draws - draws.mean(0)
    return torch.einsum("sbi,sbj->bij", centred, centred) / (draws.shape[0] - 1)


@torch.no_grad()
def _guide_draws(guide: Callable, args: tuple, site: str, n: int) -> torch.Tensor:
    fn = poutine.trace(guide).get_trace(*args).nodes[site]["fn"]
    return fn.sample((n,))


@local_params_method
def nuts_check(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    num_samples: int = 500,
    warmup: int = 300,
    num_chains: int = 2,
    seed: int = 0,
    site: str = "z",
    guide_samples: int = 4000,
) -> NutsCheck:
    """Sample p(z | x) with NUTS and compare the guide's marginals with it.

    Parameters
    ----------
    model, guide
        Pyro programs called as ``model(x)`` (or ``model(x, y)``); the latent ``site``
        sits in ``pyro.plate("data", len(x))``. The model's parameters are held fixed:
        NUTS differentiates the log-density with respect to the latent sites only.
    x, y
        A handful of datapoints (the sampler's dimension is ``len(x) × latent_dim``).
    num_samples, warmup
        Kept draws and adaptation steps per chain.
    num_chains
        Chains, run sequentially with seeds ``seed``, ``seed + 1``, ...
    site
        The latent site to compare.
    guide_samples
        Draws from the guide used for its means, scales and covariance.

    Returns
    -------
    NutsCheck
    """
    if num_chains < 2:
        raise ValueError("R-hat needs at least 2 chains")
    args = (x,) if y is None else (x, y)
    chains = []
    for chain in range(num_chains):
        with seeded(seed + chain):
            mcmc = MCMC(
                NUTS(model, jit_compile=False),
                num_samples=num_samples,
                warmup_steps=warmup,
                num_chains=1,
                disable_progbar=True,
            )
            mcmc.run(*args)
        chains.append(mcmc.get_samples()[site].detach())
    samples = torch.stack(chains)
    with seeded(seed + num_chains):
        q_draws = _guide_draws(guide, args, site, guide_samples).to(samples.dtype)
    b = x.shape[0]
    flat = samples.reshape(num_chains, num_samples, b, -1)
    q_flat = q_draws.reshape(guide_samples, b, -1)
    stats = mcmc_summary(flat, var_name=site, dims=["obs", "latent"])
    d = flat.shape[-1]
    nuts_all = flat.reshape(-1, b, d)
    mean_q, sd_q = q_flat.mean(0), q_flat.std(0)
    index = pd.MultiIndex.from_product([range(b), range(d)], names=["obs", "latent"])
    table = pd.DataFrame(
        {
            "mean_nuts": stats["mean"].to_numpy(),
            "sd_nuts": stats["sd"].to_numpy(),
            "mcse_mean": stats["mcse_mean"].to_numpy(),
            "ess_bulk": stats["ess_bulk"].to_numpy(),
            "ess_tail": stats["ess_tail"].to_numpy(),
            "r_hat": stats["r_hat"].to_numpy(),
            "mean_q": mean_q.reshape(-1).cpu().numpy(),
            "sd_q": sd_q.reshape(-1).cpu().numpy(),
        },
        index=index,
    )
    table["std_mean_diff"] = (table["mean_q"] - table["mean_nuts"]) / table["sd_nuts"]
    table["sd_ratio"] = table["sd_q"] / table["sd_nuts"]
    w2 = gaussian_w2(mean_q, _cov(q_flat), nuts_all.mean(0), _cov(nuts_all))
    return NutsCheck(table=table, samples=samples, wasserstein=w2)
