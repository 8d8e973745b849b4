"""Decomposition of the inference gap into approximation and amortisation gaps.

For a datapoint x, the gap between log p(x) and the ELBO of an amortised guide
q_φ(z | x) splits into two non-negative parts (Cremer, Li & Duvenaud, 2018):

    log p(x) − ELBO(q_φ)  =  [log p(x) − ELBO(q*)]  +  [ELBO(q*) − ELBO(q_φ)]
                             approximation gap         amortisation gap

where q* is the best member of the guide's family *for that datapoint alone*.
:func:`amortization_gap` finds q* by stochastic optimisation of the ELBO over free
per-datapoint parameters, started from the amortised guide's output, with the model held
fixed. The family searched must contain the amortised guide's distributions, or q* can be
worse than the guide and the amortisation gap negative: a diagonal Gaussian (loc and
log-scale) for a guide whose site is a diagonal Normal, a full-rank Gaussian (loc and a
Cholesky factor) for any other guide (full-rank, low-rank, flows). For a flow the
full-rank family is the best Gaussian, not the guide's family, so the gap measured is
that of the best Gaussian and can still come out negative when the flow beats every
Gaussian. log p(x) is the importance-sampling estimate of
:func:`ppvae.inference.importance.log_likelihood` with many particles: for each
datapoint, the one of the two proposals (amortised or optimised) whose estimate has the
smaller Monte Carlo standard error (an estimate k-hat rejects has none and loses).

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
from typing import Any

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
from ppvae.models.programs import local_params_method

__all__ = ["AmortizationGap", "amortization_gap", "local_guide", "FAMILIES"]


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
        The optimised per-datapoint Gaussian's mean and marginal standard deviations,
        shape ``(N, *latent_shape)``.
    scale_tril
        Its Cholesky factors, shape ``(N, L, L)``, for the full-rank family; ``None``
        for the diagonal one.
    family
        The family q* was sought in: ``"diagonal"`` or ``"fullrank"``.
    """

    table: pd.DataFrame
    loc: torch.Tensor
    scale: torch.Tensor
    scale_tril: torch.Tensor | None = None
    family: str = "diagonal"

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


FAMILIES = ("auto", "diagonal", "fullrank")


def local_guide(
    loc: torch.Tensor,
    scale: torch.Tensor | None = None,
    site: str = "z",
    *,
    scale_tril: torch.Tensor | None = None,
    data: torch.Tensor | None = None,
) -> Callable:
    """A Pyro guide with its own Gaussian for each datapoint i.

    N(loc_i, diag(scale_i²)) with ``scale``, or N(loc_i, L_i L_iᵀ) with ``scale_tril``
    (shape ``(N, L, L)``). Without ``data`` the guide must be called on all N datapoints
    at once. With ``data`` (the N datapoints the parameters belong to) it serves any
    batch of them, matching rows by value: estimators call a guide on batches and on a
    first datapoint to read its sites.
    """
    if (scale is None) == (scale_tril is None):
        raise ValueError("pass exactly one of scale and scale_tril")
    rows = None if data is None else {_row_key(r): i for i, r in enumerate(data)}
    event_dims = loc.dim() - 1

    def guide(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        idx = _rows(x, data, rows)
        with pyro.plate("data", x.shape[0], dim=-1):
            if scale_tril is not None:
                q = dist.MultivariateNormal(loc[idx], scale_tril=scale_tril[idx])
            else:
                q = dist.Normal(loc[idx], scale[idx]).to_event(event_dims)
            return pyro.sample(site, q)

    return guide


def _row_key(row: torch.Tensor) -> bytes:
    return row.detach().cpu().contiguous().numpy().tobytes()


def _rows(x: torch.Tensor, data: torch.Tensor | None, rows: dict | None) -> Any:
    """Indices of the rows of ``x`` among ``data`` (all of them when x is data)."""
    if data is None or (x.shape == data.shape and torch.equal(x, data)):
        return slice(None)
    try:
        return torch.tensor([rows[_row_key(r)] for r in x.to(data.dtype)], device=data.device)
    except KeyError:
        raise ValueError("the local guide was called on a datapoint it was not fitted to") from None


def _owner(guide: Callable) -> object | None:
    return guide if isinstance(guide, nn.Module) else getattr(guide, "__self__", None)


def _site_fn(guide: Callable, args: tuple, site: str) -> dist.Distribution:
    return poutine.trace(guide).get_trace(*args).nodes[site]["fn"]


def _is_diagonal_normal(fn: dist.Distribution) -> bool:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, torch.distributions.Normal)


@torch.no_grad()
def _initial(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None, site: str, family: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The amortised guide's mean and marginal scale (diagonal) or Cholesky factor."""
    owner = _owner(guide)
    args = (x,) if y is None else (x, y)
    if family == "diagonal" and hasattr(owner, "encode"):
        return owner.encode(x) if y is None else owner.encode(x, y)
    fn = _site_fn(guide, args, site)
    if family == "fullrank" and len(fn.event_shape) != 1:
        raise ValueError(
            f"the full-rank family needs a vector latent site, {site!r} has event shape "
            f"{tuple(fn.event_shape)}: pass family='diagonal'"
        )
    try:
        loc, var = fn.mean, fn.variance
    except NotImplementedError:
        draws = fn.sample((1024,))
        loc, var = draws.mean(0), draws.var(0)
        if family == "fullrank":
            centred = (draws - loc).movedim(0, -1)
            cov = centred @ centred.transpose(-1, -2) / (draws.shape[0] - 1)
            return loc, torch.linalg.cholesky(cov)
    if family == "diagonal":
        return loc, var.sqrt()
    tril = getattr(fn, "scale_tril", None)
    if tril is None:
        tril = torch.diag_embed(var.sqrt())
    return loc, tril.expand(*loc.shape, loc.shape[-1])


def _family(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None, site: str, family: str
) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if family != "auto":
        return family
    with torch.no_grad():
        fn = _site_fn(guide, (x,) if y is None else (x, y), site)
    return "diagonal" if _is_diagonal_normal(fn) else "fullrank"


def _free_parameters(
    loc0: torch.Tensor, spread0: torch.Tensor, family: str
) -> tuple[list[torch.Tensor], Callable[[], dict[str, torch.Tensor]]]:
    """Unconstrained leaf tensors and the guide's spread as a function of them."""
    loc = loc0.detach().clone().requires_grad_(True)
    if family == "diagonal":
        log_scale = spread0.detach().log().clone().requires_grad_(True)
        return [loc, log_scale], lambda: {"scale": log_scale.exp()}
    # Strictly lower part free, diagonal through exp: any lower-Cholesky factor.
    lower = spread0.detach().clone().requires_grad_(True)
    log_diag = spread0.detach().diagonal(dim1=-2, dim2=-1).log().clone().requires_grad_(True)

    def spread() -> dict[str, torch.Tensor]:
        return {"scale_tril": torch.tril(lower, -1) + torch.diag_embed(log_diag.exp())}

    return [loc, lower, log_diag], spread


def _more_trusted(a: Any, b: Any) -> torch.Tensor:
    """Per datapoint: is a's estimate of log p(x) the better supported of the two?

    The smaller Monte Carlo s.e. wins; a NaN s.e. (k-hat rejects the estimate) loses to
    any number, and between two NaNs the lower k-hat wins.
    """
    se_a = a.mc_stderr_per_datapoint.nan_to_num(nan=math.inf)
    se_b = b.mc_stderr_per_datapoint.nan_to_num(nan=math.inf)
    tie = se_a == se_b
    if a.khat is not None and b.khat is not None:
        tie = tie & (a.khat.nan_to_num(nan=math.inf) <= b.khat.nan_to_num(nan=math.inf))
    return (se_a < se_b) | tie


def _mean_stderr(log_weights: torch.Tensor) -> torch.Tensor:
    """Monte Carlo standard error of the ELBO estimate mean_k log w_k, per datapoint."""
    return log_weights.std(-1) / math.sqrt(log_weights.shape[-1])


@local_params_method
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
    family: str = "auto",
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
    site
        The latent site.
    family
        The family q* is sought in: ``"diagonal"`` (free loc and log-scale),
        ``"fullrank"`` (free loc and Cholesky factor; a vector latent site), or
        ``"auto"`` (default): diagonal when the guide's site is a diagonal Normal,
        full-rank otherwise, so that the family contains the amortised guide's.

    Returns
    -------
    AmortizationGap
    """
    if isinstance(guide, nn.Module) and callable(getattr(guide, "guide", None)):
        guide = guide.guide
    args = (x,) if y is None else (x, y)
    family = _family(guide, x, y, site, family)
    params, spread = _free_parameters(*_initial(guide, x, y, site, family), family)
    loc = params[0]
    trace_model_and_guide(model, local_guide(loc, site=site, **spread()), args, {}, 1)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    optim = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(1, steps)))
    )
    with seeded(seed):
        for _ in range(steps):
            loss = elbo.differentiable_loss(model, local_guide(loc, site=site, **spread()), *args)
            # Gradients with respect to the local parameters only: the model's parameters
            # are neither updated nor given .grad.
            for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                p.grad = g
            optim.step()
            sched.step()
    with torch.no_grad():
        loc, fitted = loc.detach(), {k: v.detach() for k, v in spread().items()}
    tril = fitted.get("scale_tril")
    scale = fitted["scale"] if tril is None else tril.square().sum(-1).sqrt()
    optimized_guide = local_guide(loc, site=site, data=x, **fitted)
    # Each guide's own draws: the ELBOs are those of the two guides, not of a refinement.
    opts = {"num_samples": num_samples, "y": y, "return_log_weights": True, "proposal": "guide"}
    amortized = log_likelihood(model, guide, x, seed=seed, **opts)
    optimized = log_likelihood(model, optimized_guide, x, seed=seed + 1, **opts)
    use_opt = _more_trusted(optimized, amortized)
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
    return AmortizationGap(table=table, loc=loc, scale=scale, scale_tril=tril, family=family)
