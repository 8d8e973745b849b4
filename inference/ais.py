"""Annealed importance sampling of log p(x) with HMC, and its BDMC check.

For each datapoint, ``num_chains`` chains start from a Gaussian base r_0(z | x) with
the guide's mean and standard deviations (the guide itself when it is a diagonal
Gaussian) and follow the geometric path

    f_t(z) = r_0(z | x)^(1 − β_t) · p(x, z)^β_t,    0 = β_0 < β_1 < … < β_T = 1,

with a sigmoid schedule (Grosse et al. 2015). Each step adds
(β_t − β_{t−1}) [log p(x, z) − log r_0(z | x)] to the chain's log-weight and then moves
the chain by one HMC transition leaving f_t invariant (Neal 2001; Wu et al. 2017). The
mean of the chains' weights is an unbiased estimate of p(x_n), so its log is a
stochastic lower bound. All datapoints × chains run as one batch; HMC runs in the
guide's whitened coordinates (z = μ + σ ⊙ v), where one step size per datapoint,
adapted towards ``target_accept``, suits every direction about equally.

Bidirectional Monte Carlo (Grosse et al. 2015) certifies a schedule: on data simulated
from the model, the exact latent that generated each datapoint is an exact posterior
sample, so AIS run in reverse from it gives a stochastic *upper* bound; the gap between
the two bounds bounds the error of forward AIS on data like it.

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
from dataclasses import dataclass

import torch

from ppvae.inference.local_target import LocalTarget

__all__ = ["AISSettings", "sigmoid_schedule", "ais_log_weights", "AISRun"]


@dataclass(frozen=True)
class AISSettings:
    """Settings of an AIS run.

    Attributes
    ----------
    num_steps
        T, the number of intermediate distributions.
    num_chains
        Chains per datapoint; their log-weights play the role of importance log-weights.
    leapfrog_steps
        Leapfrog steps per HMC transition.
    target_accept
        Acceptance rate the per-datapoint step size is adapted towards.
    initial_step_size
        Leapfrog step size at the start, in whitened coordinates.
    schedule_sharpness
        δ of the sigmoid schedule; larger spends more steps near β = 0 and β = 1.
    """

    num_steps: int = 1000
    num_chains: int = 16
    leapfrog_steps: int = 5
    target_accept: float = 0.65
    initial_step_size: float = 0.2
    schedule_sharpness: float = 4.0
    adapt_step_size: bool = True

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.num_chains < 1 or self.leapfrog_steps < 1:
            raise ValueError(
                "num_steps, num_chains and leapfrog_steps must be ≥ 1, got "
                f"{self.num_steps}, {self.num_chains}, {self.leapfrog_steps}"
            )
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must lie in (0, 1), got {self.target_accept}")


@dataclass
class AISRun:
    """Log-weights ``(C, B)`` of an AIS run and its sampler statistics per datapoint."""

    log_weights: torch.Tensor
    accept_rate: torch.Tensor  # (B,), mean over steps and chains
    step_size: torch.Tensor  # (B,), final


def sigmoid_schedule(num_steps: int, sharpness: float = 4.0, dtype=torch.float64) -> torch.Tensor:
    """β_0 = 0 < … < β_T = 1 of Grosse et al. (2015): a rescaled logistic of a grid."""
    if num_steps == 1:
        return torch.tensor([0.0, 1.0], dtype=dtype)
    s = torch.sigmoid(sharpness * torch.linspace(-1.0, 1.0, num_steps + 1, dtype=torch.float64))
    return ((s - s[0]) / (s[-1] - s[0])).to(dtype)


class _Path:
    """The geometric path in whitened coordinates v (z = μ + σ ⊙ v).

    z = μ + σ v has Jacobian Π σ, so ℓ(v) = log p(x, μ + σ v) + Σ log σ is the target
    in v and the base is N(0, I): both ends keep their normalisers (1 and p(x_n)).
    """

    def __init__(
        self,
        target: LocalTarget,
        mean: torch.Tensor,
        std: torch.Tensor,
        globals_: dict[str, torch.Tensor],
    ) -> None:
        self.target, self.mean, self.std, self.globals = target, mean, std, globals_
        self.log_jac = std.log().sum(-1)

    def ell(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ℓ(v) ``(C, B)`` and its gradient ``(C, B, D)`` (zero where ℓ is not finite)."""
        v = v.detach().requires_grad_(True)
        ell = self.target.log_joint(self.mean + self.std * v, self.globals) + self.log_jac
        finite = torch.isfinite(ell)
        (grad,) = torch.autograd.grad(torch.where(finite, ell, 0.0).sum(), v)
        return ell.detach(), grad.detach()


def _log_base(v: torch.Tensor) -> torch.Tensor:
    return -0.5 * v.pow(2).sum(-1) - 0.5 * v.shape[-1] * math.log(2 * math.pi)


def _hmc_step(
    path: _Path,
    beta: float,
    v: torch.Tensor,
    ell: torch.Tensor,
    grad: torch.Tensor,
    step_size: torch.Tensor,
    leapfrog_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One HMC transition of every chain leaving f_β invariant; returns the new state.

    The potential is U = −(1 − β) log N(v) − β ℓ(v), so its gradient for any β follows
    from ∇ℓ alone: one gradient evaluation per leapfrog step, none extra when β moves
    on. (Pyro's ``velocity_verlet`` returns the potential summed over chains and its
    gradient at one β, which would cost one more evaluation per transition.)
    """

    def grad_u(v_: torch.Tensor, g_ell: torch.Tensor) -> torch.Tensor:
        return (1 - beta) * v_ - beta * g_ell

    def energy(v_: torch.Tensor, ell_: torch.Tensor, r_: torch.Tensor) -> torch.Tensor:
        return -((1 - beta) * _log_base(v_) + beta * ell_) + 0.5 * r_.pow(2).sum(-1)

    eps = step_size.unsqueeze(-1)
    r = torch.randn_like(v)
    energy0 = energy(v, ell, r)
    v1, g1 = v, grad
    r1 = r - 0.5 * eps * grad_u(v1, g1)
    for i in range(leapfrog_steps):
        v1 = v1 + eps * r1
        ell1, g1 = path.ell(v1)
        r1 = r1 - (0.5 if i == leapfrog_steps - 1 else 1.0) * eps * grad_u(v1, g1)
    log_accept = (energy0 - energy(v1, ell1, r1)).nan_to_num(nan=-math.inf)
    prob = log_accept.clamp(max=0.0).exp()
    accept = torch.rand_like(prob) < prob
    keep = accept.unsqueeze(-1)
    return (
        torch.where(keep, v1, v),
        torch.where(accept, ell1, ell),
        torch.where(keep, g1, grad),
        prob,
    )


def ais_log_weights(
    target: LocalTarget,
    settings: AISSettings | None = None,
    *,
    reverse_from: torch.Tensor | None = None,
) -> AISRun:
    """Run AIS on ``target``'s batch; log-weights ``(num_chains, B)``.

    Forward (default): chains start from the base and ``logsumexp(w) − log C`` estimates
    log p(x_n) from below. With ``reverse_from`` (flat unconstrained exact posterior
    draws, ``(C, B, D)`` or ``(B, D)``), the schedule runs from β = 1 back to 0 and
    ``−(logsumexp(w) − log C)`` is a stochastic upper bound on log p(x_n) (BDMC).
    """
    settings = settings or AISSettings()
    mean, std = target.guide_moments()
    std = std.clamp_min(1e-6 * std.amax().clamp_min(1e-12))
    chains = settings.num_chains
    path = _Path(target, mean, std, target.sample_globals(chains))
    betas = sigmoid_schedule(settings.num_steps, settings.schedule_sharpness).tolist()
    if reverse_from is None:
        v = torch.randn(chains, *mean.shape, dtype=mean.dtype, device=mean.device)
    else:
        betas = betas[::-1]
        v = ((reverse_from - mean) / std).expand(chains, *mean.shape).clone()
    step = torch.full(mean.shape[:1], settings.initial_step_size, dtype=mean.dtype)
    step = step.to(mean.device)
    log_w = mean.new_zeros(chains, mean.shape[0])
    accept_sum = torch.zeros_like(step)
    ell, grad = path.ell(v)
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]) * (ell - _log_base(v))
        v, ell, grad, prob = _hmc_step(path, betas[t], v, ell, grad, step, settings.leapfrog_steps)
        rate = prob.mean(0)
        accept_sum += rate
        # Robbins–Monro on log step size towards the target acceptance, per datapoint.
        if settings.adapt_step_size:
            step = step * torch.exp(0.5 * (rate - settings.target_accept))
    return AISRun(log_w.detach(), accept_sum / (len(betas) - 1), step)
