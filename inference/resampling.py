"""Guide particles scored under the model, importance-resampled posterior draws, and their
export to ArviZ.

For every datapoint x_i, ``guide_particles`` draws K particles z_ik ~ q(z | x_i) with
vectorised Pyro traces (a particle plate at ``dim=-2`` around the data plate at
``dim=-1``), replays the model on them and returns the draws together with

* the log-weights log p(x_i, z_ik) − log q(z_ik | x_i), and
* the log-likelihoods log p(x_i | z_ik) (the observed sites alone).

``importance_resample`` turns them into approximate posterior draws by sampling
importance resampling (SIR): draw indices with probabilities proportional to the
weights, with replacement. SIR draws are exact in the limit K → ∞ and carry the weights'
degeneracy with them: when a few particles dominate, the draws repeat those particles,
which the effective sample size and R-hat of the draws reveal.

``inference_data`` puts such draws, with the log-likelihood estimate and its diagnostics,
into an ``arviz.InferenceData`` (through :mod:`ppvae.inference.diagnostics`).

The returned site must sit inside the data plate (one latent vector per datapoint).
Global latent sites, if any, are drawn once per particle and enter every datapoint's
weight as in :func:`ppvae.inference.weights.per_datapoint_log_weights`.

References
----------
Rubin (1988), "Using the SIR Algorithm to Simulate Posterior Distributions", Bayesian
Statistics 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ppvae.inference.diagnostics import psis_diagnostics, to_inference_data
from ppvae.inference.importance import log_likelihood
from ppvae.inference.result import LogLikelihoodResult
from ppvae.inference.rng import seeded
from ppvae.inference.traces import trace_model_and_guide
from ppvae.inference.weights import site_log_probs
from ppvae.models.programs import local_params_method

if TYPE_CHECKING:  # pragma: no cover
    import arviz as az

__all__ = ["GuideParticles", "guide_particles", "importance_resample", "inference_data"]


@dataclass
class GuideParticles:
    """K particles per datapoint drawn from the guide and scored under the model.

    Attributes
    ----------
    z
        Draws of the latent site, shape ``(K, N, *latent_shape)``.
    log_weights
        log p(x, z) − log q(z | x), shape ``(K, N)``.
    log_likelihood
        log p(x | z) summed over the observed sites in the data plate, shape ``(K, N)``.
    """

    z: torch.Tensor
    log_weights: torch.Tensor
    log_likelihood: torch.Tensor


_FIELDS = ("z", "log_weights", "log_likelihood")


def _chunk(model: Callable, guide: Callable, args: tuple, k: int, site: str) -> GuideParticles:
    model_trace, guide_trace = trace_model_and_guide(model, guide, args, {}, k)
    if site not in guide_trace.nodes or guide_trace.nodes[site]["is_observed"]:
        raise ValueError(f"the guide has no latent sample site {site!r}")
    z = guide_trace.nodes[site]["value"]
    if z.dim() < 2 or z.shape[:2] != (k, args[0].shape[0]):
        raise ValueError(
            f"site {site!r} has shape {tuple(z.shape)}: it must be a local site inside "
            "pyro.plate('data', len(x), dim=-1), one latent vector per datapoint"
        )
    p = site_log_probs(model_trace)
    p_latent = site_log_probs(model_trace, latent_only=True)
    q = site_log_probs(guide_trace, latent_only=True)
    # The same combination as per_datapoint_log_weights: global sites (drawn once per
    # particle) add their log p − log q to every datapoint's weight.
    log_w = p.local
    for term, sign in ((p.glob, 1.0), (q.local, -1.0), (q.glob, -1.0)):
        if term is not None:
            log_w = log_w + sign * (term.unsqueeze(-1) if term.dim() == 1 else term)
    log_lik = p.local if p_latent.local is None else p.local - p_latent.local
    return GuideParticles(z, log_w, log_lik)


@torch.no_grad()
def guide_particles(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_samples: int,
    y: torch.Tensor | None = None,
    site: str = "z",
    batch_size: int | None = None,
    chunk_size: int | None = None,
    seed: int | None = None,
) -> GuideParticles:
    """Draw ``num_samples`` guide particles per datapoint and score them under the model.

    Parameters
    ----------
    model, guide
        Pyro programs called as ``model(x)`` (or ``model(x, y)`` when ``y`` is given)
        with their latent sites inside ``pyro.plate("data", len(x), dim=-1)``.
    x
        Data, shape ``(N, *event_shape)``.
    num_samples
        Particles K per datapoint.
    y
        Labels passed to both programs as their second argument (conditional models).
    site
        Name of the latent site whose draws are returned.
    batch_size, chunk_size
        Datapoints and particles per vectorised pass (memory grows with their product).
    seed
        Seed of a private random stream (:func:`ppvae.inference.rng.seeded`: the global
        stream is left untouched); ``None`` draws from the global stream.

    Returns
    -------
    GuideParticles
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    n = x.shape[0]
    batch_size = batch_size or n
    chunk_size = chunk_size or num_samples
    parts: list[GuideParticles] = []
    with seeded(seed):
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            args = (xb,) if y is None else (xb, y[start : start + batch_size])
            chunks = [
                _chunk(model, guide, args, min(chunk_size, num_samples - k0), site)
                for k0 in range(0, num_samples, chunk_size)
            ]
            parts.append(
                GuideParticles(*(torch.cat([getattr(c, f) for c in chunks], 0) for f in _FIELDS))
            )
    return GuideParticles(*(torch.cat([getattr(p, f) for p in parts], 1) for f in _FIELDS))


def importance_resample(
    particles: GuideParticles, num_draws: int, *, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling importance resampling of each datapoint's particles, with replacement.

    Parameters
    ----------
    particles
        Output of :func:`guide_particles`.
    num_draws
        Draws per datapoint.
    seed
        Seed of the resampling stream.

    Returns
    -------
    z, log_likelihood
        Resampled latents ``(num_draws, N, *latent_shape)`` and the matching
        log p(x | z) ``(num_draws, N)``.
    """
    gen = torch.Generator(device=particles.log_weights.device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    lw = particles.log_weights.double()
    probs = torch.softmax(lw, dim=0).T  # (N, K)
    idx = torch.multinomial(probs, num_draws, replacement=True, generator=gen).T  # (D, N)
    cols = torch.arange(lw.shape[1], device=idx.device).expand_as(idx)
    return particles.z[idx, cols], particles.log_likelihood[idx, cols]


@local_params_method
def inference_data(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    num_draws: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    site: str = "z",
    batch_size: int | None = None,
    result: LogLikelihoodResult | None = None,
) -> az.InferenceData:
    """Estimate log p(x) and export it with importance-resampled posterior draws.

    The log-likelihood estimate and its diagnostics come from
    :func:`ppvae.inference.importance.log_likelihood` with its default proposal
    (``num_samples`` particles, unless a ready ``result`` is passed), so where k-hat
    rejects the guide they are the refined proposal's; the posterior draws below are
    always the guide's particles, resampled by their importance weights. Each of the
    ``num_chains`` chains is an independent set of
    ``num_samples`` guide particles per datapoint, resampled ``num_draws`` times in
    proportion to their importance weights (sampling importance resampling), so the
    ``posterior`` group holds approximate draws from p(z | x_i), not guide draws, and
    ``arviz.summary`` / ``arviz.plot_ess`` on it show how well the weights cover the
    posterior: duplicated particles lower the ESS, and chains that disagree raise R-hat.
    ``site`` must be a local site (one latent vector per datapoint, in the data plate).

    See :func:`ppvae.inference.diagnostics.to_inference_data` for the groups.
    """
    if result is None:
        result = log_likelihood(
            model,
            guide,
            x,
            num_samples=num_samples,
            batch_size=batch_size,
            y=y,
            seed=seed,
            diagnostics=psis_diagnostics,
        )
    zs = []
    for chain in range(num_chains):
        particles = guide_particles(
            model,
            guide,
            x,
            num_samples=num_samples,
            y=y,
            site=site,
            batch_size=batch_size,
            seed=seed + 1 + chain,
        )
        z, _ = importance_resample(particles, num_draws, seed=seed + 1 + chain)
        zs.append(z.reshape(num_draws, x.shape[0], -1))
    return to_inference_data(
        result,
        posterior_draws=torch.stack(zs),
        observed=x,
        labels=y,
        site=site,
    )
