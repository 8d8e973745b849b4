"""Evaluate and compare runs: importance-sampled log-likelihoods with k-hat diagnostics.

``evaluate_run`` writes ``RUN_DIR/metrics.json`` (the summary) and
``RUN_DIR/loglik_<split>.pt`` (per-datapoint estimates, standard errors, ELBOs, k-hat,
ESS, the data fingerprint and the seed), from which ``compare_runs`` rebuilds the
results to compare without re-running the estimator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ppvae.app.config import UserError
from ppvae.app.rundir import RunDir
from ppvae.app.train import load_model, load_run_dataset, split_data
from ppvae.data import Dataset
from ppvae.inference import (
    LogLikelihoodResult,
    compare,
    khat_summary,
    khat_threshold,
    log_likelihood,
)

__all__ = ["evaluate_run", "load_loglik", "compare_runs"]


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    num_samples: int = 1000,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Importance-sampled log-likelihood with k-hat diagnostics; writes ``metrics.json``.

    ``limit`` evaluates only the first ``limit`` datapoints of the split (the data
    fingerprint then differs, so such a run is compared only with like evaluations).
    ``dataset`` is the run's data when the caller has loaded it already; otherwise it is
    loaded as the run's configuration says.
    """
    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2, got {num_samples}")
    run = RunDir(run_dir).require()
    cfg, vae = load_model(run.root)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    ds = load_run_dataset(cfg) if dataset is None else dataset
    x, y = split_data(ds, split)
    y = y[:limit] if vae.num_labels is not None else None
    x = x[:limit]
    start = time.perf_counter()
    res = log_likelihood(
        vae.model,
        vae.guide,
        x,
        num_samples=num_samples,
        y=y,
        seed=seed,
        progress=None if progress else False,
        device=cfg.device,
    )
    seconds = time.perf_counter() - start
    summary = khat_summary(res)
    metrics = {
        "dataset": cfg.dataset,
        "split": split,
        "num_samples": num_samples,
        "num_datapoints": len(res),
        "log_likelihood": res.mean,
        "stderr": res.stderr,
        "mc_stderr": res.mc_stderr,
        "elbo": res.elbo,
        "gap": res.gap,
        "khat_threshold": khat_threshold(num_samples),
        "share_khat_above_threshold": summary["share_above_threshold"],
        "share_khat_above_0.7": summary["share_above_0.7"],
        "khat_counts": summary["counts"],
        "reliable": summary["reliable"],
        "verdict": summary["verdict"],
        "seed": seed,
        "data_fingerprint": res.data_fingerprint,
        "seconds": seconds,
    }
    record = {
        **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
        "per_datapoint": res.per_datapoint,
        "mc_stderr_per_datapoint": res.mc_stderr_per_datapoint,
        "elbo_per_datapoint": res.elbo_per_datapoint,
        "khat": res.khat,
        "ess": res.ess,
        "reliable_per_datapoint": res.reliable,
    }
    run.write_loglik(split, record)
    run.write_metrics(metrics)
    return metrics


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
        )
    return compare(results)
