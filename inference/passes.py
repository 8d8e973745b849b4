"""One estimation pass over a set of datapoints: batches of log-weights to per-datapoint results.

:func:`ppvae.inference.importance.log_likelihood` and
:func:`ppvae.inference.annealed.ais_log_likelihood` both turn ``(K, B)`` log-weights of
batches of datapoints into per-datapoint estimates, Monte Carlo standard errors, ELBOs
and PSIS diagnostics; this module does that once for every estimator, and applies the
rule that a standard error is reported only where the diagnostics support it:

- k-hat ≤ 0.5: the weights have a finite variance, and the delta-method s.e. holds;
- 0.5 < k-hat ≤ the threshold min(1 − 1/log10 K, 0.7): the estimate is usable but its
  s.e. is approximate (``mc_stderr_approximate``);
- k-hat above the threshold: no s.e. is reported (NaN), since the weights' variance
  is infinite and the delta method would understate the error arbitrarily.

References
----------
Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto Smoothed Importance Sampling",
JMLR 25(72), sec. 3 (k < 1/2: finite variance; the sample-size-dependent threshold).
Owen (2013), "Monte Carlo theory, methods and examples", ch. 9 (the delta method).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ppvae.inference.khat import khat_threshold

__all__ = [
    "FINITE_VARIANCE_KHAT",
    "summarise_log_weights",
    "fingerprint",
    "block_sizes",
    "batches",
    "PassRecord",
    "shared_particle_variance",
    "honest_stderr",
]

# Below this k-hat the weights have a finite variance (Vehtari et al. 2024, sec. 3).
FINITE_VARIANCE_KHAT = 0.5

# Floats per (batch × chunk × datapoint) block: 16 MB in float32 keeps the decoder's
# intermediates near the CPU caches (bench/README.md measured 1.3x over 64 MB blocks);
# GPUs prefer bigger blocks.
_FLOATS_PER_BATCH = {"cpu": 2**22}
_FLOATS_PER_BATCH_DEFAULT = 2**24

Diagnostics = Callable[[torch.Tensor], dict[str, torch.Tensor]]


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


def shared_particle_variance(lw: torch.Tensor, n_total: int) -> torch.Tensor:
    """Monte Carlo variance of a batch's share of the mean of log p̂(x_n), ``(B, K)`` weights.

    When the datapoints of a batch share each particle's global draw θ_k, their errors
    are correlated. Linearising, the batch adds (1/K) Σ_k A_k to the mean over all
    ``n_total`` datapoints, with A_k = (1/N) Σ_n (K w̃_nk − 1) i.i.d. over k, so the
    variance is Var_k(A_k) / K, estimated by the sample variance over particles.
    """
    k = lw.shape[-1]
    a = (k * torch.softmax(lw, dim=-1) - 1.0).sum(0) / n_total
    return a.var() / k if k > 1 else a.new_tensor(math.nan)


def fingerprint(x: torch.Tensor, y: torch.Tensor | None) -> str:
    """A short hash of the data (and labels), to tell results on different data apart."""
    h = hashlib.sha256()
    for t in (x, y):
        if t is None:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def block_sizes(
    x: torch.Tensor, k: int, batch_size: int | None, chunk_size: int | None
) -> tuple[int, int]:
    """Datapoints per batch and particles per chunk (the defaults of ``log_likelihood``)."""
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


def batches(
    x: torch.Tensor, y: torch.Tensor | None, index: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, tuple]]:
    """``(indices, args)`` of consecutive batches of the datapoints ``index``."""
    for start in range(0, len(index), batch_size):
        idx = index[start : start + batch_size]
        args = (x[idx],) if y is None else (x[idx], y[idx])
        yield idx, args


@dataclass
class PassRecord:
    """Per-datapoint outputs of one pass, filled batch by batch."""

    index: list[torch.Tensor] = field(default_factory=list)
    parts: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(
        self,
        idx: torch.Tensor,
        lw: torch.Tensor,
        *,
        diagnostics: Diagnostics | None,
        keep_log_weights: bool,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Record a batch: ``lw`` of shape ``(K, B)`` in the model's dtype."""
        lw_bk = lw.T.contiguous()
        wide = lw_bk.to(torch.float64)
        values = dict(zip(("est", "se", "elbo"), summarise_log_weights(wide), strict=True))
        if keep_log_weights:
            values["log_weights"] = wide
        if diagnostics is not None:
            # Diagnostics see the weights in the dtype they were computed in, so that
            # round-off is judged at that precision.
            for name, value in diagnostics(lw_bk).items():
                value = torch.as_tensor(value)
                if value.shape != (lw_bk.shape[0],):
                    raise ValueError(
                        f"diagnostics returned {name!r} with shape {tuple(value.shape)}; "
                        f"expected one value per datapoint, ({lw_bk.shape[0]},)"
                    )
                values[name] = value
        for name, value in (extras or {}).items():
            values[name] = value
        self.index.append(idx.cpu())
        for name, value in values.items():
            self.parts.setdefault(name, []).append(value.detach().cpu())

    def shared_variance(self, keep: torch.Tensor, n_total: int) -> torch.Tensor:
        """Σ over batches of :func:`shared_particle_variance` of the rows ``keep`` selects.

        ``keep`` is a boolean mask over all datapoints; needs the log-weights kept.
        """
        total = torch.zeros((), dtype=torch.float64)
        for idx, lw in zip(self.index, self.parts["log_weights"], strict=True):
            rows = keep[idx]
            if rows.any():
                total = total + shared_particle_variance(lw[rows], n_total)
        return total

    def merged(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The datapoint indices and each output concatenated over batches."""
        return torch.cat(self.index), {k: torch.cat(v) for k, v in self.parts.items()}


def honest_stderr(
    stderr: torch.Tensor, khat: torch.Tensor | None, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The s.e. the diagnostics support (NaN above the threshold) and the approximate flag."""
    if khat is None:
        return stderr, None
    khat = khat.to(stderr.device)
    rejected = ~(khat <= khat_threshold(num_samples))
    approximate = (khat > FINITE_VARIANCE_KHAT) & ~rejected
    return torch.where(rejected, torch.full_like(stderr, math.nan), stderr), approximate
