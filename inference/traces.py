"""Pyro traces of a model and guide under a vectorised particle plate.

K particles are drawn at once in a particle plate to the left of the model's plates;
the guide is traced there (optionally with its global sites shared by all particles)
and the model is replayed on the guide's draws. :func:`checked_traces` makes sure the
two programs agree on their latent sites and that the model has a data plate, the
layout :mod:`ppvae.inference.weights` needs to split log-densities per datapoint.

Only the traces are read, so any Pyro model/guide pair whose local sites sit inside
``pyro.plate("data", ...)`` over the leading dimension of x works, not only ppvae's
``VAE``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

__all__ = [
    "PARTICLE_PLATE",
    "SharedGlobals",
    "particle_plate",
    "trace_guide",
    "replay",
    "trace_model_and_guide",
    "checked_traces",
    "global_latent_sites",
]

PARTICLE_PLATE = "_particles"


def _data_frame(site: dict[str, Any], data_plate: str) -> Any:
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            return frame
    return None


def _is_latent(site: dict[str, Any]) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


class SharedGlobals(Messenger):
    """Draw every latent site outside the data plate once, shared by all particles.

    Used around a guide wrapped in a particle plate: a global site (e.g. an ARD
    precision) then takes one value, kept with a particle dimension of size 1, so that
    all K local particles are drawn given the same global value.
    """

    def __init__(self, data_plate: str, max_plate_nesting: int) -> None:
        super().__init__()
        self.data_plate, self.max_plate_nesting = data_plate, max_plate_nesting

    def _pyro_sample(self, msg: Any) -> None:
        if msg["is_observed"] or msg["done"] or site_is_subsample(msg):
            return
        if _data_frame(msg, self.data_plate) is not None:
            return
        fn = msg["fn"]
        # This messenger sits outside the plates, so fn is already expanded over them.
        value = fn.rsample() if fn.has_rsample else fn.sample()
        particle_dim = len(fn.batch_shape) - (self.max_plate_nesting + 1)
        msg["value"] = value.narrow(particle_dim, 0, 1)
        msg["done"] = True


def particle_plate(num_particles: int, max_plate_nesting: int = 1) -> pyro.plate:
    """The vectorised particle plate, left of the model's ``max_plate_nesting`` plates."""
    if int(num_particles) < 1:
        raise ValueError(f"the number of particles must be at least 1, got {num_particles}")
    return pyro.plate(PARTICLE_PLATE, int(num_particles), dim=-(max_plate_nesting + 1))


def trace_guide(
    guide: Callable,
    args: tuple,
    kwargs: dict[str, Any],
    num_particles: int,
    *,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
    share_globals: bool = False,
) -> poutine.Trace:
    """Trace the guide with ``num_particles`` vectorised particles (subsample sites kept).

    With ``share_globals`` the guide's global latent sites are drawn once
    (:class:`SharedGlobals`) instead of once per particle.
    """
    fn = particle_plate(num_particles, max_plate_nesting)(guide)
    if share_globals:
        fn = SharedGlobals(data_plate, max_plate_nesting)(fn)
    return poutine.trace(fn).get_trace(*args, **kwargs)


def replay(
    fn: Callable,
    trace: poutine.Trace,
    args: tuple,
    kwargs: dict[str, Any],
    num_particles: int,
    *,
    max_plate_nesting: int = 1,
) -> poutine.Trace:
    """Trace ``fn`` in the particle plate with its sample sites replayed from ``trace``."""
    fn = particle_plate(num_particles, max_plate_nesting)(fn)
    return poutine.trace(poutine.replay(fn, trace=trace)).get_trace(*args, **kwargs)


def trace_model_and_guide(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict[str, Any],
    num_particles: int,
    *,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
    share_globals: bool = False,
) -> tuple[poutine.Trace, poutine.Trace]:
    """Trace the guide with ``num_particles`` vectorised particles and replay the model.

    Returns the model and guide traces from :func:`checked_traces` (subsample sites
    pruned, sites checked). ``share_globals`` as in :func:`trace_guide`.
    """
    opts = {"max_plate_nesting": max_plate_nesting}
    guide_trace = trace_guide(
        guide,
        args,
        kwargs,
        num_particles,
        data_plate=data_plate,
        share_globals=share_globals,
        **opts,
    )
    model_trace = replay(model, guide_trace, args, kwargs, num_particles, **opts)
    return checked_traces(model_trace, guide_trace, data_plate)


def checked_traces(
    model_trace: poutine.Trace, guide_trace: poutine.Trace, data_plate: str = "data"
) -> tuple[poutine.Trace, poutine.Trace]:
    """Prune subsample sites and check that model and guide draw the same latent sites.

    Raises ``ValueError`` when a latent site of the model is not drawn by the guide (or
    the other way round), when the two disagree on whether a site is local, or when
    the model has no site in a plate named ``data_plate``.
    """
    model_trace = prune_subsample_sites(model_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    model_sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
    if not any(_data_frame(s, data_plate) is not None for s in model_sites):
        raise ValueError(
            f"the model has no sample site inside a plate named {data_plate!r}: the model "
            f"must put its local latent sites and observations in pyro.plate({data_plate!r}, "
            "len(x), dim=-1) over the leading dimension of x (sites found: "
            f"{[s['name'] for s in model_sites]})"
        )
    model_latent = {s["name"]: s for s in model_sites if _is_latent(s)}
    guide_latent = {n: s for n, s in guide_trace.nodes.items() if _is_latent(s)}
    missing = sorted(set(model_latent) - set(guide_latent))
    if missing:
        raise ValueError(
            f"latent site(s) {missing} of the model are not sampled by the guide: the guide "
            "must draw every latent site of the model (the importance weights would "
            "otherwise use the prior as proposal for them without accounting for it)"
        )
    extra = sorted(set(guide_latent) - set(model_latent))
    if extra:
        raise ValueError(
            f"guide site(s) {extra} are not latent sites of the model: every latent site "
            "of the guide must be a latent site of the model with the same name"
        )
    for name, site in model_latent.items():
        in_model = _data_frame(site, data_plate) is not None
        in_guide = _data_frame(guide_latent[name], data_plate) is not None
        if in_model != in_guide:
            where = "inside" if in_model else "outside"
            raise ValueError(
                f"site {name!r} is {where} pyro.plate({data_plate!r}) in the model but not "
                "in the guide: model and guide must draw it in the same plates"
            )
    return model_trace, guide_trace


def global_latent_sites(
    guide: Callable,
    args: tuple,
    kwargs: dict[str, Any],
    *,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
) -> list[str]:
    """The names of the guide's latent sites outside ``pyro.plate(data_plate)``."""
    with poutine.block(), torch.no_grad():
        trace = trace_guide(guide, args, kwargs, 1, max_plate_nesting=max_plate_nesting)
    return [
        name
        for name, site in trace.nodes.items()
        if _is_latent(site)
        and not site_is_subsample(site)
        and _data_frame(site, data_plate) is None
    ]
