"""Bidirectional Monte Carlo: sandwich bounds that certify an AIS schedule.

On data simulated from the model, (x_n, z_n) ~ p(x, z), the latent z_n is an exact
draw from the posterior p(z | x_n). Forward AIS from the guide's base gives a
stochastic lower bound on log p(x_n); AIS run backwards from z_n gives a stochastic
upper bound (Grosse et al. 2015). Their gap bounds the error of forward AIS with the
same settings on data like the simulated data: a schedule whose gap is a few hundredths
of a nat is long enough. (It certifies the schedule on the model's own data; on real
data the guide may be worse, so a longer schedule is the safe side.)

References
----------
Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
bidirectional Monte Carlo", arXiv:1511.02543.
Wu, Burda, Salakhutdinov & Grosse (2017), "On the Quantitative Analysis of
Decoder-Based Generative Models", ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from ppvae.inference.ais import AISSettings, ais_log_weights
from ppvae.inference.local_target import LocalTarget
from ppvae.inference.rng import seeded
from ppvae.inference.traces import _data_frame
from ppvae.models.programs import local_params_method

__all__ = ["BDMCResult", "bdmc", "simulate"]


@dataclass(repr=False)
class BDMCResult:
    """Lower and upper bounds on log p(x_n) of simulated datapoints, in nats.

    Attributes
    ----------
    lower, upper
        Forward-AIS and reverse-AIS estimates per datapoint, shape ``(N,)``.
    x
        The simulated data.
    settings
        The AIS settings certified.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor
    settings: AISSettings

    @property
    def gap(self) -> torch.Tensor:
        """upper − lower per datapoint (≥ 0 in expectation)."""
        return self.upper - self.lower

    @property
    def mean_gap(self) -> float:
        return float(self.gap.mean())

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"lower": self.lower.numpy(), "upper": self.upper.numpy(), "gap": self.gap.numpy()}
        )

    def __repr__(self) -> str:
        return (
            f"BDMC over {len(self.lower)} simulated datapoints, {self.settings.num_steps} "
            f"steps × {self.settings.num_chains} chains: mean gap {self.mean_gap:.4f} nats "
            f"(max {float(self.gap.max()):.4f}); lower {float(self.lower.mean()):.3f}, "
            f"upper {float(self.upper.mean()):.3f}"
        )


@local_params_method
def simulate(
    model: Callable, x: torch.Tensor, *, data_plate: str = "data"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draw (x_n, z_n) ~ p(x, z) with as many rows as ``x`` (whose values are ignored).

    Returns the simulated data, shaped like ``x``, and the local latent values.
    """
    with torch.no_grad():
        observed = poutine.trace(model).get_trace(x)
        names = [
            n
            for n, s in observed.nodes.items()
            if s["type"] == "sample" and s["is_observed"] and _data_frame(s, data_plate)
        ]
        if len(names) != 1:
            raise ValueError(
                f"bdmc simulates data from a model with exactly one observed site in "
                f"pyro.plate({data_plate!r}); this model has {names}"
            )
        trace = prune_subsample_sites(poutine.trace(poutine.uncondition(model)).get_trace(x))
    latents = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name == names[0]:
            continue
        if _data_frame(site, data_plate) is None:
            raise ValueError(
                f"bdmc needs a model whose latent sites are all local; {name!r} is outside "
                f"pyro.plate({data_plate!r})"
            )
        latents[name] = site["value"].detach()
    return trace.nodes[names[0]]["value"].detach().reshape(x.shape), latents


@local_params_method
def bdmc(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_datapoints: int = 10,
    num_steps: int = 1000,
    num_chains: int = 16,
    leapfrog_steps: int = 5,
    target_accept: float = 0.65,
    seed: int | None = 0,
    data_plate: str = "data",
) -> BDMCResult:
    """Certify an AIS schedule by bidirectional Monte Carlo on simulated data.

    Parameters
    ----------
    model, guide
        Pyro programs ``model(x)`` and ``guide(x)`` with continuous local latents.
    x
        A template: ``num_datapoints`` rows of this shape are simulated from the model
        (the values of ``x`` are not used).
    num_steps, num_chains, leapfrog_steps, target_accept
        The AIS settings to certify (as in :func:`ppvae.ais_log_likelihood`).
    seed
        Seeds simulation and both AIS runs (the caller's RNG is left as it was).

    Returns
    -------
    BDMCResult
        ``lower`` (forward AIS) and ``upper`` (reverse AIS from the exact latents) per
        simulated datapoint; ``gap`` is their difference.
    """
    if num_datapoints < 1:
        raise ValueError(f"num_datapoints must be ≥ 1, got {num_datapoints}")
    settings = AISSettings(num_steps, num_chains, leapfrog_steps, target_accept)
    with seeded(seed):
        x_sim, latents = simulate(model, x[:num_datapoints], data_plate=data_plate)
        target = LocalTarget(model, guide, (x_sim,), data_plate=data_plate)
        exact = target.flatten({k: v.unsqueeze(0) for k, v in latents.items()})[0]
        forward = ais_log_weights(target, settings).log_weights
        backward = ais_log_weights(target, settings, reverse_from=exact).log_weights
    log_c = math.log(num_chains)
    lower = (forward.logsumexp(0) - log_c).double().cpu()
    upper = (-(backward.logsumexp(0) - log_c)).double().cpu()
    return BDMCResult(lower, upper, x_sim, settings)
