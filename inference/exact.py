"""Exact log p(x) of models whose latent sites are all discrete, by enumeration.

For a model whose local latent sites are discrete with a finite support (the codes of a
VQ-VAE), log p(x_n) = log Σ_k p(x_n, k) is a finite sum over every joint configuration of
the latent variables of one datapoint. :func:`exact_log_likelihood` enumerates those
configurations in vectorised chunks: a chunk of C configurations is laid out along the
particle plate (:func:`ppvae.inference.traces.particle_plate`), the model is traced with
its latent sites conditioned on them, and the per-datapoint log-densities
(:func:`ppvae.inference.weights.site_log_probs`) are accumulated with a running
log-sum-exp. The count of configurations is Π_sites (support size)^(variables per
datapoint) (K^G for a VQ-VAE with K codes and G grid positions); when it exceeds
``max_configurations`` the function refuses with that number.

Pyro's own enumeration (``TraceEnum_ELBO`` with ``infer={"enumerate": "parallel"}``) sums
each variable along a dimension of its own, which is exact for a single code site per
datapoint (and the tests check the two agree there); a decoder that couples the positions
of a plate needs the joint configurations enumerated here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppvae.inference.result import LogLikelihoodResult
from ppvae.inference.traces import _data_frame, particle_plate
from ppvae.inference.weights import site_log_probs

__all__ = ["exact_log_likelihood", "count_configurations", "bits_per_dim"]

# Floats per chunk (configurations × data × datapoint size) enumerated at once.
_BLOCK = 2**22


def _nesting(model: Callable, max_plate_nesting: int | None) -> int:
    if max_plate_nesting is not None:
        return int(max_plate_nesting)
    return int(getattr(getattr(model, "__self__", None), "max_plate_nesting", 1))


def _latent_layout(
    model: Callable, args: tuple, data_plate: str, nesting: int
) -> list[tuple[str, torch.Tensor, tuple[int, ...], int]]:
    """``(name, support values, per-datapoint shape, data dim)`` of each latent site."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(particle_plate(1, nesting)(model)).get_trace(*args)
    layout = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        fn, frame = site["fn"], _data_frame(site, data_plate)
        if frame is None:
            raise ValueError(
                f"latent site {name!r} is outside pyro.plate({data_plate!r}): exact "
                "enumeration handles local discrete latents only"
            )
        if not fn.has_enumerate_support or fn.event_shape != ():
            raise ValueError(
                f"latent site {name!r} ({type(fn).__name__}) is not a discrete scalar "
                "distribution with enumerable support: exact_log_likelihood needs every latent "
                "site discrete; use ppvae.log_likelihood (importance sampling)"
            )
        support = fn.enumerate_support(expand=False).reshape(-1)
        shape = list(site["value"].shape[1:])
        shape = [1] * (nesting - len(shape)) + shape
        shape[frame.dim] = 1  # one datapoint's variables
        layout.append((name, support, tuple(shape), frame.dim))
    if not layout:
        raise ValueError("the model has no latent site to enumerate")
    return layout


def bits_per_dim(log_px: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """−log₂ p(x) / D: a log-likelihood in nats per datapoint as bits per dimension.

    For 8-bit data modelled by a discrete likelihood over the 256 levels (or counts), this
    is the usual figure of merit; a density over continuous values needs a dequantisation
    correction first, which this does not apply.
    """
    return -log_px / (num_dims * math.log(2.0))


def count_configurations(sizes: list[tuple[int, int]]) -> int:
    """Π support^variables over ``(support size, variables per datapoint)`` pairs."""
    return math.prod(n**m for n, m in sizes)


def exact_log_likelihood(
    model: Callable,
    x: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    max_configurations: int = 2**16,
    chunk_size: int | None = None,
    data_plate: str = "data",
    max_plate_nesting: int | None = None,
) -> LogLikelihoodResult:
    """log p(x_n) of every datapoint, summing p(x_n, k) over every configuration of k.

    Parameters
    ----------
    model
        A Pyro program ``model(x)`` (or ``model(x, y)``) whose latent sites are discrete
        scalars inside ``pyro.plate(data_plate)`` (other plates may nest inside it).
    x, y
        Data ``(N, ...)`` and optional labels.
    max_configurations
        Refuse when one datapoint has more joint configurations than this.
    chunk_size
        Configurations traced at once (by default a block of about 2**22 floats).
    data_plate, max_plate_nesting
        As in :func:`ppvae.inference.importance.log_likelihood`; the nesting defaults to
        the model's owner's ``max_plate_nesting`` (2 for a VQ-VAE), else 1.

    Returns
    -------
    LogLikelihoodResult
        Exact values (Monte Carlo s.e. 0; ``num_samples`` is the number of configurations,
        ``proposal`` is ``"exact"`` for every datapoint).

    Raises
    ------
    ValueError
        A latent site that is continuous or global, or too many configurations (the
        message gives their number).
    """
    nesting = _nesting(model, max_plate_nesting)
    args = (x,) if y is None else (x, y)
    layout = _latent_layout(model, args, data_plate, nesting)
    sizes = [(len(s), math.prod(shape)) for _, s, shape, _ in layout]
    total = count_configurations(sizes)
    if total > max_configurations:
        detail = " × ".join(f"{n}^{m}" for n, m in sizes)
        raise ValueError(
            f"exact enumeration needs {total} configurations per datapoint ({detail}), more "
            f"than max_configurations={max_configurations}: raise max_configurations or use "
            "ppvae.log_likelihood (importance sampling)"
        )
    n = x.shape[0]
    chunk = chunk_size or max(1, min(total, _BLOCK // max(1, x[0].numel() * n)))
    running = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for c0 in range(0, total, chunk):
            index = torch.arange(c0, min(total, c0 + chunk), device=x.device)
            values = _configurations(index, layout, n)
            conditioned = poutine.condition(model, data=values)
            fn = particle_plate(len(index), nesting)(conditioned)
            trace = poutine.trace(fn).get_trace(*args)
            lp = site_log_probs(trace, data_plate=data_plate, max_plate_nesting=nesting).local
            running = torch.logaddexp(running, lp.double().logsumexp(0))
    zeros = torch.zeros(n, dtype=torch.float64)
    return LogLikelihoodResult(
        per_datapoint=running.cpu(),
        mc_stderr_per_datapoint=zeros,
        elbo_per_datapoint=torch.full((n,), math.nan, dtype=torch.float64),
        num_samples=total,
        proposal=["exact"] * n,
    )


def _configurations(index: torch.Tensor, layout: list[Any], batch: int) -> dict[str, torch.Tensor]:
    """The site values of configurations ``index`` (mixed-radix digits), data dim expanded."""
    values, stride = {}, 1
    for name, support, shape, data_dim in layout:
        m, k = math.prod(shape), len(support)
        powers = stride * k ** torch.arange(m, device=index.device)
        digits = (index[:, None] // powers) % k
        stride *= k**m
        full = list(shape)
        full[data_dim] = batch
        value = support.to(index.device)[digits].reshape(len(index), *shape)
        values[name] = value.expand(len(index), *full)
    return values
