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

import torch

from ppvae.config import UserError
from ppvae.runs import RunPaths, load_model, load_run_dataset, split_data, write_json

__all__ = ["evaluate_run", "load_loglik", "compare_runs"]


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    num_samples: int = 1000,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Importance-sampled log-likelihood with k-hat diagnostics; writes ``metrics.json``.

    ``limit`` evaluates only the first ``limit`` datapoints of the split (the data
    fingerprint then differs, so such a run is compared only with like evaluations).
    """
    from ppvae.inference.importance import log_likelihood
    from ppvae.inference.khat import khat_summary, khat_threshold

    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2, got {num_samples}")
    paths = RunPaths(run_dir).require()
    cfg, vae = load_model(paths.root)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    x, y = split_data(load_run_dataset(cfg), split)
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
    _save_tensors(record, paths.loglik(split))
    write_json(paths.metrics, metrics)
    return metrics


def _save_tensors(record: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(record, tmp)
    os.replace(tmp, path)


def load_loglik(run_dir: str | os.PathLike[str], split: str = "test") -> dict[str, Any]:
    """The per-datapoint record ``evaluate`` stored for ``split``."""
    paths = RunPaths(run_dir).require()
    path = paths.loglik(split)
    if not path.is_file():
        raise UserError(
            f"{paths.root} has no {split} evaluation ({path.name} missing): run "
            f"'ppvae evaluate {paths.root} --split {split}' first"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"cannot read {path} ({type(err).__name__}): evaluate the run again"
        ) from None


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]], split: str = "test") -> Any:
    """Comparison table (``ppvae.inference.compare.compare``) of evaluated runs."""
    from ppvae.inference.compare import compare
    from ppvae.inference.importance import LogLikelihoodResult

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
