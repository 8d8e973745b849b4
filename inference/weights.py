"""From Pyro traces to per-datapoint importance log-weights.

For a model p(x, z) and a guide q(z | x) whose local latent sites sit inside
``pyro.plate("data", ...)`` over the leading dimension of x, the importance log-weight
of particle k for datapoint n is

    log w_nk = log p(x_n, z_nk) − log q(z_nk | x_n).

This module takes the traces of K particles drawn at once in a vectorised particle
plate to the left of the model's plates, with the model replayed on the guide's draws
(:mod:`ppvae.inference.traces`), and splits every site's log-density into a *local*
part (inside the data plate: one term per datapoint) and a *global* part (outside it:
one term per particle). Both the importance-sampled log-likelihood
(:mod:`ppvae.inference.importance`) and the importance-weighted objective
(:mod:`ppvae.inference.iwae`) are built from these pieces.

Only the traces are read, so any Pyro model/guide pair with that plate layout works,
not only ppvae's ``VAE``. Log-densities are taken *unscaled*: a plate that subsamples a
minibatch scales its sites by N/B, which must not leak into per-datapoint weights.

References
----------
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pyro import poutine

from ppvae.inference.traces import _data_frame, trace_model_and_guide
from ppvae.models.programs import local_params_method

# The estimands of log_likelihood when a model has latent sites outside the data plate.
GLOBAL_SITES = ("heldout", "prior_predictive", "error")

__all__ = ["GLOBAL_SITES", "SiteLogProbs", "site_log_probs", "per_datapoint_log_weights"]


def _mask(lp: torch.Tensor, mask: Any) -> torch.Tensor:
    if mask is None or mask is True:
        return lp
    if mask is False:
        return torch.zeros_like(lp)
    return torch.where(mask, lp, lp.new_zeros(()))


@dataclass
class SiteLogProbs:
    """A trace's log-densities split into per-datapoint and per-particle parts.

    Attributes
    ----------
    local
        Sum over the sites inside the data plate, broadcastable to ``(K, B)``
        (particles, data), unscaled; ``None`` when there are no such sites.
    glob
        Sum over the sites outside the data plate, shape ``(K',)`` with ``K'`` = K or 1
        (1 when the sites were shared by all particles); ``None`` when there are none.
    local_sites, global_sites
        The names of the sites in each part (latent and observed).
    local_scales
        The distinct values of the sites' ``scale`` inside the data plate (N/B under a
        subsampling plate, times any ``poutine.scale``).
    """

    local: torch.Tensor | None
    glob: torch.Tensor | None
    local_sites: tuple[str, ...]
    global_sites: tuple[str, ...]
    local_scales: frozenset[float]


def site_log_probs(
    trace: poutine.Trace,
    *,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
    latent_only: bool = False,
    scale_globals: bool = False,
) -> SiteLogProbs:
    """Sum a trace's site log-densities over every dim but the particle and data dims.

    Parameters
    ----------
    trace
        A trace from :func:`trace_model_and_guide` (particle plate at
        ``dim=-(max_plate_nesting + 1)``).
    latent_only
        Skip observed sites (used for the guide, where they are not part of q).
    scale_globals
        Apply the sites' ``scale`` to the global part (the objective does, to match
        Pyro's ELBOs; the log-likelihood does not). Masks are always applied.
    """
    rank = max_plate_nesting + 1

    def keep(name: str, site: dict[str, Any]) -> bool:
        return site["type"] == "sample" and not (latent_only and site["is_observed"])

    trace.compute_log_prob(site_filter=keep)
    local = glob = None
    local_sites: list[str] = []
    global_sites: list[str] = []
    scales: set[float] = set()
    for name, site in trace.nodes.items():
        if not keep(name, site):
            continue
        lp = _mask(site["unscaled_log_prob"], site["mask"])
        if lp.dim() > rank:
            raise ValueError(
                f"site {name!r} has log-density shape {tuple(lp.shape)}, with more batch dims "
                f"than max_plate_nesting + 1 = {rank}: declare event dims with .to_event() "
                "or raise max_plate_nesting"
            )
        lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
        frame = _data_frame(site, data_plate)
        if frame is None:
            if scale_globals:
                lp = lp * site["scale"]
            term = lp.reshape(lp.shape[0], -1).sum(-1)
            glob = term if glob is None else glob + term
            global_sites.append(name)
            continue
        if frame.dim is None or not -max_plate_nesting <= frame.dim < 0:
            raise ValueError(
                f"pyro.plate({data_plate!r}) must be vectorised with a dim in "
                f"-{max_plate_nesting}..-1 (got dim={frame.dim}); pass dim=-1 to the plate "
                "or raise max_plate_nesting"
            )
        others = [d for d in range(-max_plate_nesting, 0) if d != frame.dim]
        if others:
            lp = lp.sum(others, keepdim=True)
        term = lp.reshape(lp.shape[0], -1)
        local = term if local is None else local + term
        local_sites.append(name)
        scales.add(float(site["scale"]))
    return SiteLogProbs(local, glob, tuple(local_sites), tuple(global_sites), frozenset(scales))


def _data_size(trace: poutine.Trace, data_plate: str) -> int:
    for site in trace.nodes.values():
        if site["type"] == "sample":
            frame = _data_frame(site, data_plate)
            if frame is not None:
                return int(frame.size)
    raise AssertionError("unreachable: traces are checked for a data plate")


@local_params_method
def per_datapoint_log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict[str, Any],
    num_particles: int,
    *,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
    global_sites: Literal["heldout", "prior_predictive", "error"] = "heldout",
) -> torch.Tensor:
    """Importance log-weights log p(x_n, z_nk) − log q(z_nk | x_n), shape ``(K, B)``.

    Parameters
    ----------
    model, guide
        Pyro programs called as ``model(*args, **kwargs)``; their local sites must sit in
        ``pyro.plate(data_plate, ..., dim=-1)`` over the leading dimension of the data.
    num_particles
        K, the number of particles drawn at once.
    max_plate_nesting
        The number of plates the model nests; the particle plate goes left of them.
    global_sites
        What is estimated when there are latent sites outside the data plate (global θ,
        e.g. an ARD precision); each particle draws its own θ_k ~ q(θ), shared by the
        datapoints of a batch.

        ``"heldout"`` (default): w_nk = p(x_n, z_nk | θ_k) / q(z_nk | x_n, θ_k), whose
        mean is unbiased for E_q(θ)[p(x_n | θ)], the probability of a new datapoint
        under the trained model with θ integrated over its fitted posterior q(θ) (the
        held-out likelihood, the quantity a test set measures).

        ``"prior_predictive"``: w_nk also carries p(θ_k)/q(θ_k), so its mean is unbiased
        for ∫ p(θ) p(x_n | θ) dθ, the single-datapoint prior predictive. With a q(θ)
        fitted to many datapoints (narrower than the prior) these weights have no finite
        variance and the estimate falls far short; use it with a q(θ) wider than p(θ).

        ``"error"``: raise a ``ValueError`` naming the global sites.

    Returns
    -------
    torch.Tensor
        Shape ``(K, B)``, in the model's dtype, on the data's device.
    """
    if global_sites not in GLOBAL_SITES:
        raise ValueError(f"global_sites must be one of {list(GLOBAL_SITES)}, got {global_sites!r}")
    model_trace, guide_trace = trace_model_and_guide(
        model,
        guide,
        args,
        kwargs,
        num_particles,
        data_plate=data_plate,
        max_plate_nesting=max_plate_nesting,
    )
    opts = {"data_plate": data_plate, "max_plate_nesting": max_plate_nesting}
    p = site_log_probs(model_trace, **opts)
    q = site_log_probs(guide_trace, latent_only=True, **opts)
    if q.global_sites and global_sites == "error":
        raise ValueError(
            f"the guide has latent site(s) {list(q.global_sites)} outside "
            f"pyro.plate({data_plate!r}) (global sites), and global_sites='error'; use "
            "global_sites='heldout' to estimate each p(x_n) with θ integrated over q(θ)"
        )
    shape = (int(num_particles), _data_size(model_trace, data_plate))
    assert p.local is not None  # the model has a site in the data plate (checked)
    lw = p.local.new_zeros(shape)
    for part, sign in ((p, 1.0), (q, -1.0)):
        if part.local is not None:
            lw = lw + sign * part.local
        if part.glob is not None and global_sites == "prior_predictive":
            lw = lw + sign * part.glob.unsqueeze(-1)
    return lw
