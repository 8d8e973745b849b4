"""Where the time of one AIS gradient evaluation goes: decoder, densities, Pyro, ppvae.

One gradient of log p(x, z) over all chains × datapoints (forward and backward at the
same point) timed four ways on the same trained networks: ppvae's
:class:`~ppvae.inference.local_target.LocalTarget` on ``VAE.model`` (as
:func:`ppvae.inference.ais.ais_log_weights` calls it), the same ``LocalTarget`` on the
model written as a plain Pyro program (the cost of ppvae's model classes), the same
``pyro.distributions`` objects called without Pyro (the cost of Pyro's tracing), and the
hand-written closed-form log-density (the cost of the Binomial's implementation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch

from bench.ais_reference import binomial_log_joint
from bench.machine import synchronize
from ppvae.inference.local_target import LocalTarget

__all__ = ["evaluation_costs", "plain_programs"]


def plain_programs(vae: Any) -> tuple[Callable, Callable]:
    """``vae``'s model and guide as plain Pyro programs on the same networks."""
    decoder, guide_net, total = vae.decoder, vae.guide_net, vae.likelihood.total_count
    d = vae.latent_dim

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(d), 1.0, validate_args=False).to_event(1))
            px = dist.Binomial(total, logits=decoder(z), validate_args=False)
            pyro.sample("x", px.to_event(x.dim() - 1), obs=x)

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", guide_net(x))

    return model, guide


def evaluation_costs(
    vae: Any, x: torch.Tensor, num_chains: int, *, calls: int = 30, rounds: int = 7
) -> dict[str, float]:
    """Milliseconds of one gradient evaluation (forward + backward), best of ``rounds``.

    ``ppvae``: ``LocalTarget(vae.model, ...)``, as ``ais_log_weights`` calls it;
    ``pyro_program``: ``LocalTarget`` on the plain Pyro program; ``no_pyro``: the same
    ``pyro.distributions`` objects without tracing; ``closed_form``: the hand-written
    closed-form log-density. All at the same whitened point, in the guide's coordinates.
    """
    mean, std = vae.encode(x)
    v = torch.randn(num_chains, *mean.shape, dtype=mean.dtype, device=mean.device)
    targets = {
        "ppvae": LocalTarget(vae.model, vae.guide, (x,)),
        "pyro_program": LocalTarget(*plain_programs(vae), (x,)),
    }
    total, decoder = vae.likelihood.total_count, vae.decoder
    event = x.dim() - 1

    def densities(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if kind in targets:
            return targets[kind].log_joint
        if kind == "closed_form":
            return binomial_log_joint(decoder, x, total, closed_form=True)
        prior = dist.Normal(mean.new_zeros(mean.shape[-1]), 1.0, validate_args=False).to_event(1)

        def log_joint(z: torch.Tensor) -> torch.Tensor:
            px = dist.Binomial(total, logits=decoder(z), validate_args=False).to_event(event)
            return px.log_prob(x) + prior.log_prob(z)

        return log_joint

    def gradient(log_joint: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], Any]:
        def run() -> Any:
            w = v.detach().requires_grad_(True)
            out = log_joint(mean + std * w)
            return torch.autograd.grad(torch.where(torch.isfinite(out), out, 0.0).sum(), w)

        return run

    runs = {k: gradient(densities(k)) for k in ("ppvae", "pyro_program", "no_pyro", "closed_form")}
    best = {k: math.inf for k in runs}
    for f in runs.values():
        for _ in range(5):
            f()
    for _ in range(rounds):
        for k, f in runs.items():
            synchronize(x.device)
            start = time.perf_counter()
            for _ in range(calls):
                f()
            synchronize(x.device)
            best[k] = min(best[k], (time.perf_counter() - start) / calls * 1e3)
    return best
