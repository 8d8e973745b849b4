"""The pieces of :class:`~ppvae.inference.iwae.IWAE_ELBO`: one outer particle's terms, and
the ``(model, guide)`` module its ``__call__`` returns.

References
----------
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.infer.elbo import ELBO, ELBOModule
from pyro.poutine.util import site_is_subsample
from torch import nn

__all__ = ["IWAETerms", "IWAEModule", "local_latents"]


@dataclass
class IWAETerms:
    """The pieces of one outer particle of the bound.

    Attributes
    ----------
    model_local, guide_local
        log p(x_n, z_nk | θ) and log q(z_nk | x_n, θ) (unscaled), shape ``(K, B)``.
    global_term
        log p(θ) − log q(θ) (0-dim tensor; sites' scales applied).
    scale
        The data plate's scale s (N/B under subsampling).
    model_trace, guide_trace
        The traces the terms were read from (the guide's global sites have a particle
        dimension of size 1: one draw shared by the particles).
    """

    model_local: torch.Tensor
    guide_local: torch.Tensor
    global_term: torch.Tensor
    scale: float
    model_trace: poutine.Trace
    guide_trace: poutine.Trace

    @property
    def log_weights(self) -> torch.Tensor:
        """Per-datapoint log-weights given θ, shape ``(K, B)``."""
        return self.model_local - self.guide_local

    def bound(self) -> torch.Tensor:
        """log p(θ)/q(θ) + Σ_n s · [logsumexp_k log w_nk − log K]."""
        lw = self.log_weights
        per_datapoint = torch.logsumexp(lw, dim=0) - math.log(lw.shape[0])
        return self.global_term + self.scale * per_datapoint.sum()


def _owner(fn: Callable) -> nn.Module | None:
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class IWAEModule(ELBOModule):
    """A (model, guide) pair fixed to an objective: Pyro's ``ELBOModule``, with parameters.

    ``forward(*args, **kwargs)`` returns the differentiable loss, as in Pyro. Its
    ``parameters()`` are in addition those of the modules owning the model and the guide
    (the objects of bound methods such as ``vae.model``, or the callables themselves when
    they are modules), so that ``torch.optim.Adam(elbo(vae.model, vae.guide).parameters())``
    trains the VAE; Pyro's own ``ELBOModule`` lists no parameters for bound methods.
    """

    def __init__(self, model: Callable, guide: Callable, elbo: ELBO) -> None:
        super().__init__(model, guide, elbo)
        owners: list[nn.Module] = []
        for fn in (model, guide):
            owner = _owner(fn)
            if owner is not None and all(owner is not o for o in owners):
                owners.append(owner)
        self.owners = nn.ModuleList(owners)


def local_latents(trace: poutine.Trace, data_plate: str) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and any(f.name == data_plate for f in site["cond_indep_stack"])
    }
