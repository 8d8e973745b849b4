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

import contextlib
import hashlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm import tqdm

from ppvae.inference.weights import per_datapoint_log_weights

__all__ = ["LogLikelihoodResult", "log_likelihood", "summarise_log_weights"]

# About 64 MB of float32 activations of data size per chunk of particles.
# Floats per (batch × chunk × datapoint) block: 16 MB in float32 keeps the decoder's
# intermediates near the CPU caches (bench/README.md measured 1.3x over 64 MB blocks);
# GPUs prefer bigger blocks.
_FLOATS_PER_BATCH = {"cpu": 2**22}
_FLOATS_PER_BATCH_DEFAULT = 2**24
_DIAGNOSTIC_FIELDS = ("khat", "ess", "reliable")


def _floats(t: torch.Tensor | None) -> list | None:
    if t is None:
        return None
    return [v if isinstance(v, bool) or math.isfinite(v) else None for v in t.tolist()]


@dataclass(repr=False)
class LogLikelihoodResult:
    """Per-datapoint importance-sampled log-likelihoods and their uncertainties.

    Attributes
    ----------
    per_datapoint
        log p̂(x_n), shape ``(N,)``, float64.
    mc_stderr_per_datapoint
        Monte Carlo standard error of each log p̂(x_n) (delta method; NaN when K = 1).
    elbo_per_datapoint
        The ELBO estimate mean_k log w_nk from the same draws.
    num_samples
        K, the number of particles per datapoint.
    log_weights
        The ``(N, K)`` float64 log-weights, when requested.
    data_fingerprint
        A short hash of the data (and labels), to tell results on different data apart.
    seed
        The seed the estimate was drawn with, if any.
    khat, ess, reliable
        Per-datapoint diagnostics (Pareto k-hat, effective sample size, verdict), filled
        by a ``diagnostics`` callable or by :mod:`ppvae.inference.diagnostics`.
    extras
        Other per-datapoint outputs of the ``diagnostics`` callable.
    """

    per_datapoint: torch.Tensor
    mc_stderr_per_datapoint: torch.Tensor
    elbo_per_datapoint: torch.Tensor
    num_samples: int
    log_weights: torch.Tensor | None = None
    data_fingerprint: str = ""
    seed: int | None = None
    khat: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    reliable: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.per_datapoint.shape[0])

    @property
    def mean(self) -> float:
        """The average log p̂(x_n) over datapoints."""
        return float(self.per_datapoint.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over datapoints, sd/√N.

        The uncertainty of the test-set average as an estimate of the expected
        log-likelihood under the data distribution: use it to compare models.
        """
        n = len(self)
        return float(self.per_datapoint.std() / math.sqrt(n)) if n > 1 else math.nan

    @property
    def mc_stderr(self) -> float:
        """Monte Carlo standard error of :attr:`mean`, sqrt(Σ se_n²)/N."""
        return float(self.mc_stderr_per_datapoint.square().sum().sqrt() / len(self))

    @property
    def elbo(self) -> float:
        """The average ELBO over datapoints."""
        return float(self.elbo_per_datapoint.mean())

    @property
    def gap(self) -> float:
        """``mean − elbo``: how much the K-particle estimate gains over the ELBO."""
        return self.mean - self.elbo

    def summary(self) -> str:
        """One line: estimate, standard errors, ELBO, K and N."""
        text = (
            f"log p(x) = {self.mean:.2f} ± {self.stderr:.2f} (data s.e.), "
            f"MC s.e. {self.mc_stderr:.2g}, ELBO {self.elbo:.2f}, "
            f"K={self.num_samples}, N={len(self)}"
        )
        if self.reliable is not None:
            text += f", reliable {float(self.reliable.double().mean()):.0%}"
        return text

    def __repr__(self) -> str:
        return f"LogLikelihoodResult({self.summary()})"

    def to_inference_data(self, **kwargs: Any) -> Any:
        """Export as ``arviz.InferenceData``: see ``ppvae.inference.diagnostics``."""
        from ppvae.inference.diagnostics import to_inference_data

        return to_inference_data(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary and per-datapoint lists (non-finite values become None).

        The log-weights are left out: they are large and not needed to compare results.
        """
        out: dict[str, Any] = {
            "mean": self.mean,
            "stderr": self.stderr,
            "mc_stderr": self.mc_stderr,
            "elbo": self.elbo,
            "gap": self.gap,
            "num_samples": int(self.num_samples),
            "num_datapoints": len(self),
            "data_fingerprint": self.data_fingerprint,
            "seed": self.seed,
        }
        out = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
        }
        for name in ("per_datapoint", "mc_stderr_per_datapoint", "elbo_per_datapoint"):
            out[name] = _floats(getattr(self, name))
        for name in _DIAGNOSTIC_FIELDS:
            out[name] = _floats(getattr(self, name))
        out["extras"] = {k: _floats(v) for k, v in self.extras.items()}
        return out


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


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    # Pyro samples from torch's generators: forking them (CPU and every CUDA device, since
    # manual_seed seeds them all) leaves the caller's random stream exactly as it was.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
        Makes the estimate reproducible. The draws then come from a forked copy of
        torch's random state, so the caller's random stream is left untouched; without
        a seed the global stream is used (and advanced). Results depend on
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
    for name, value in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    chunk = min(int(chunk_size or 256), k)
    n = x.shape[0]
    if device is not None:
        x = x.to(device)
        y = None if y is None else y.to(device)
    floats = _FLOATS_PER_BATCH.get(x.device.type, _FLOATS_PER_BATCH_DEFAULT)
    size = max(1, x[0].numel())
    if batch_size is None:
        batch_size = max(1, floats // (chunk * size))
    batch_size = min(int(batch_size), n)
    if chunk_size is None:
        # Few datapoints leave the block part-empty: fill it with particles instead, so that
        # the fixed cost of tracing a chunk is paid fewer times.
        chunk = min(k, max(chunk, floats // (batch_size * size)))
    check = getattr(getattr(model, "__self__", None), "check_data", None)
    if callable(check):
        check(x, y)
    if progress is None:
        progress = sys.stderr.isatty()
    if isinstance(diagnostics, str):
        if diagnostics != "psis":
            raise ValueError(f"diagnostics must be 'psis', None or a callable, got {diagnostics!r}")
        # Imported here so that ArviZ loads only when diagnostics are asked for.
        from ppvae.inference.diagnostics import psis_diagnostics

        diagnostics = psis_diagnostics if k >= 2 else None

    parts: dict[str, list[torch.Tensor]] = {"est": [], "se": [], "elbo": [], "lw": []}
    diag: dict[str, list[torch.Tensor]] = {}
    with _seeded(seed), torch.no_grad():
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
                for name, value in diagnostics(lw).items():
                    value = torch.as_tensor(value)
                    if value.shape != (lw.shape[0],):
                        raise ValueError(
                            f"diagnostics returned {name!r} with shape {tuple(value.shape)}; "
                            f"expected one value per datapoint, ({lw.shape[0]},)"
                        )
                    diag.setdefault(name, []).append(value.cpu())
    merged = {name: torch.cat(values) for name, values in diag.items()}
    return LogLikelihoodResult(
        per_datapoint=torch.cat(parts["est"]),
        mc_stderr_per_datapoint=torch.cat(parts["se"]),
        elbo_per_datapoint=torch.cat(parts["elbo"]),
        num_samples=k,
        log_weights=torch.cat(parts["lw"]) if return_log_weights else None,
        data_fingerprint=_fingerprint(x, y),
        seed=seed,
        **{name: merged.pop(name) for name in _DIAGNOSTIC_FIELDS if name in merged},
        extras=merged,
    )
