"""The per-datapoint posterior target log p(x_n, z_n | θ) over flat unconstrained latents.

Refined proposals (:mod:`ppvae.inference.refine`) and annealed importance sampling
(:mod:`ppvae.inference.ais`) move each datapoint's local latents freely, so they need
the model's log-joint as a function of the latent values rather than of the guide's
draws. :class:`LocalTarget` reads the latent layout from one trace of the guide and
then, for a tensor ``u`` of shape ``(S, B, D)`` (S particles or chains, B datapoints,
D the total size of all local latent sites, mapped to unconstrained space with
``torch.distributions.biject_to``), returns

    log p(x_n, T(u_sn) | θ_s) + log |det J_T(u_sn)|,    shape (S, B),

by conditioning the model on those values inside a vectorised particle plate and
reading the trace. Latent sites outside the data plate (global θ) are held at given
values and their own prior density is left out: the estimand is then
log E_q(θ) p(x_n | θ), the held-out quantity (see :mod:`ppvae.inference.importance`).

Only traces are read, so any model/guide pair whose local latent sites have shape
``(N, ...)`` inside ``pyro.plate("data", N, dim=-1)`` works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import IndependentTransform, identity_transform

from ppvae.inference.traces import (
    _data_frame,
    checked_traces,
    particle_plate,
    replay,
    trace_guide,
)
from ppvae.inference.weights import _mask, site_log_probs

__all__ = ["LatentSite", "LocalTarget"]

# Draws used to estimate a guide's moments when its distribution has no closed form.
_MOMENT_DRAWS = 256


@dataclass(frozen=True)
class LatentSite:
    """One local latent site: its name, per-datapoint shape and unconstraining map."""

    name: str
    shape: tuple[int, ...]
    transform: Any

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def identity(self) -> bool:
        """Whether the unconstraining map is the identity (real support): no Jacobian."""
        t = self.transform
        while isinstance(t, IndependentTransform):
            t = t.base_transform
        return t == identity_transform


def _is_real(c: Any) -> bool:
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c is constraints.real


def _latent(site: dict[str, Any]) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


class LocalTarget:
    """log p(x_n, z_n | θ) of a model as a function of flat unconstrained local latents.

    Parameters
    ----------
    model, guide
        Pyro programs called as ``model(*args, **kwargs)``.
    args, kwargs
        The batch they are called on; the data plate's size B is the batch size.
    data_plate, max_plate_nesting
        As in :func:`ppvae.inference.importance.log_likelihood`.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict[str, Any] | None = None,
        *,
        data_plate: str = "data",
        max_plate_nesting: int = 1,
    ) -> None:
        self.model, self.guide = model, guide
        self.args, self.kwargs = args, dict(kwargs or {})
        self.data_plate, self.max_plate_nesting = data_plate, max_plate_nesting
        opts = {"max_plate_nesting": max_plate_nesting}
        with torch.no_grad():
            guide_trace = trace_guide(
                guide, args, self.kwargs, 1, data_plate=data_plate, share_globals=True, **opts
            )
            model_trace = replay(model, guide_trace, args, self.kwargs, 1, **opts)
        model_trace, guide_trace = checked_traces(model_trace, guide_trace, data_plate)
        self.sites: list[LatentSite] = []
        self.global_sites: list[str] = []
        self.batch_size = self._layout(guide_trace)
        first = guide_trace.nodes[self.sites[0].name]["value"]
        self.dtype, self.device = first.dtype, first.device
        self.dim = sum(s.numel for s in self.sites)
        # AIS and refinement call log_joint thousands of times: plates are built once,
        # and Pyro's validation runs on the first call only (as in fit).
        self._plates: dict[int, Any] = {}
        self._validated = False

    def _layout(self, guide_trace: poutine.Trace) -> int:
        batch = None
        for name, site in guide_trace.nodes.items():
            if not _latent(site):
                continue
            if _data_frame(site, self.data_plate) is None:
                self.global_sites.append(name)
                continue
            frame = _data_frame(site, self.data_plate)
            value = site["value"]
            lead = self.max_plate_nesting + 1 + frame.dim
            if frame.dim != -self.max_plate_nesting or value.dim() < 2 or lead != 1:
                raise ValueError(
                    f"local latent site {name!r} must have shape (N, ...) with "
                    f"pyro.plate({self.data_plate!r}, N) as its outermost plate for refined "
                    "proposals and AIS"
                )
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"local latent site {name!r} is discrete: refined proposals and AIS need "
                    "continuous local latents (enumerate discrete ones, or use proposal='guide')"
                )
            batch = int(value.shape[1]) if batch is None else batch
            transform = biject_to(site["fn"].support)
            self.sites.append(LatentSite(name, tuple(value.shape[2:]), transform))
        if not self.sites:
            raise ValueError("the guide draws no latent site inside the data plate")
        assert batch is not None
        return batch

    # --- between flat unconstrained vectors and site values --------------------------

    def unflatten(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Site values ``{name: (S, B, *shape)}`` and log |det J| ``(S, B)`` of ``u``."""
        values: dict[str, torch.Tensor] = {}
        logdet = u.new_zeros(u.shape[:-1])
        start = 0
        for site in self.sites:
            piece = u[..., start : start + site.numel].reshape(*u.shape[:-1], *site.shape)
            start += site.numel
            if site.identity:  # log |det J| = 0: skip the transform and its zeros
                values[site.name] = piece
                continue
            z = site.transform(piece)
            ladj = site.transform.log_abs_det_jacobian(piece, z)
            # A transform's Jacobian may be per element or already summed over the event.
            logdet = logdet + ladj.reshape(*u.shape[:-1], -1).sum(-1)
            values[site.name] = z
        return values, logdet

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unconstrained flat vector ``(S, B, D)`` of site values ``(S, B, *shape)``."""
        parts = []
        for site in self.sites:
            v = site.transform.inv(values[site.name])
            parts.append(v.reshape(*v.shape[:2], site.numel))
        return torch.cat(parts, -1)

    # --- densities ---------------------------------------------------------------------

    def _trace(self, fn: Callable, values: dict[str, torch.Tensor], num: int) -> poutine.Trace:
        plate = self._plates.get(num)
        if plate is None:
            plate = self._plates[num] = particle_plate(num, self.max_plate_nesting)
        conditioned = poutine.condition(fn, data=values)
        return prune_subsample_sites(
            poutine.trace(plate(conditioned)).get_trace(*self.args, **self.kwargs)
        )

    def _local_log_density(self, trace: poutine.Trace) -> torch.Tensor:
        """``site_log_probs(trace).local`` without the checks that the first call ran.

        The same terms in the same order, without ``compute_log_prob``'s scaled copies."""
        nesting = self.max_plate_nesting
        total = None
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            frame = _data_frame(site, self.data_plate)
            if frame is None:
                continue
            lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            lp = _mask(lp, site["mask"])
            lp = lp.reshape((1,) * (nesting + 1 - lp.dim()) + tuple(lp.shape))
            others = [d for d in range(-nesting, 0) if d != frame.dim]
            if others:
                lp = lp.sum(others, keepdim=True)
            lp = lp.reshape(lp.shape[0], -1)
            total = lp if total is None else total + lp
        assert total is not None
        return total

    def log_joint(
        self, u: torch.Tensor, globals_: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """log p(x_n, T(u) | θ) + log |det J_T(u)|, shape ``(S, B)``.

        ``globals_`` holds the values of the global sites with a leading particle
        dimension of size S or 1; their prior density is not included.
        """
        values, logdet = self.unflatten(u)
        values.update(globals_ or {})
        if not self._validated:
            trace = self._trace(self.model, values, u.shape[0])
            lp = site_log_probs(
                trace, data_plate=self.data_plate, max_plate_nesting=self.max_plate_nesting
            )
            assert lp.local is not None
            self._validated = True
            return lp.local + logdet
        with pyro.validation_enabled(False):
            trace = self._trace(self.model, values, u.shape[0])
            return self._local_log_density(trace) + logdet

    def guide_log_density(
        self, u: torch.Tensor, globals_: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The guide's density of ``u`` in unconstrained space, log q(T(u) | x, θ) + log|J|."""
        values, logdet = self.unflatten(u)
        values.update(globals_ or {})
        trace = self._trace(self.guide, values, u.shape[0])
        total = logdet
        for site in self.sites:
            node = trace.nodes[site.name]
            lp = node["fn"].log_prob(node["value"])
            total = total + lp.reshape(*lp.shape[:2], -1).sum(-1)
        return total

    # --- draws from the guide ----------------------------------------------------------

    def sample_guide(self, num: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``num`` guide draws: flat unconstrained locals ``(num, B, D)`` and globals."""
        with torch.no_grad():
            trace = trace_guide(
                self.guide,
                self.args,
                self.kwargs,
                num,
                data_plate=self.data_plate,
                max_plate_nesting=self.max_plate_nesting,
            )
        values = {s.name: trace.nodes[s.name]["value"] for s in self.sites}
        globals_ = {n: trace.nodes[n]["value"] for n in self.global_sites}
        return self.flatten(values).detach(), {k: v.detach() for k, v in globals_.items()}

    def sample_globals(self, num: int) -> dict[str, torch.Tensor]:
        """``num`` draws of the global sites from the guide (empty without globals)."""
        if not self.global_sites:
            return {}
        return self.sample_guide(num)[1]

    def guide_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``(B, D)`` of the guide in unconstrained space.

        Closed form where every local site is a real-valued distribution with a
        ``mean`` and ``variance``; otherwise estimated from draws.
        """
        with torch.no_grad():
            trace = trace_guide(
                self.guide,
                self.args,
                self.kwargs,
                1,
                data_plate=self.data_plate,
                max_plate_nesting=self.max_plate_nesting,
                share_globals=True,
            )
            means, stds = [], []
            try:
                for site in self.sites:
                    fn = trace.nodes[site.name]["fn"]
                    if not _is_real(fn.support):
                        raise NotImplementedError
                    mean, var = fn.mean, fn.variance
                    b = mean.shape[1]
                    means.append(mean.expand(1, b, *site.shape).reshape(b, site.numel))
                    stds.append(var.sqrt().expand(1, b, *site.shape).reshape(b, site.numel))
                mean, std = torch.cat(means, -1), torch.cat(stds, -1)
                if torch.isfinite(mean).all() and torch.isfinite(std).all():
                    return mean, std
            except NotImplementedError:
                pass
            draws, _ = self.sample_guide(_MOMENT_DRAWS)
            return draws.mean(0), draws.std(0)
