"""Importance-sampled log-likelihood log p(x): the guide, refined where it fails, or yours.

For each datapoint x_n, K particles z_nk ~ q(z | x_n) give the estimate

    log p̂(x_n) = log (1/K) Σ_k w_nk,    w_nk = p(x_n, z_nk) / q(z_nk | x_n),

a consistent estimator of log p(x_n) whose expectation is the importance-weighted
bound of Burda et al. (2016), biased low by O(1/K). The particles are drawn in chunks
(vectorised Pyro traces of ``chunk_size`` particles) and the data in batches, so peak
memory depends on ``chunk_size × batch_size`` and not on K; only the small ``(B, K)``
matrix of log-weights of the current batch is kept.

The guide is an amortised approximation, and on many trained VAEs its importance
weights are heavy-tailed (PSIS k-hat above 0.7) for most datapoints: the estimate then
falls short of log p(x) by far more than its Monte Carlo s.e. says. ``proposal="auto"``
(the default) re-estimates those datapoints with a refined proposal of their own
(:mod:`ppvae.inference.refine`; the rule is in :mod:`ppvae.inference.proposals`), and
every standard error is reported only where the diagnostics support it
(:mod:`ppvae.inference.passes`).

Estimands with global latent sites (θ outside the data plate, e.g. an ARD prior's
precisions): by default (``global_sites="heldout"``) each log p̂(x_n) estimates
log E_q(θ)[p(x_n | θ)], the held-out likelihood of a datapoint under the trained model
with θ integrated over its fitted posterior q(θ); ``"prior_predictive"`` estimates the
single-datapoint prior predictive log ∫ p(θ) p(x_n | θ) dθ instead; see
:func:`ppvae.inference.weights.per_datapoint_log_weights`. Each particle's θ_k is
shared by the datapoints of a batch, and the s.e. of the mean accounts for that.

References
----------
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
Owen (2013), "Monte Carlo theory, methods and examples", ch. 9 (importance sampling and
the delta method).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Literal

import torch

from ppvae.inference.diagnostics import psis_diagnostics
from ppvae.inference.estimation import Estimation
from ppvae.inference.passes import summarise_log_weights
from ppvae.inference.proposals import (
    ProposalFn,
    discrete_local_sites,
    needs_refinement,
    refine_proposal,
)
from ppvae.inference.refine import RefineSettings
from ppvae.inference.result import LogLikelihoodResult
from ppvae.inference.rng import seeded
from ppvae.inference.sharding import shard_datapoints
from ppvae.inference.weights import GLOBAL_SITES
from ppvae.models.programs import local_params_method

__all__ = ["log_likelihood", "summarise_log_weights"]

_PROPOSALS = ("auto", "guide", "refine")


def _check_args(
    x: torch.Tensor,
    y: torch.Tensor | None,
    k: int,
    proposal: str | ProposalFn,
    global_sites: str,
    diagnostics: object,
) -> None:
    if k < 1:
        raise ValueError(f"num_samples must be at least 1, got {k}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one datapoint, got shape {tuple(x.shape)}")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} entries but x has {x.shape[0]} datapoints")
    if not callable(proposal) and proposal not in _PROPOSALS:
        raise ValueError(
            f"proposal must be one of {list(_PROPOSALS)} or a callable, got {proposal!r}"
        )
    if global_sites not in GLOBAL_SITES:
        raise ValueError(f"global_sites must be one of {list(GLOBAL_SITES)}, got {global_sites!r}")
    if global_sites == "prior_predictive" and proposal != "guide":
        raise ValueError(
            "global_sites='prior_predictive' is estimated with proposal='guide' only "
            "(refined proposals and AIS hold θ at draws from q(θ))"
        )
    if isinstance(diagnostics, str) and diagnostics != "psis":
        raise ValueError(f"diagnostics must be 'psis', None or a callable, got {diagnostics!r}")


@local_params_method
@shard_datapoints
def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    proposal: Literal["auto", "guide", "refine"] | ProposalFn = "auto",
    refine: RefineSettings | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    y: torch.Tensor | None = None,
    seed: int | None = None,
    return_log_weights: bool = False,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    global_sites: Literal["heldout", "prior_predictive", "error"] = "heldout",
    diagnostics: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    | Literal["psis"]
    | None = "psis",
    pool_share: float = 0.1,
    data_plate: str = "data",
    max_plate_nesting: int | None = None,
) -> LogLikelihoodResult:
    """Estimate log p(x_n) for every datapoint by importance sampling.

    Parameters
    ----------
    model, guide
        Pyro programs called as ``model(x_batch)`` (or ``model(x_batch, y_batch)`` when
        ``y`` is given), with their local sites inside ``pyro.plate("data", ...,
        dim=-1)`` over the leading dimension of x. If ``model`` is a bound method of an
        object with ``check_data(x, y)`` (ppvae's ``VAE``), that is called once first.
    x, y
        Data ``(N, ...)`` and optional labels ``(N,)``.
    num_samples
        K, particles per datapoint.
    proposal
        ``"auto"`` (default): estimate with the guide, then re-estimate with ``"refine"``
        the datapoints whose k-hat exceeds 0.5, and all of them when more than
        ``pool_share`` do (:func:`ppvae.inference.proposals.needs_refinement`).
        ``"guide"``: the guide only. ``"refine"``: every datapoint with a refined
        proposal (:mod:`ppvae.inference.refine`; needs continuous local latents).
        Models with discrete local latents (a VQ-VAE's codes) are estimated with the
        guide: ``"auto"`` then refines nothing and marks the datapoints it would have
        refined in ``extras["unrefined_discrete"]``; ``"refine"`` raises ``ValueError``.
        A callable ``proposal(target, num_samples, chunk_size)`` gets a
        :class:`~ppvae.inference.local_target.LocalTarget` per batch and returns
        ``(K, B)`` log-weights (or those and a dict of ``(B,)`` extras).
    refine
        Settings of the refined proposal (:class:`~ppvae.inference.refine.RefineSettings`).
    batch_size
        Datapoints per batch; by default a block of chunk_size × batch_size × datapoint
        size of about 2**22 floats on CPU (2**24 elsewhere).
    chunk_size
        Particles drawn at once (default at least min(256, K), more when a batch holds few
        datapoints, up to the same block size); memory grows with it, not with K.
    seed
        Makes the estimate reproducible. The draws then come from their own seeded
        stream (:func:`ppvae.inference.rng.seeded`), so the caller's random stream is left
        untouched; without a seed the global stream is used (and advanced). Results depend on
        ``chunk_size`` and ``batch_size`` through the order of the draws.
    return_log_weights
        Keep the ``(N, K)`` log-weights in the result (of the proposal each datapoint's
        estimate came from).
    progress
        Show a progress bar over batches (default: when stderr is a terminal).
    device
        Move x (and y) there; the model and guide must already be on it.
    global_sites
        The estimand when there are latent sites outside the data plate: ``"heldout"``
        (default), ``"prior_predictive"`` (guide proposal only) or ``"error"``; see the
        module docstring.
    diagnostics
        ``"psis"`` (default): Pareto-smoothed importance sampling diagnostics from
        :func:`ppvae.inference.diagnostics.psis_diagnostics` fill ``khat``, ``ess`` and
        ``reliable`` (skipped when K < 2). ``None`` turns them off, and with them the
        escalation of ``"auto"`` and the check of the standard errors. A callable is
        called with each batch's ``(B, K)`` log-weights and returns per-datapoint ``(B,)``
        tensors (``khat``, ``ess``, ``reliable`` into those fields, others into
        ``extras``), so that diagnostics need not keep all N × K weights.
    distributed
        (Keyword of :func:`~ppvae.inference.sharding.shard_datapoints`.) ``None``
        (default): under ``torchrun`` (or an initialised process group), each rank
        estimates its shard of the datapoints and every rank gets the whole result in
        the original order; ``False``: this process estimates all of them.

    max_plate_nesting
        Plates the model nests (the particle plate goes left of them); by default the
        model's owner's ``max_plate_nesting`` attribute (2 for a VQ-VAE), else 1.

    Returns
    -------
    LogLikelihoodResult
        With ``proposal`` per datapoint, ``guide_only`` (the guide's estimate, when
        another proposal re-estimated some datapoints), and standard errors only where
        the k-hat supports them (:func:`ppvae.inference.passes.honest_stderr`).
    """
    k = int(num_samples)
    _check_args(x, y, k, proposal, global_sites, diagnostics)
    if device is not None:
        x = x.to(device)
        y = None if y is None else y.to(device)
    owner = getattr(model, "__self__", None)
    if max_plate_nesting is None:
        max_plate_nesting = int(getattr(owner, "max_plate_nesting", 1))
    check = getattr(owner, "check_data", None)
    if callable(check):
        check(x, y)
    if diagnostics == "psis":
        diagnostics = psis_diagnostics if k >= 2 else None
    with seeded(seed):
        # Inside the seeded block: building the context traces the guide once.
        context = Estimation(
            model,
            guide,
            x,
            y,
            k,
            batch_size,
            chunk_size,
            diagnostics,
            return_log_weights,
            sys.stderr.isatty() if progress is None else progress,
            global_sites,
            data_plate,
            max_plate_nesting,
        )
        if callable(proposal):
            return context.result({"custom": context.proposal_pass(proposal, None)}, seed)
        guide_pass = context.guide_pass()
        if proposal == "guide" or diagnostics is None and proposal == "auto":
            return context.result({"guide": guide_pass}, seed)
        guide_only = context.result({"guide": guide_pass}, seed)
        mask = torch.ones(len(x), dtype=torch.bool)
        if proposal == "auto":
            khat = guide_only.khat
            mask = needs_refinement(khat, pool_share) if khat is not None else ~mask
        if not mask.any():
            return guide_only
        discrete = discrete_local_sites(guide, x[:1], None if y is None else y[:1], data_plate)
        if discrete:
            if proposal == "refine":
                raise ValueError(
                    f"proposal='refine' needs continuous local latents, but {discrete} "
                    "are discrete: use proposal='guide' (or ppvae.exact_log_likelihood)"
                )
            # Refined proposals are Gaussian: the guide's estimate stands, and the
            # datapoints whose k-hat asked for more are marked.
            guide_only.extras["unrefined_discrete"] = mask
            return guide_only
        refined = context.proposal_pass(refine_proposal(refine), mask.nonzero().squeeze(-1))
        res = context.result({"guide": guide_pass, "refine": refined}, seed)
        res.guide_only = guide_only
        return res
