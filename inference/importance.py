"""Importance-sampled log-likelihood log p(x) with the guide as proposal.

For each datapoint x_n, K particles z_nk ~ q(z | x_n) give the estimate

    log p̂(x_n) = log (1/K) Σ_k w_nk,    w_nk = p(x_n, z_nk) / q(z_nk | x_n),

a consistent estimator of log p(x_n) whose expectation is the importance-weighted
bound of Burda et al. (2016), biased low by O(1/K). The particles are drawn in chunks
(vectorised Pyro traces of ``chunk_size`` particles) and the data in batches, so peak
memory depends on ``chunk_size × batch_size`` and not on K; only the small ``(B, K)``
matrix of log-weights of the current batch is kept.

References
----------
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
Owen (2013), "Monte Carlo theory, methods and examples", ch. 9 (importance sampling and
the delta method).
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable
from typing import Literal

import torch
from tqdm import tqdm

from ppvae.inference.diagnostics import psis_diagnostics
from ppvae.inference.result import DIAGNOSTIC_FIELDS, LogLikelihoodResult
from ppvae.inference.rng import seeded
from ppvae.inference.weights import per_datapoint_log_weights

__all__ = ["log_likelihood", "summarise_log_weights"]

# About 64 MB of float32 activations of data size per chunk of particles.
# Floats per (batch × chunk × datapoint) block: 16 MB in float32 keeps the decoder's
# intermediates near the CPU caches (bench/README.md measured 1.3x over 64 MB blocks);
# GPUs prefer bigger blocks.
_FLOATS_PER_BATCH = {"cpu": 2**22}
_FLOATS_PER_BATCH_DEFAULT = 2**24


def summarise_log_weights(lw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Estimate, Monte Carlo standard error and ELBO from log-weights of shape ``(B, K)``.

    Returns three ``(B,)`` tensors: logsumexp_k(lw) − log K, its delta-method standard
    error, and mean_k(lw).
    """
    k = lw.shape[-1]
    lse = torch.logsumexp(lw, dim=-1)
    estimate = lse - math.log(k)
    # Delta method. With p̂ = mean_k w_k, Var(p̂) ≈ s²/K where s² = Σ_k (w_k − p̂)² / (K − 1)
    # is the sample variance of the weights, and se(log p̂) ≈ sqrt(Var p̂) / p̂. Writing the
    # normalised weights w̃_k = w_k / (K p̂) = softmax(lw)_k,
    #     Σ_k (w_k − p̂)² = Σ_k w_k² − K p̂² = K p̂² (K Σ_k w̃_k² − 1),
    # so se² = s² / (K p̂²) = (K Σ_k w̃_k² − 1) / (K − 1), free of the weights' scale and
    # computed stably from the softmax. (K Σ w̃² = K / ESS is ≥ 1; the clamp is round-off.)
    if k > 1:
        w2 = torch.exp(2.0 * (lw - lse.unsqueeze(-1))).sum(-1)
        stderr = ((k * w2 - 1.0).clamp_min(0.0) / (k - 1)).sqrt()
    else:
        stderr = torch.full_like(estimate, math.nan)
    return estimate, stderr, lw.mean(-1)


def _fingerprint(x: torch.Tensor, y: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in (x, y):
        if t is None:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def _block_sizes(
    x: torch.Tensor, k: int, batch_size: int | None, chunk_size: int | None
) -> tuple[int, int]:
    """Datapoints per batch and particles per chunk (the defaults of :func:`log_likelihood`)."""
    for name, value in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    chunk = min(int(chunk_size or 256), k)
    floats = _FLOATS_PER_BATCH.get(x.device.type, _FLOATS_PER_BATCH_DEFAULT)
    size = max(1, x[0].numel())
    if batch_size is None:
        batch_size = max(1, floats // (chunk * size))
    batch_size = min(int(batch_size), x.shape[0])
    if chunk_size is None:
        # Few datapoints leave the block part-empty: fill it with particles instead, so that
        # the fixed cost of tracing a chunk is paid fewer times.
        chunk = min(k, max(chunk, floats // (batch_size * size)))
    return batch_size, chunk


def _batch_diagnostics(
    diagnostics: Callable[[torch.Tensor], dict[str, torch.Tensor]], lw: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A diagnostics callable's output on one batch, checked to be per datapoint, on the CPU."""
    out = {}
    for name, value in diagnostics(lw).items():
        value = torch.as_tensor(value)
        if value.shape != (lw.shape[0],):
            raise ValueError(
                f"diagnostics returned {name!r} with shape {tuple(value.shape)}; "
                f"expected one value per datapoint, ({lw.shape[0]},)"
            )
        out[name] = value.cpu()
    return out


def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    y: torch.Tensor | None = None,
    seed: int | None = None,
    return_log_weights: bool = False,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    global_sites: Literal["marginal", "error"] = "marginal",
    diagnostics: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    | Literal["psis"]
    | None = "psis",
    data_plate: str = "data",
    max_plate_nesting: int = 1,
) -> LogLikelihoodResult:
    """Estimate log p(x_n) for every datapoint by importance sampling from the guide.

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
        Keep the ``(N, K)`` log-weights in the result.
    progress
        Show a progress bar over batches (default: when stderr is a terminal).
    device
        Move x (and y) there; the model and guide must already be on it.
    global_sites
        Treatment of latent sites outside the data plate: see
        :func:`ppvae.inference.weights.per_datapoint_log_weights`.
    diagnostics
        ``"psis"`` (default): Pareto-smoothed importance sampling diagnostics from
        :func:`ppvae.inference.diagnostics.psis_diagnostics` fill ``khat``, ``ess`` and
        ``reliable`` (skipped when K < 2). ``None`` turns them off. A callable is called
        with each batch's ``(B, K)`` float64 log-weights and returns per-datapoint
        ``(B,)`` tensors that are concatenated into the result (``khat``, ``ess``,
        ``reliable`` into those fields, other names into ``extras``), so that
        diagnostics need not keep all N × K weights.

    Returns
    -------
    LogLikelihoodResult
    """
    k = int(num_samples)
    if k < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one datapoint, got shape {tuple(x.shape)}")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} entries but x has {x.shape[0]} datapoints")
    if device is not None:
        x = x.to(device)
        y = None if y is None else y.to(device)
    n = x.shape[0]
    batch_size, chunk = _block_sizes(x, k, batch_size, chunk_size)
    check = getattr(getattr(model, "__self__", None), "check_data", None)
    if callable(check):
        check(x, y)
    if progress is None:
        progress = sys.stderr.isatty()
    if isinstance(diagnostics, str):
        if diagnostics != "psis":
            raise ValueError(f"diagnostics must be 'psis', None or a callable, got {diagnostics!r}")
        diagnostics = psis_diagnostics if k >= 2 else None

    parts: dict[str, list[torch.Tensor]] = {"est": [], "se": [], "elbo": [], "lw": []}
    diag: dict[str, list[torch.Tensor]] = {}
    with seeded(seed), torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="log p(x)", disable=not progress):
            xb = x[start : start + batch_size]
            args = (xb,) if y is None else (xb, y[start : start + batch_size])
            chunks = [
                per_datapoint_log_weights(
                    model,
                    guide,
                    args,
                    {},
                    min(chunk, k - k0),
                    data_plate=data_plate,
                    max_plate_nesting=max_plate_nesting,
                    global_sites=global_sites,
                ).to(torch.float64)
                for k0 in range(0, k, chunk)
            ]
            lw = torch.cat(chunks, dim=0).T.contiguous()
            for key, value in zip(("est", "se", "elbo"), summarise_log_weights(lw), strict=True):
                parts[key].append(value.cpu())
            if return_log_weights:
                parts["lw"].append(lw.cpu())
            if diagnostics is not None:
                for name, value in _batch_diagnostics(diagnostics, lw).items():
                    diag.setdefault(name, []).append(value)
    merged = {name: torch.cat(values) for name, values in diag.items()}
    return LogLikelihoodResult(
        per_datapoint=torch.cat(parts["est"]),
        mc_stderr_per_datapoint=torch.cat(parts["se"]),
        elbo_per_datapoint=torch.cat(parts["elbo"]),
        num_samples=k,
        log_weights=torch.cat(parts["lw"]) if return_log_weights else None,
        data_fingerprint=_fingerprint(x, y),
        seed=seed,
        **{name: merged.pop(name) for name in DIAGNOSTIC_FIELDS if name in merged},
        extras=merged,
    )
