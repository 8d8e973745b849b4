"""Which proposal estimates each datapoint: the guide, the refined proposal, or the user's.

:func:`ppvae.inference.importance.log_likelihood` first estimates every datapoint with
the guide. With ``proposal="auto"`` it then re-estimates, with the refined proposal of
:mod:`ppvae.inference.refine`, the datapoints whose guide weights do not have a finite
variance by the PSIS diagnostic. Per-datapoint k-hat is noisy, and it is low precisely
when the K draws missed the heavy tail, so a datapoint that looks fine next to many
that do not is not trusted either: when more than ``pool_share`` of the datapoints have
k-hat above 0.5, an amortised guide is taken to be unreliable on all of them and every
datapoint is refined (measured on probabilistic PCA, where the rule keeps the coverage
of ±2 s.e. intervals at 95 % for guides with true k from 0.36 to 0.91; see tests).

A proposal callable receives a :class:`~ppvae.inference.local_target.LocalTarget` for a
batch of datapoints and the number of particles, and returns importance log-weights of
shape ``(K, B)`` (log p(x_n, z_k) − log r(z_k | x_n) with its own r), or those and a dict
of per-datapoint ``(B,)`` extras to keep in the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

from ppvae.inference.local_target import LocalTarget
from ppvae.inference.passes import FINITE_VARIANCE_KHAT
from ppvae.inference.refine import RefineSettings, fit_refined_proposal, refined_log_weights
from ppvae.inference.traces import _data_frame

__all__ = [
    "ProposalFn",
    "refine_proposal",
    "needs_refinement",
    "call_proposal",
    "discrete_local_sites",
]

ProposalFn = Callable[..., Any]


def refine_proposal(settings: RefineSettings | None = None) -> ProposalFn:
    """The refined proposal as a proposal callable, with guide-fit diagnostics as extras.

    The extras say what was wrong with the guide on each datapoint: ``guide_offset``, the
    distance of the guide's mean from the mode in posterior standard deviations
    (Mahalanobis, under the Laplace covariance), and ``guide_scale_ratio``, the median
    over latent dimensions of the guide's standard deviation over the posterior's
    conditional standard deviation (1/sqrt of the precision's diagonal).
    """
    settings = settings or RefineSettings()

    def proposal(
        target: LocalTarget, num_samples: int, chunk_size: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fitted = fit_refined_proposal(target, settings)
        lw = refined_log_weights(
            target, fitted, num_samples, defensive=settings.defensive, chunk_size=chunk_size
        )
        mean, std = target.guide_moments()
        offset = torch.linalg.solve_triangular(
            fitted.laplace_scale_tril, (mean - fitted.mode).unsqueeze(-1), upper=False
        ).squeeze(-1)
        prec = torch.cholesky_inverse(fitted.laplace_scale_tril)
        conditional_sd = prec.diagonal(dim1=-2, dim2=-1).rsqrt()
        extras = {
            "guide_offset": offset.norm(dim=-1),
            "guide_scale_ratio": (std / conditional_sd).median(-1).values,
        }
        return lw, extras

    proposal.__name__ = "refine"
    return proposal


def needs_refinement(khat: torch.Tensor, pool_share: float = 0.1) -> torch.Tensor:
    """The datapoints ``proposal="auto"`` re-estimates, as a boolean mask.

    Those with k-hat above 0.5 (or NaN), and all of them when more than ``pool_share``
    are, since a low k-hat next to many high ones more likely means a missed tail than
    a good guide.
    """
    bad = ~(khat <= FINITE_VARIANCE_KHAT)
    if bad.float().mean() > pool_share:
        return torch.ones_like(bad)
    return bad


def call_proposal(
    proposal: ProposalFn, target: LocalTarget, num_samples: int, chunk_size: int | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Call a proposal and check its output: ``(K, B)`` log-weights and ``(B,)`` extras."""
    out = proposal(target, num_samples, chunk_size)
    lw, extras = out if isinstance(out, tuple) else (out, {})
    expected = (num_samples, target.batch_size)
    if not isinstance(lw, torch.Tensor) or tuple(lw.shape) != expected:
        shape = tuple(lw.shape) if isinstance(lw, torch.Tensor) else type(lw).__name__
        raise ValueError(
            f"the proposal returned log-weights of shape {shape}; expected (num_samples, "
            f"batch) = {expected}"
        )
    return lw.detach(), {k: torch.as_tensor(v).detach() for k, v in extras.items()}


def discrete_local_sites(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None, data_plate: str = "data"
) -> list[str]:
    """The guide's latent sites inside ``pyro.plate(data_plate)`` with discrete support.

    Refined proposals are Gaussian in an unconstrained space, so they cannot propose these;
    :func:`ppvae.inference.importance.log_likelihood` keeps the guide's estimate for them.
    """
    args = (x,) if y is None else (x, y)
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(guide).get_trace(*args)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and _data_frame(site, data_plate) is not None
        and site["fn"].support.is_discrete
    ]
