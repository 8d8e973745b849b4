"""Evaluate and compare runs: importance-sampled log-likelihoods with k-hat diagnostics.

``evaluate_run`` writes ``RUN_DIR/metrics.json`` (the summary) and
``RUN_DIR/loglik_<split>.pt`` (per-datapoint estimates, standard errors and whether each
is approximate, the guide's ELBOs, k-hat, ESS, the proposal of each datapoint, the
guide-only estimates and k-hat, AIS estimates when asked for, the data fingerprint and the
seed), from which ``compare_runs`` rebuilds the results to compare without re-running the
estimator and the report draws its figures. The words describing an evaluation are
:mod:`ppvae.app.summaries`'.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ppvae.app.config import UserError
from ppvae.app.disentangle import disentanglement_summary
from ppvae.app.rundir import RunDir
from ppvae.app.summaries import (
    ais_comparison,
    estimator_text,
    guide_comparison,
    is_stale,
    mc_stderr_text,
    proposal_counts,
    stale_sentence,
)
from ppvae.app.train import check_event_shape, load_model, load_run_dataset, split_data
from ppvae.app.vq import vq_bounds
from ppvae.data import Dataset
from ppvae.inference import (
    LogLikelihoodResult,
    ais_log_likelihood,
    compare,
    khat_summary,
    khat_threshold,
    log_likelihood,
)
from ppvae.inference.distributed import process_group

__all__ = ["PROPOSALS", "evaluate_run", "load_loglik", "compare_runs"]

#: The proposals ``evaluate --proposal`` offers (see :func:`ppvae.log_likelihood`).
PROPOSALS = ("auto", "guide", "refine")


def _check_options(
    num_samples: int,
    limit: int | None,
    proposal: str,
    ais: int | None,
    ais_steps: int,
    ais_chains: int,
) -> None:
    """Refuse bad values before anything is loaded or estimated."""
    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2, got {num_samples}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if proposal not in PROPOSALS:
        raise UserError(f"--proposal must be one of {', '.join(PROPOSALS)}, got {proposal!r}")
    if ais is not None and ais < 1:
        raise UserError(f"--ais must be at least 1 datapoint, got {ais}")
    if ais_steps < 1:
        raise UserError(f"--ais-steps must be at least 1, got {ais_steps}")
    if ais_chains < 2:
        raise UserError(f"--ais-chains must be at least 2 (for a standard error), got {ais_chains}")


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    num_samples: int = 1000,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    dataset: Dataset | None = None,
    proposal: str = "auto",
    ais: int | None = None,
    ais_steps: int = 1000,
    ais_chains: int = 16,
) -> dict[str, Any]:
    """Importance-sampled log-likelihood with k-hat diagnostics; writes ``metrics.json``.

    Parameters
    ----------
    num_samples, seed
        Particles K per datapoint, and the seed of the estimate (and of AIS).
    split, limit
        Which split, and only its first ``limit`` datapoints (the data fingerprint then
        differs, so such a run is compared only with like evaluations).
    proposal
        ``"auto"`` (the guide, refined where k-hat rejects it), ``"guide"`` or
        ``"refine"``; see :func:`ppvae.log_likelihood`.
    ais, ais_steps, ais_chains
        Also estimate the first ``ais`` datapoints by AIS
        (:func:`ppvae.ais_log_likelihood`) and compare them with importance sampling;
        more than the split holds means all of them.
    dataset
        The run's data when the caller has loaded it already; otherwise it is loaded as
        the run's configuration says.

    Returns
    -------
    dict
        The metrics as written to ``metrics.json``: the headline, the estimator that
        produced it, the guide-only comparison and, with ``ais``, the IS-vs-AIS one.
        ``elbo`` is always the guide's ELBO; ``mc_stderr`` is None (null) when the k-hat
        of some datapoint rejects its estimate.
    """
    _check_options(num_samples, limit, proposal, ais, ais_steps, ais_chains)
    run = RunDir(run_dir).require().check_writable("RUN_DIR")
    with run.lock():
        return _evaluate(
            run, num_samples, split, seed, limit, progress, dataset, proposal, ais, ais_steps,
            ais_chains,
        )  # fmt: skip


def _evaluate(
    run: RunDir,
    num_samples: int,
    split: str,
    seed: int,
    limit: int | None,
    progress: bool,
    dataset: Dataset | None,
    proposal: str,
    ais: int | None,
    ais_steps: int,
    ais_chains: int,
) -> dict[str, Any]:
    """:func:`evaluate_run` once the run folder's lock is held."""
    # The digest of the checkpoint evaluated: a later training makes the record stale.
    digest = run.model_digest()
    cfg, vae = load_model(run.root)
    # Under torchrun each rank estimates a shard (one GPU per rank); rank 0 writes.
    group = process_group(None, cfg.device)
    device = cfg.device if group is None else group.device(cfg.device)
    vae.to(device)
    main = group is None or group.is_main
    progress = progress and main
    ds = load_run_dataset(cfg) if dataset is None else dataset
    check_event_shape(run.root, vae, ds)
    x, y = split_data(ds, split)
    y = y[:limit] if vae.num_labels is not None else None
    x = x[:limit]
    start = time.perf_counter()
    res = log_likelihood(
        vae.model,
        vae.guide,
        x,
        num_samples=num_samples,
        proposal=proposal,
        y=y,
        seed=seed,
        progress=None if progress else False,
        device=device,
    )
    seconds = time.perf_counter() - start
    metrics = _metrics(res, proposal, split, seed)
    metrics = {"dataset": cfg.dataset, **metrics, "seconds": seconds, "checkpoint_sha256": digest}
    if hasattr(vae, "log_joint_at_codes"):  # a VQ-VAE: its bounds under each code prior
        metrics["vq"] = vq_bounds(vae, x)
    disentanglement = disentanglement_summary(vae, ds, cfg.device, seed)
    if disentanglement is not None:
        metrics["disentanglement"] = disentanglement
    record = _record(res, metrics)
    if ais is not None:
        n = min(ais, len(x))
        start = time.perf_counter()
        ais_res = ais_log_likelihood(
            vae.model,
            vae.guide,
            x[:n],
            y=None if y is None else y[:n],
            num_steps=ais_steps,
            num_chains=ais_chains,
            seed=seed,
            progress=None if progress else False,
            device=device,
        )
        metrics["ais"] = ais_comparison(
            res, ais_res, num_steps=ais_steps, requested=ais, seconds=time.perf_counter() - start
        )
        record["ais_per_datapoint"] = ais_res.per_datapoint
        record["ais_mc_stderr_per_datapoint"] = ais_res.mc_stderr_per_datapoint
    if not main:
        return metrics
    run.write_loglik(split, record)
    run.write_metrics(metrics)
    # What the file holds (non-finite numbers as None), so callers see what readers see.
    return run.read_metrics()


def _metrics(res: LogLikelihoodResult, proposal: str, split: str, seed: int) -> dict[str, Any]:
    """The summary of an estimate, as ``metrics.json`` holds it."""
    summary = khat_summary(res)
    guide = res.guide_only or res
    approximate = res.mc_stderr_approximate
    metrics: dict[str, Any] = {
        "split": split,
        "num_samples": res.num_samples,
        "num_datapoints": len(res),
        "estimator": estimator_text(res, proposal),
        "proposal": proposal,
        "proposal_counts": proposal_counts(res),
        "num_refined": res.num_refined,
        "log_likelihood": res.mean,
        "stderr": res.stderr,
        "mc_stderr": res.mc_stderr,
        "num_without_stderr": res.num_without_stderr,
        "num_stderr_approximate": 0 if approximate is None else int(approximate.sum()),
        # The ELBO is the guide's: a refined proposal's mean log-weight is a bound too,
        # but not the one the model was trained on.
        "elbo": guide.elbo,
        "gap": res.mean - guide.elbo,
        "khat_threshold": khat_threshold(res.num_samples),
        "share_khat_above_threshold": summary["share_above_threshold"],
        "share_khat_above_0.7": summary["share_above_0.7"],
        "khat_counts": summary["counts"],
        "num_reliable": summary["counts"]["good"],
        "reliable": summary["reliable"],
        "verdict": summary["verdict"],
        "seed": seed,
        "data_fingerprint": res.data_fingerprint,
    }
    metrics["mc_stderr_text"] = mc_stderr_text(metrics)
    comparison = guide_comparison(res)
    if comparison is not None:
        metrics["guide_only"] = comparison
    return metrics


def _record(res: LogLikelihoodResult, metrics: dict[str, Any]) -> dict[str, Any]:
    """The per-datapoint record ``loglik_<split>.pt`` of an estimate."""
    guide = res.guide_only or res
    record = {
        **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
        "per_datapoint": res.per_datapoint,
        "mc_stderr_per_datapoint": res.mc_stderr_per_datapoint,
        "mc_stderr_approximate": res.mc_stderr_approximate,
        "elbo_per_datapoint": guide.elbo_per_datapoint,
        "khat": res.khat,
        "ess": res.ess,
        "reliable_per_datapoint": res.reliable,
        "proposal_per_datapoint": list(res.proposal or ["guide"] * len(res)),
    }
    for name in ("guide_offset", "guide_scale_ratio"):
        if name in res.extras:
            record[name] = res.extras[name]
    if res.guide_only is not None:
        record["guide_only_per_datapoint"] = guide.per_datapoint
        record["guide_only_mc_stderr_per_datapoint"] = guide.mc_stderr_per_datapoint
        record["guide_only_khat"] = guide.khat
    return record


def load_loglik(run_dir: str | os.PathLike[str], split: str = "test") -> dict[str, Any]:
    """The per-datapoint record ``evaluate`` stored for ``split``."""
    return RunDir(run_dir).require().read_loglik(split)


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]], split: str = "test") -> pd.DataFrame:
    """Comparison table (:func:`ppvae.compare`) of evaluated runs."""
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run directories")
    results: dict[str, Any] = {}
    first: tuple[str, str] | None = None
    for run_dir in run_dirs:
        rec = load_loglik(run_dir, split)
        if is_stale(rec, RunDir(run_dir).model_digest()):
            raise UserError(f"{run_dir} was {stale_sentence(run_dir)} before comparing")
        name = Path(run_dir).resolve().name
        while name in results:
            name = f"{name}'"
        if first is None:
            first = (name, rec["data_fingerprint"])
        elif rec["data_fingerprint"] != first[1]:
            raise UserError(
                f"runs {first[0]} and {name} were evaluated on different data (fingerprints "
                f"{first[1]} and {rec['data_fingerprint']}): compare runs on the same dataset "
                "and split"
            )
        results[name] = LogLikelihoodResult(
            per_datapoint=rec["per_datapoint"],
            mc_stderr_per_datapoint=rec["mc_stderr_per_datapoint"],
            elbo_per_datapoint=rec["elbo_per_datapoint"],
            num_samples=int(rec["num_samples"]),
            data_fingerprint=rec["data_fingerprint"],
            seed=rec.get("seed"),
            khat=rec.get("khat"),
            ess=rec.get("ess"),
            reliable=rec.get("reliable_per_datapoint"),
            proposal=rec.get("proposal_per_datapoint"),
            mc_stderr_approximate=rec.get("mc_stderr_approximate"),
        )
    return compare(results)
