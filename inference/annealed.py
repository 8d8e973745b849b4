"""log p(x) by annealed importance sampling, as a :class:`LogLikelihoodResult`.

The gold standard to check importance-sampling estimates against: AIS with HMC
transitions (:mod:`ppvae.inference.ais`) from the guide's Gaussian base to p(x, z),
batched over datapoints × chains. The chains' log-weights play the role of importance
log-weights, so the estimate, its delta-method s.e., PSIS k-hat over chains and
:func:`ppvae.compare` work on the result as on any other. A schedule is certified by
:func:`ppvae.inference.bdmc.bdmc` on data simulated from the model.

References
----------
Neal (2001), "Annealed importance sampling", Statistics and Computing 11.
Wu, Burda, Salakhutdinov & Grosse (2017), "On the Quantitative Analysis of
Decoder-Based Generative Models", ICLR.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from tqdm import tqdm

from ppvae.inference.ais import AISSettings, ais_log_weights
from ppvae.inference.diagnostics import psis_diagnostics
from ppvae.inference.khat import MAX_UNFITTABLE_SAMPLES
from ppvae.inference.local_target import LocalTarget
from ppvae.inference.passes import PassRecord, batches, fingerprint, honest_stderr
from ppvae.inference.result import LogLikelihoodResult
from ppvae.inference.rng import seeded
from ppvae.inference.sharding import shard_datapoints
from ppvae.inference.traces import global_latent_sites
from ppvae.models.programs import local_params_method

__all__ = ["ais_log_likelihood"]


@local_params_method
@shard_datapoints
def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    num_steps: int = 1000,
    num_chains: int = 16,
    leapfrog_steps: int = 5,
    target_accept: float = 0.65,
    seed: int | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
) -> LogLikelihoodResult:
    """Estimate log p(x_n) per datapoint by AIS with HMC (Neal 2001; Wu et al. 2017).

    Parameters
    ----------
    model, guide
        As in :func:`ppvae.log_likelihood`; local latents must be continuous. The
        guide supplies the base distribution (its mean and standard deviations).
    x, y
        Data ``(N, ...)`` and optional labels.
    num_steps, num_chains, leapfrog_steps, target_accept
        The schedule length, chains per datapoint, leapfrog steps per HMC transition and
        the acceptance rate each datapoint's step size is adapted to
        (:class:`~ppvae.inference.ais.AISSettings`).
    seed
        Makes the run reproducible without touching the caller's random stream.
    batch_size
        Datapoints per batch (default: all; each costs ``num_chains`` chains).
    distributed
        Shard the datapoints over the ranks of a ``torchrun`` launch (default ``None``:
        when there is one); see :func:`~ppvae.inference.sharding.shard_datapoints`.

    Returns
    -------
    LogLikelihoodResult
        ``num_samples`` = ``num_chains``; ``proposal`` is ``"ais"``; ``extras`` holds the
        mean acceptance rate and final step size per datapoint; ``elbo_per_datapoint`` is
        the chains' mean log-weight (a stochastic lower bound). With ≤ 20 chains PSIS
        cannot fit a tail: ``khat`` is then None and every s.e. is marked approximate.
        With global latent sites each chain holds its own θ ~ q(θ), so the estimand is
        log E_q(θ) p(x_n | θ).
    """
    settings = AISSettings(num_steps, num_chains, leapfrog_steps, target_accept)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one datapoint, got shape {tuple(x.shape)}")
    if device is not None:
        x = x.to(device)
        y = None if y is None else y.to(device)
    n = len(x)
    size = min(n, batch_size or n)
    opts = {"data_plate": data_plate, "max_plate_nesting": max_plate_nesting}
    first = (x[:1],) if y is None else (x[:1], y[:1])
    if global_latent_sites(guide, first, {}, **opts) and size < n:
        raise ValueError("with global latent sites, AIS needs batch_size ≥ len(x)")
    rec = PassRecord()
    # PSIS needs more than 20 draws to fit a tail; with fewer chains the delta-method s.e.
    # over chains is reported, marked approximate (AIS weights are light-tailed when the
    # schedule is long enough, which bdmc certifies).
    diagnostics = psis_diagnostics if num_chains > MAX_UNFITTABLE_SAMPLES else None
    show = sys.stderr.isatty() if progress is None else progress
    with seeded(seed):
        steps = batches(x, y, torch.arange(n, device=x.device), size)
        for idx, args in tqdm(steps, "AIS", -(-n // size), disable=not show):
            run = ais_log_weights(LocalTarget(model, guide, args, **opts), settings)
            extras = {"accept_rate": run.accept_rate, "step_size": run.step_size}
            rec.add(
                idx, run.log_weights, diagnostics=diagnostics, keep_log_weights=False, extras=extras
            )
    _, values = rec.merged()
    khat = values.pop("khat", None)
    stderr, approximate = honest_stderr(values.pop("se"), khat, num_chains)
    if approximate is None:
        approximate = torch.ones(n, dtype=torch.bool)
    return LogLikelihoodResult(
        per_datapoint=values.pop("est"),
        mc_stderr_per_datapoint=stderr,
        elbo_per_datapoint=values.pop("elbo"),
        num_samples=num_chains,
        data_fingerprint=fingerprint(x, y),
        seed=seed,
        khat=khat,
        ess=values.pop("ess", None),
        reliable=values.pop("reliable", None),
        extras=values,
        proposal=["ais"] * n,
        mc_stderr_approximate=approximate,
    )
