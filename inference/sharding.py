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

``proposal="auto"`` runs in two rounds so that its pool rule (refine every datapoint when
more than ``pool_share`` of them have a high k-hat) reads the k-hat of all datapoints, as
in one process: the guide on every shard, the rule on the gathered k-hat, then the
refined proposal on each shard's selected datapoints. (With global latent sites, or
without diagnostics, each shard applies the rule to itself.) The batches, hence the
draws of global latent sites shared within a batch, are the shards'. An error on one
rank's shard is raised on every rank (as the same built-in exception type), rather than
leaving the others waiting at the gather.
"""

from __future__ import annotations

import builtins
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ppvae.inference.distributed import ProcessGroup, collective_errors, process_group
from ppvae.inference.passes import fingerprint
from ppvae.inference.proposals import needs_refinement
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
    index = torch.arange(len(x), device=x.device)[group.shard(len(x))]
    seed = kw.get("seed")
    if _pooled(estimator, kw):
        return _run_auto(estimator, group, model, guide, x, kw, index)
    local, failure = _estimate(estimator, model, guide, x, kw, index, group.rank)
    return _merged(_gather(group, local, failure), x, kw.get("y"), seed)


def _pooled(estimator: Callable, kw: dict[str, Any]) -> bool:
    """Whether the call is ``proposal="auto"`` with diagnostics, whose pool rule reads the
    k-hat of all datapoints."""
    params = inspect.signature(estimator).parameters
    if "proposal" not in params or "pool_share" not in params:
        return False
    proposal = kw.get("proposal", params["proposal"].default)
    diagnostics = kw.get("diagnostics", params["diagnostics"].default)
    return isinstance(proposal, str) and proposal == "auto" and diagnostics is not None


def _run_auto(
    estimator: Callable[..., LogLikelihoodResult],
    group: ProcessGroup,
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    kw: dict[str, Any],
    index: torch.Tensor,
) -> LogLikelihoodResult:
    """``proposal="auto"`` as in one process: the guide on every shard, the pool rule on
    the k-hat of all datapoints, then the refined proposal on each shard's share of the
    datapoints it selects (with seeds of their own)."""
    guided, failure = _estimate(
        estimator, model, guide, x, {**kw, "proposal": "guide"}, index, group.rank
    )
    summary = guided
    if isinstance(guided, LogLikelihoodResult):
        summary = (guided.khat, guided.mean_mc_variance is not None)
    summaries = [p for p in _gather(group, summary, failure) if p is not None]
    if any(khat is None for khat, _ in summaries) or any(shared for _, shared in summaries):
        # No k-hat (K < 2), or global sites whose shared draws the passes account for
        # together: each shard runs the whole rule.
        whole, failure = _estimate(estimator, model, guide, x, kw, index, group.rank)
        return _merged(_gather(group, whole, failure), x, kw.get("y"), kw.get("seed"))
    khat = torch.cat([k.cpu() for k, _ in summaries])
    mask = needs_refinement(khat, kw.get("pool_share", 0.1))[index.cpu()]
    local: Any = guided
    if mask.any():
        refined, failure = _estimate(
            estimator,
            model,
            guide,
            x,
            {**kw, "proposal": "refine"},
            index[mask.to(index.device)],
            group.world_size + group.rank,
        )
        local = refined if failure is not None else _with_refined(guided, refined, mask)
    return _merged(_gather(group, local, failure), x, kw.get("y"), kw.get("seed"))


def _estimate(
    estimator: Callable[..., LogLikelihoodResult],
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    kw: dict[str, Any],
    index: torch.Tensor,
    stream: int,
) -> tuple[Any, BaseException | None]:
    """The estimate of the datapoints ``index`` with seed ``rank_seed(seed, stream)``, on
    the CPU; ``None`` for no datapoints; a :class:`_Failure` and the error if it raised."""
    if len(index) == 0:
        return None, None
    y, seed = kw.get("y"), kw.get("seed")
    local_kw = {**kw, "y": None if y is None else y[index]}
    if seed is not None:
        local_kw["seed"] = rank_seed(seed, stream)
    try:
        return _to_cpu(estimator(model, guide, x[index], **local_kw)), None
    except Exception as err:  # every rank must reach the gather, then raise alike
        return _Failure(type(err).__name__, str(err)), err


def _gather(group: ProcessGroup, local: Any, failure: BaseException | None) -> list[Any]:
    """Every rank's ``local``, in rank order; raises this rank's error or another's."""
    parts: list[Any] = [None] * group.world_size
    with collective_errors(group.rank, "the gather of the per-datapoint results"):
        dist.all_gather_object(parts, local)
    if failure is not None:
        raise failure
    failed = [p for p in parts if isinstance(p, _Failure)]
    if failed:
        raise failed[0].error()
    return parts


def _merged(
    parts: list[Any], x: torch.Tensor, y: torch.Tensor | None, seed: int | None
) -> LogLikelihoodResult:
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


def _with_refined(
    guided: LogLikelihoodResult, refined: LogLikelihoodResult, mask: torch.Tensor
) -> LogLikelihoodResult:
    """``guided`` with the datapoints ``mask`` selects re-estimated by ``refined`` (whose
    rows are those datapoints, in order), as one process merges its passes: the ELBO stays
    the guide's, and ``guide_only`` keeps the guide's estimate."""
    n = len(guided)

    def put(base: torch.Tensor | None, new: torch.Tensor | None) -> torch.Tensor | None:
        if new is None:
            return base
        if base is None:
            fill = False if new.dtype == torch.bool else float("nan")
            base = torch.full((n, *new.shape[1:]), fill, dtype=new.dtype)
        base = base.clone()
        base[mask] = new
        return base

    fields = {name: put(getattr(guided, name), getattr(refined, name)) for name in _PER_DATAPOINT}
    fields["elbo_per_datapoint"] = guided.elbo_per_datapoint
    keys = dict.fromkeys([*guided.extras, *refined.extras])
    extras = {k: put(guided.extras.get(k), refined.extras.get(k)) for k in keys}
    proposal = list(guided.proposal or ["guide"] * n)
    for i in mask.nonzero().squeeze(-1).tolist():
        proposal[i] = "refine"
    return LogLikelihoodResult(
        **fields,
        num_samples=guided.num_samples,
        data_fingerprint=guided.data_fingerprint,
        seed=guided.seed,
        extras=extras,
        proposal=proposal,
        guide_only=guided,
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
