"""Estimators of log p(x) sharded over the ranks of a ``torchrun`` launch.

:func:`shard_datapoints` wraps an estimator called as ``estimator(model, guide, x, *,
y=..., seed=..., **options)`` that returns a
:class:`~ppvae.inference.result.LogLikelihoodResult` (:func:`ppvae.log_likelihood`,
:func:`ppvae.ais_log_likelihood`). Under a process group of W > 1 ranks, rank r estimates
the r-th of W contiguous shards of the datapoints (sizes differ by at most one, no
padding) with the seed :func:`~ppvae.inference.rng.rank_seed` ``(seed, r)``, and the
per-datapoint results of all ranks are gathered, in the original order, on every rank.
The result is reproducible for a given seed and world size, and each datapoint's estimate
is an estimate of the same quantity as in one process, with independent draws.

What is not the same as in one process: ``proposal="auto"`` applies its pool rule (refine
all datapoints when more than ``pool_share`` of them have a high k-hat) to each rank's
shard, and the batches (hence the draws of global latent sites shared within a batch)
are the shards'.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ppvae.inference.distributed import ProcessGroup, collective_errors, process_group
from ppvae.inference.passes import fingerprint
from ppvae.inference.result import LogLikelihoodResult
from ppvae.inference.rng import rank_seed

__all__ = ["shard_datapoints", "merge_results"]

_PER_DATAPOINT = (
    "per_datapoint",
    "mc_stderr_per_datapoint",
    "elbo_per_datapoint",
    "log_weights",
    "khat",
    "ess",
    "reliable",
    "mc_stderr_approximate",
)


def shard_datapoints(estimator: Callable[..., LogLikelihoodResult]) -> Callable[..., Any]:
    """``estimator`` with a ``distributed`` keyword: ``None`` (default) shards over the
    ranks of a ``torchrun`` launch or an initialised process group, ``True`` requires one,
    ``False`` estimates every datapoint in this process."""

    @functools.wraps(estimator)
    def sharded(
        model: Callable, guide: Callable, x: torch.Tensor, *, distributed: bool | None = None, **kw
    ) -> LogLikelihoodResult:
        device = kw.get("device") or (x.device if isinstance(x, torch.Tensor) else "cpu")
        group = process_group(distributed, device)
        if group is None:
            return estimator(model, guide, x, **kw)
        if kw.get("device") is not None:
            kw["device"] = group.device(kw["device"])
        return _run_shard(estimator, group, model, guide, x, kw)

    return sharded


def _run_shard(
    estimator: Callable[..., LogLikelihoodResult],
    group: ProcessGroup,
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    kw: dict[str, Any],
) -> LogLikelihoodResult:
    y, seed = kw.get("y"), kw.get("seed")
    part = group.shard(len(x))
    local: Any = None
    failure: BaseException | None = None
    if part.stop > part.start:
        shard_kw = {**kw, "y": None if y is None else y[part]}
        if seed is not None:
            shard_kw["seed"] = rank_seed(seed, group.rank)
        try:
            local = _to_cpu(estimator(model, guide, x[part], **shard_kw))
        except Exception as err:  # every rank must reach the gather, then raise alike
            failure, local = err, _Failure(type(err).__name__, str(err))
    parts: list[Any] = [None] * group.world_size
    with collective_errors(group.rank, "the gather of the per-datapoint results"):
        dist.all_gather_object(parts, local)
    if failure is not None:
        raise failure
    failed = [p for p in parts if isinstance(p, _Failure)]
    if failed:
        raise failed[0].error()
    result = merge_results([p for p in parts if p is not None])
    result.seed = seed
    result.data_fingerprint = fingerprint(x, y)
    return result


@dataclass(frozen=True)
class _Failure:
    """What another rank's estimator raised, sent in place of its result."""

    kind: str
    message: str

    def error(self) -> Exception:
        """The same error on this rank (a built-in exception class, else RuntimeError)."""
        cls = getattr(builtins, self.kind, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(self.message)
        return RuntimeError(f"{self.kind}: {self.message}")


def _to_cpu(res: LogLikelihoodResult) -> LogLikelihoodResult:
    """The result with its tensors on the CPU (what is sent to the other ranks)."""
    for name in _PER_DATAPOINT:
        value = getattr(res, name)
        if isinstance(value, torch.Tensor):
            setattr(res, name, value.cpu())
    res.extras = {k: v.cpu() for k, v in res.extras.items()}
    if res.guide_only is not None:
        res.guide_only = _to_cpu(res.guide_only)
    return res


def _cat(values: list[torch.Tensor | None], sizes: list[int]) -> torch.Tensor | None:
    """Concatenate per-shard tensors; a shard without one gets NaN (False for flags)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    like = present[0]
    fill = False if like.dtype == torch.bool else float("nan")
    return torch.cat(
        [
            v if v is not None else torch.full((n, *like.shape[1:]), fill, dtype=like.dtype)
            for v, n in zip(values, sizes, strict=True)
        ]
    )


def merge_results(parts: list[LogLikelihoodResult]) -> LogLikelihoodResult:
    """One result from the results of consecutive shards of the datapoints, in order.

    Per-datapoint fields are concatenated (a field one shard lacks, such as the refined
    proposal's extras where nothing was refined, is NaN there); the Monte Carlo variance
    of the mean with shared global draws adds up as Σ_r (n_r / N)² v_r, the shards'
    draws being independent; ``guide_only`` is merged from each shard's guide-only
    estimate (the shard's result itself where it refined nothing).
    """
    sizes = [len(p) for p in parts]
    n = sum(sizes)
    fields = {name: _cat([getattr(p, name) for p in parts], sizes) for name in _PER_DATAPOINT}
    keys = dict.fromkeys(k for p in parts for k in p.extras)
    extras = {k: _cat([p.extras.get(k) for p in parts], sizes) for k in keys}
    variances = [p.mean_mc_variance for p in parts]
    shared = None
    if any(v is not None for v in variances):
        shared = sum((s / n) ** 2 * (v or 0.0) for s, v in zip(sizes, variances, strict=True))
    guide_only = None
    if any(p.guide_only is not None for p in parts):
        guide_only = merge_results([p.guide_only or p for p in parts])
    proposal = None
    if all(p.proposal is not None for p in parts):
        proposal = [name for p in parts for name in p.proposal or []]
    return LogLikelihoodResult(
        **fields,
        num_samples=parts[0].num_samples,
        data_fingerprint=parts[0].data_fingerprint,
        seed=parts[0].seed,
        extras=extras,
        proposal=proposal,
        guide_only=guide_only,
        mean_mc_variance=shared,
    )
