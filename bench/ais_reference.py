"""A hand-written batched AIS in plain PyTorch, the baseline of the AIS benchmark.

The same algorithm as :func:`ppvae.inference.ais.ais_log_weights`, written directly
against a decoder and a Binomial likelihood with nothing around it (no Pyro): for each
datapoint, ``num_chains`` chains start from the diagonal Gaussian base r_0(z | x) =
N(μ(x), diag σ(x)²) with the guide's mean and standard deviations and follow the
geometric path f_t = r_0^(1 − β_t) · p(x, z)^β_t, with

    p(x, z) = N(z; 0, I) · Π_pixels Binomial(x_i; n, logits = decoder(z)_i),

on the sigmoid schedule of Grosse et al. (2015), in the whitened coordinates
z = μ + σ ⊙ v. Each step adds (β_t − β_{t−1}) [ℓ(v) − log N(v; 0, I)] to the log-weight,
then moves every chain by one HMC transition (``leapfrog_steps`` leapfrog steps, one
gradient of ℓ each, reusing the gradient at the current state), and adapts one step size
per datapoint towards the target acceptance rate. Gradient evaluations: one at the start
and ``leapfrog_steps`` per transition, as in ppvae.

References
----------
Neal (2001), "Annealed importance sampling", Statistics and Computing 11.
Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
bidirectional Monte Carlo", arXiv:1511.02543.
Wu, Burda, Salakhutdinov & Grosse (2017), "On the Quantitative Analysis of
Decoder-Based Generative Models", ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import Binomial
from torch.nn import functional as F

__all__ = ["ReferenceAISRun", "binomial_log_joint", "reference_ais", "gradient_evaluations"]


@dataclass
class ReferenceAISRun:
    """Log-weights ``(C, B)``, mean acceptance rate and final step size ``(B,)``."""

    log_weights: torch.Tensor
    accept_rate: torch.Tensor
    step_size: torch.Tensor


def gradient_evaluations(num_steps: int, leapfrog_steps: int) -> int:
    """Batched gradient evaluations (all chains × datapoints at once) of one AIS run.

    One at the start and ``leapfrog_steps`` per transition, in ppvae's AIS and here.
    """
    return 1 + num_steps * leapfrog_steps


def _schedule(num_steps: int, sharpness: float) -> list[float]:
    if num_steps == 1:
        return [0.0, 1.0]
    s = torch.sigmoid(sharpness * torch.linspace(-1.0, 1.0, num_steps + 1, dtype=torch.float64))
    return ((s - s[0]) / (s[-1] - s[0])).tolist()


def _log_std_normal(v: torch.Tensor) -> torch.Tensor:
    return -0.5 * v.pow(2).sum(-1) - 0.5 * v.shape[-1] * math.log(2 * math.pi)


def binomial_log_joint(
    decoder: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    total_count: int = 16,
    *,
    closed_form: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """z ↦ log N(z; 0, I) + log Binomial(x; n, logits = decoder(z)), shape ``z.shape[:-1]``.

    ``x`` holds counts ``(B, ...)``; ``decoder`` maps ``(..., B, D)`` to logits of ``x``'s
    datapoint shape. The Binomial log-density is ``torch.distributions.Binomial.log_prob``
    (as :mod:`bench.reference` uses torch's Bernoulli), or with ``closed_form`` the same
    value written out, x·logits − n·softplus(logits) + log C(n, x), with the constant
    computed once: torch's (and Pyro's) Binomial recomputes log C(n, x) with ``lgamma``
    over the broadcast shape at every call.
    """
    b = x.shape[0]
    n = float(total_count)
    x_flat = x.reshape(b, -1)
    log_c = math.lgamma(n + 1) - torch.lgamma(x_flat + 1) - torch.lgamma(n - x_flat + 1)
    log_c = log_c.sum(-1)

    def log_joint(z: torch.Tensor) -> torch.Tensor:
        logits = decoder(z).reshape(*z.shape[:-1], -1)
        if closed_form:
            log_lik = (x_flat * logits - n * F.softplus(logits)).sum(-1) + log_c
        else:
            log_lik = Binomial(n, logits=logits, validate_args=False).log_prob(x_flat).sum(-1)
        return log_lik + _log_std_normal(z)

    return log_joint


@torch.no_grad()
def reference_ais(
    decoder: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    total_count: int = 16,
    num_steps: int = 1000,
    num_chains: int = 16,
    leapfrog_steps: int = 5,
    target_accept: float = 0.65,
    initial_step_size: float = 0.2,
    sharpness: float = 4.0,
    closed_form: bool = False,
) -> ReferenceAISRun:
    """AIS log-weights ``(num_chains, B)`` for counts ``x`` ``(B, ...)`` under the decoder.

    ``mean`` and ``std`` ``(B, D)`` are the guide's; the target is
    :func:`binomial_log_joint` (``closed_form`` chooses its form).
    ``logsumexp(w, 0) − log C`` estimates log p(x_n) from below.
    """
    b, d = mean.shape
    log_joint = binomial_log_joint(decoder, x.to(mean.dtype), total_count, closed_form=closed_form)
    std = std.clamp_min(1e-6 * std.amax().clamp_min(1e-12))
    log_jac = std.log().sum(-1)

    def ell(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            out = log_joint(mean + std * v) + log_jac
            finite = torch.isfinite(out)
            (grad,) = torch.autograd.grad(torch.where(finite, out, 0.0).sum(), v)
        return out.detach(), grad

    betas = _schedule(num_steps, sharpness)
    v = torch.randn(num_chains, b, d, dtype=mean.dtype, device=mean.device)
    step = torch.full((b,), initial_step_size, dtype=mean.dtype, device=mean.device)
    log_w = mean.new_zeros(num_chains, b)
    accept_sum = torch.zeros_like(step)
    cur_ell, cur_grad = ell(v)
    for t in range(1, len(betas)):
        beta = betas[t]
        log_w += (beta - betas[t - 1]) * (cur_ell - _log_std_normal(v))
        # HMC on U(v) = −(1 − β) log N(v) − β ℓ(v), so ∇U = (1 − β) v − β ∇ℓ.
        eps = step.unsqueeze(-1)
        r = torch.randn_like(v)
        h0 = -((1 - beta) * _log_std_normal(v) + beta * cur_ell) + 0.5 * r.pow(2).sum(-1)
        v1, g1 = v, cur_grad
        r1 = r - 0.5 * eps * ((1 - beta) * v1 - beta * g1)
        for i in range(leapfrog_steps):
            v1 = v1 + eps * r1
            ell1, g1 = ell(v1)
            half = 0.5 if i == leapfrog_steps - 1 else 1.0
            r1 = r1 - half * eps * ((1 - beta) * v1 - beta * g1)
        h1 = -((1 - beta) * _log_std_normal(v1) + beta * ell1) + 0.5 * r1.pow(2).sum(-1)
        prob = (h0 - h1).nan_to_num(nan=-math.inf).clamp(max=0.0).exp()
        accept = torch.rand_like(prob) < prob
        keep = accept.unsqueeze(-1)
        v = torch.where(keep, v1, v)
        cur_ell = torch.where(accept, ell1, cur_ell)
        cur_grad = torch.where(keep, g1, cur_grad)
        rate = prob.mean(0)
        accept_sum += rate
        step = step * torch.exp(0.5 * (rate - target_accept))
    return ReferenceAISRun(log_w, accept_sum / (len(betas) - 1), step)
