"""A per-datapoint refined importance proposal: Laplace at the MAP, IWAE-polished, defensive.

An amortised guide is often close to each posterior in shape but not in location: on
digits the trained guide's scales match the posterior's conditional scales, while its
mean sits a few posterior standard deviations from the mode, and the importance
weights are then heavy-tailed (PSIS k-hat > 0.7) at any practical K. For those
datapoints this module builds a proposal of their own, vectorised over a batch:

1. **MAP.** Start at the guide's mean and climb log p(x_n, z) with Adam in the guide's
   whitened coordinates, then polish with a few damped Newton steps.
2. **Laplace.** The negative Hessian at the mode gives a full-rank Gaussian
   N(ẑ_n, H_n⁻¹) (Tierney & Kadane 1986); eigenvalues are floored so it is always
   proper.
3. **IWAE polish.** A few Adam steps on that datapoint's importance-weighted bound with
   ``iwae_particles`` particles (Burda et al. 2016) over a full-rank Gaussian started at
   the Laplace fit, with doubly-reparameterised gradients (Tucker et al. 2018), which
   widens the proposal where the posterior is skewed or heavier-tailed than Gaussian.
4. **Defensive mixture.** Particles come from r = (1 − α)·refined + α·guide
   (Hesterberg 1995), α = ``defensive`` (0.1): the weights p/r are then bounded by
   p/(α q) wherever the guide covers the posterior, so the refined proposal cannot do
   much worse than the guide. Each particle picks its component at random, so the
   weights are i.i.d. and their delta-method standard error is the right one (a
   stratified draw would have less variance than that s.e. says).

Everything reads traces (:class:`~ppvae.inference.local_target.LocalTarget`), so any
model with continuous local latents works; the guide supplies only the starting point
and the defensive component.

References
----------
Tierney & Kadane (1986), "Accurate approximations for posterior moments and marginal
densities", JASA 81.
Hesterberg (1995), "Weighted average importance sampling and defensive mixture
distributions", Technometrics 37.
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
Tucker, Lawson, Gu & Maddison (2018), "Doubly Reparameterized Gradient Estimators for
Monte Carlo Objectives", ICLR 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import constraints, transform_to

from ppvae.inference.local_target import LocalTarget

__all__ = ["RefineSettings", "RefinedProposal", "fit_refined_proposal", "refined_log_weights"]

_LOWER_CHOLESKY = transform_to(constraints.lower_cholesky)


@dataclass(frozen=True)
class RefineSettings:
    """Settings of the refined proposal (defaults as measured on digits, see README).

    Attributes
    ----------
    map_steps, map_lr
        Adam steps and learning rate towards the mode, in the guide's whitened
        coordinates (so one learning rate suits every scale).
    newton_steps
        Damped Newton steps after Adam; the Hessian is needed for the Laplace fit anyway.
    iwae_steps, iwae_particles, iwae_lr
        Adam steps on each datapoint's IWAE bound over the full-rank Gaussian, in the
        Laplace fit's whitened coordinates; ``iwae_steps=0`` keeps the Laplace fit.
    defensive
        The guide's share α of the particles (0 < α < 1); 0 drops the guide component.
    min_precision
        Floor on the eigenvalues of the negative Hessian (relative to its largest), so
        the Laplace covariance is always proper, also at a saddle or a flat direction.
    """

    map_steps: int = 300
    map_lr: float = 0.05
    newton_steps: int = 3
    iwae_steps: int = 100
    iwae_particles: int = 16
    iwae_lr: float = 0.02
    defensive: float = 0.1
    min_precision: float = 1e-6

    def __post_init__(self) -> None:
        if not 0 <= self.defensive < 1:
            raise ValueError(f"defensive must lie in [0, 1), got {self.defensive}")
        for name in ("map_steps", "newton_steps", "iwae_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.iwae_particles < 1:
            raise ValueError(f"iwae_particles must be ≥ 1, got {self.iwae_particles}")


@dataclass
class RefinedProposal:
    """Per-datapoint full-rank Gaussians N(loc_n, L_n L_nᵀ) in unconstrained space."""

    loc: torch.Tensor  # (B, D)
    scale_tril: torch.Tensor  # (B, D, D)
    mode: torch.Tensor  # (B, D), the MAP found
    laplace_scale_tril: torch.Tensor  # (B, D, D)

    def distribution(self) -> torch.distributions.MultivariateNormal:
        return torch.distributions.MultivariateNormal(self.loc, scale_tril=self.scale_tril)


LogJoint = Callable[[torch.Tensor], torch.Tensor]


def _find_mode(
    log_joint: LogJoint, start: torch.Tensor, scale: torch.Tensor, settings: RefineSettings
) -> torch.Tensor:
    """Adam on log p(x, z) in the coordinates v = (u − start) / scale; returns u."""
    v = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.Adam([v], lr=settings.map_lr)
    for _ in range(settings.map_steps):
        opt.zero_grad(set_to_none=True)
        loss = -log_joint((start + scale * v).unsqueeze(0)).sum()
        loss.backward()
        opt.step()
    return (start + scale * v).detach()


def _grad_and_hessian(
    log_joint: LogJoint, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p, its gradient ``(B, D)`` and Hessian ``(B, D, D)`` at ``u`` per datapoint.

    Datapoints do not interact, so the Hessian of the sum is block-diagonal and its D
    columns for all datapoints at once come from D backward passes.
    """
    u = u.detach().requires_grad_(True)
    lp = log_joint(u.unsqueeze(0))[0]
    (grad,) = torch.autograd.grad(lp.sum(), u, create_graph=True)
    cols = []
    for j in range(u.shape[-1]):
        (col,) = torch.autograd.grad(grad[:, j].sum(), u, retain_graph=True)
        cols.append(col)
    hess = torch.stack(cols, -1)
    hess = 0.5 * (hess + hess.transpose(-1, -2))
    return lp.detach(), grad.detach(), hess.detach()


def _proper_precision(hess: torch.Tensor, floor: float) -> torch.Tensor:
    """−H with eigenvalues floored at ``floor`` × its largest (and at a tiny absolute)."""
    evals, evecs = torch.linalg.eigh(-hess)
    top = evals.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(hess.dtype).tiny)
    evals = torch.maximum(evals, floor * top)
    return evecs @ torch.diag_embed(evals) @ evecs.transpose(-1, -2)


def _newton(
    log_joint: LogJoint, u: torch.Tensor, settings: RefineSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton steps (a step is kept per datapoint only if it raises log p)."""
    lp, grad, hess = _grad_and_hessian(log_joint, u)
    for _ in range(settings.newton_steps):
        prec = _proper_precision(hess, settings.min_precision)
        step = torch.linalg.solve(prec, grad.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            new_lp = log_joint((u + step).unsqueeze(0))[0]
        better = torch.isfinite(new_lp) & (new_lp > lp)
        if not better.any():
            break
        u = torch.where(better.unsqueeze(-1), u + step, u)
        lp, grad, hess = _grad_and_hessian(log_joint, u)
    return u, hess


def _iwae_polish(
    target: LocalTarget,
    mode: torch.Tensor,
    laplace_tril: torch.Tensor,
    globals_: dict[str, torch.Tensor],
    settings: RefineSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on each datapoint's IWAE bound over N(mode + L0 m, (L0 C)(L0 C)ᵀ), DReG."""
    b, d = mode.shape
    m = torch.zeros_like(mode, requires_grad=True)
    eye = torch.eye(d, dtype=mode.dtype, device=mode.device).expand(b, d, d)
    c_raw = _LOWER_CHOLESKY.inv(eye.clone()).requires_grad_(True)
    opt = torch.optim.Adam([m, c_raw], lr=settings.iwae_lr)
    k = settings.iwae_particles
    for _ in range(settings.iwae_steps):
        opt.zero_grad(set_to_none=True)
        tril = laplace_tril @ _LOWER_CHOLESKY(c_raw)
        loc = mode + (laplace_tril @ m.unsqueeze(-1)).squeeze(-1)
        eps = torch.randn(k, b, d, dtype=mode.dtype, device=mode.device)
        u = loc + (tril @ eps.unsqueeze(-1)).squeeze(-1)
        # DReG: the proposal's density is evaluated with its parameters held fixed, and
        # the surrogate weights each particle's score by its squared normalised weight.
        q_fixed = torch.distributions.MultivariateNormal(loc.detach(), scale_tril=tril.detach())
        lw = target.log_joint(u, globals_) - q_fixed.log_prob(u)
        w2 = torch.softmax(lw.detach(), 0).pow(2)
        loss = -(w2 * lw).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tril = laplace_tril @ _LOWER_CHOLESKY(c_raw)
        loc = mode + (laplace_tril @ m.unsqueeze(-1)).squeeze(-1)
    return loc.detach(), tril.detach()


def fit_refined_proposal(
    target: LocalTarget, settings: RefineSettings | None = None
) -> RefinedProposal:
    """Fit the refined proposal of every datapoint of ``target``'s batch at once."""
    settings = settings or RefineSettings()
    start, scale = target.guide_moments()
    scale = scale.clamp_min(1e-3 * scale.amax().clamp_min(1e-12))
    # Globals (if any) are held at one guide draw while fitting; the particles drawn
    # later each get their own θ_k ~ q(θ), so the estimand is E_q(θ) p(x_n | θ).
    globals_ = target.sample_globals(1)

    def log_joint(u: torch.Tensor) -> torch.Tensor:
        return target.log_joint(u, globals_)

    mode = _find_mode(log_joint, start, scale, settings)
    mode, hess = _newton(log_joint, mode, settings)
    prec = _proper_precision(hess, settings.min_precision)
    laplace_tril = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(prec)))
    if settings.iwae_steps:
        loc, tril = _iwae_polish(target, mode, laplace_tril, globals_, settings)
    else:
        loc, tril = mode, laplace_tril
    return RefinedProposal(loc, tril, mode, laplace_tril)


def refined_log_weights(
    target: LocalTarget,
    proposal: RefinedProposal,
    num_samples: int,
    *,
    defensive: float = 0.1,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Log-weights ``(K, B)`` of K i.i.d. draws from the defensive mixture.

    Each particle comes from the guide with probability α = ``defensive`` and from the
    refined Gaussian otherwise, and is weighted by p(x, z) / r(z) with r the mixture
    density, so the average weight is unbiased for p(x_n) (E_q(θ) p(x_n | θ) with
    global sites).
    """
    chunk = int(chunk_size or num_samples)
    refined = proposal.distribution()
    log_a = math.log1p(-defensive) if defensive > 0 else 0.0
    log_b = math.log(defensive) if defensive > 0 else -math.inf
    out = []
    with torch.no_grad():
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            guide_u, globals_ = target.sample_guide(n)
            from_guide = torch.rand(guide_u.shape[:-1], device=guide_u.device) < defensive
            u = torch.where(from_guide.unsqueeze(-1), guide_u, refined.sample((n,)))
            log_r = refined.log_prob(u) + log_a
            if defensive > 0:
                log_q = target.guide_log_density(u, globals_)
                log_r = torch.logaddexp(log_r, log_q + log_b)
            out.append(target.log_joint(u, globals_) - log_r)
    return torch.cat(out, 0)
