"""Decomposition of the inference gap into approximation and amortisation gaps.

For a datapoint x, the gap between log p(x) and the ELBO of an amortised guide
q_φ(z | x) splits into two non-negative parts (Cremer, Li & Duvenaud, 2018):

    log p(x) − ELBO(q_φ)  =  [log p(x) − ELBO(q*)]  +  [ELBO(q*) − ELBO(q_φ)]
                             approximation gap         amortisation gap

where q* is the best member of the guide's family *for that datapoint alone*.
:func:`amortization_gap` finds q* for a diagonal-Gaussian family by stochastic
optimisation of the ELBO over a free loc and log-scale per datapoint, started from the
amortised guide's output (``vae.encode(x)`` for ppvae's VAE, the guide distribution's
mean and marginal scale otherwise), with the model held fixed. log p(x) is the
importance-sampling estimate of :func:`ppvae.inference.importance.log_likelihood` with
many particles: for each datapoint, the one of the two proposals (amortised or
optimised) whose estimate has the smaller Monte Carlo standard error.

The optimised guide is a small Pyro program over the same latent site, in
``pyro.plate("data")``; models with latent sites outside the data plate are not
supported (the per-datapoint guide has nothing to say about them).

References
----------
Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders",
ICML.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from ppvae.inference.importance import log_likelihood
from ppvae.inference.rng import seeded
from ppvae.inference.traces import trace_model_and_guide

__all__ = ["AmortizationGap", "amortization_gap", "local_guide"]


@dataclass
class AmortizationGap:
    """Per-datapoint inference-gap decomposition (nats).

    Attributes
    ----------
    table
        One row per datapoint: ``log_likelihood`` (IS estimate), ``elbo_amortized``,
        ``elbo_optimized``, each with its Monte Carlo standard error (``*_mc_stderr``),
        ``approximation_gap`` (log p − ELBO*), ``amortization_gap``
        (ELBO* − ELBO_amortised) and ``inference_gap`` (log p − ELBO_amortised, their sum).
    loc, scale
        The optimised per-datapoint diagonal Gaussian, shape ``(N, *latent_shape)``.
    """

    table: pd.DataFrame
    loc: torch.Tensor
    scale: torch.Tensor

    def means(self) -> pd.Series:
        """The columns averaged over datapoints."""
        return self.table.mean()

    def summary(self) -> str:
        m = self.means()
        return (
            f"log p(x) {m['log_likelihood']:.2f}, ELBO amortised {m['elbo_amortized']:.2f}, "
            f"optimised {m['elbo_optimized']:.2f}: approximation gap "
            f"{m['approximation_gap']:.2f}, amortisation gap {m['amortization_gap']:.2f}"
        )


def local_guide(loc: torch.Tensor, scale: torch.Tensor, site: str = "z") -> Callable:
    """A Pyro guide with its own diagonal Gaussian N(loc_i, scale_i²) for each datapoint i."""
    event_dims = loc.dim() - 1

    def guide(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with pyro.plate("data", x.shape[0], dim=-1):
            return pyro.sample(site, dist.Normal(loc, scale).to_event(event_dims))

    return guide


def _owner(guide: Callable) -> object | None:
    return guide if isinstance(guide, nn.Module) else getattr(guide, "__self__", None)


@torch.no_grad()
def _initial(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None, site: str
) -> tuple[torch.Tensor, torch.Tensor]:
    owner = _owner(guide)
    if hasattr(owner, "encode"):
        return owner.encode(x) if y is None else owner.encode(x, y)
    args = (x,) if y is None else (x, y)
    fn = poutine.trace(guide).get_trace(*args).nodes[site]["fn"]
    try:
        return fn.mean, fn.variance.sqrt()
    except NotImplementedError:
        draws = fn.sample((256,))
        return draws.mean(0), draws.std(0)


def _mean_stderr(log_weights: torch.Tensor) -> torch.Tensor:
    """Monte Carlo standard error of the ELBO estimate mean_k log w_k, per datapoint."""
    return log_weights.std(-1) / math.sqrt(log_weights.shape[-1])


def amortization_gap(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    steps: int = 500,
    lr: float = 0.1,
    num_particles: int = 16,
    num_samples: int = 2000,
    seed: int = 0,
    site: str = "z",
) -> AmortizationGap:
    """Split log p(x) − ELBO of an amortised guide into approximation and amortisation gaps.

    Parameters
    ----------
    model
        Pyro model, called as ``model(x)`` or ``model(x, y)``; its parameters stay fixed.
    guide
        The amortised guide: a Pyro program (``vae.guide``, ``PosteriorGuide(m).guide``),
        or a module with such a ``guide`` method. Its output initialises the optimisation.
    x, y
        The datapoints (and labels) to analyse.
    steps, lr, num_particles
        Adam steps (learning rate decayed to 0 along a cosine) and vectorised ELBO
        particles per step of the per-datapoint optimisation.
    num_samples
        Particles K of the importance-sampling estimates (and of the ELBO estimates).
    seed
        Seeds the optimisation and the estimates (the caller's random stream is untouched).

    Returns
    -------
    AmortizationGap
    """
    if isinstance(guide, nn.Module) and callable(getattr(guide, "guide", None)):
        guide = guide.guide
    args = (x,) if y is None else (x, y)
    loc0, scale0 = _initial(guide, x, y, site)
    loc = loc0.detach().clone().requires_grad_(True)
    log_scale = scale0.detach().log().clone().requires_grad_(True)
    trace_model_and_guide(model, local_guide(loc, log_scale.exp(), site), args, {}, 1)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    optim = torch.optim.Adam([loc, log_scale], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(1, steps)))
    )
    with seeded(seed):
        for _ in range(steps):
            loss = elbo.differentiable_loss(model, local_guide(loc, log_scale.exp(), site), *args)
            # Gradients with respect to the local parameters only: the model's parameters
            # are neither updated nor given .grad.
            loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
            optim.step()
            sched.step()
    loc, scale = loc.detach(), log_scale.detach().exp()
    opts = {"num_samples": num_samples, "y": y, "return_log_weights": True}
    amortized = log_likelihood(model, guide, x, seed=seed, **opts)
    optimized = log_likelihood(model, local_guide(loc, scale, site), x, seed=seed + 1, **opts)
    use_opt = optimized.mc_stderr_per_datapoint <= amortized.mc_stderr_per_datapoint
    log_p = torch.where(use_opt, optimized.per_datapoint, amortized.per_datapoint)
    log_p_se = torch.where(
        use_opt, optimized.mc_stderr_per_datapoint, amortized.mc_stderr_per_datapoint
    )
    elbo_a, elbo_o = amortized.elbo_per_datapoint, optimized.elbo_per_datapoint
    columns = {
        "log_likelihood": log_p,
        "log_likelihood_mc_stderr": log_p_se,
        "elbo_amortized": elbo_a,
        "elbo_amortized_mc_stderr": _mean_stderr(amortized.log_weights),
        "elbo_optimized": elbo_o,
        "elbo_optimized_mc_stderr": _mean_stderr(optimized.log_weights),
        "approximation_gap": log_p - elbo_o,
        "amortization_gap": elbo_o - elbo_a,
        "inference_gap": log_p - elbo_a,
    }
    table = pd.DataFrame({k: v.detach().cpu().numpy() for k, v in columns.items()})
    table.index.name = "obs"
    return AmortizationGap(table=table, loc=loc, scale=scale)
