"""Anomaly scores: per-datapoint −log p̂(x) of a trained run, with k-hat reliability flags.

A datapoint the model finds unlikely gets a high score. When the data say which
points are out-of-distribution (a column or array named ``ood`` / ``is_ood``, or a
second data set passed as ``ood``), the scores' ROC-AUC measures how well the
log-likelihood separates them (scikit-learn's ``roc_auc_score``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ppvae.app.config import RunConfig, UserError
from ppvae.app.rundir import RunDir, check_writable_file, write_csv
from ppvae.app.train import load_model
from ppvae.data import KNOWN_DATASETS, load_dataset
from ppvae.inference import LogLikelihoodResult, log_likelihood
from ppvae.readers import check_labels, read_array_file

__all__ = ["ScoreData", "read_score_data", "score_run"]

_CSV_HEADER = ["source", "row", "label", "ood", "score", "mc_stderr", "khat", "ess", "reliable"]


@dataclass
class ScoreData:
    """Rows to score: data ``(N, *event_shape)``, optional class labels and OOD flags."""

    name: str
    x: torch.Tensor
    labels: torch.Tensor | None = None
    ood: torch.Tensor | None = None


def _read_file(path: Path, event_shape: tuple[int, ...]) -> ScoreData:
    """All rows of an array file, in file order, shaped as the model's datapoints."""
    arrays = read_array_file(path)
    x = np.asarray(arrays.x, dtype=np.float64)
    size = math.prod(event_shape)
    if tuple(x.shape[1:]) != event_shape:
        if x.ndim >= 2 and math.prod(x.shape[1:]) == size:
            x = x.reshape(len(x), *event_shape)  # flat rows (e.g. a CSV) of image models
        else:
            raise UserError(
                f"{path}: datapoints have shape {tuple(x.shape[1:])} but the model expects "
                f"{event_shape}: reshape the data"
            )
    labels = None
    if arrays.y is not None:
        labels = check_labels(np.asarray(arrays.y).reshape(-1), len(x), str(path))
    ood = None if arrays.ood is None else torch.as_tensor(arrays.ood)
    return ScoreData(path.name, torch.as_tensor(x, dtype=torch.float32), labels, ood)


def read_score_data(spec: str, cfg: RunConfig, event_shape: tuple[int, ...]) -> ScoreData:
    """A dataset name (its test split, prepared as the run's data) or an array file."""
    if spec.lower().replace("_", "-") in KNOWN_DATASETS:
        ds = load_dataset(
            spec, data_dir=cfg.data_dir, download=cfg.download, binarize=cfg.binarize_mode
        )
        return ScoreData(f"{ds.name} (test)", ds.test, ds.test_labels)
    path = Path(spec).expanduser()
    if not path.suffix:
        load_dataset(spec)  # raises its "unknown dataset" error
    return _read_file(path, tuple(event_shape))


def score_run(
    run_dir: str | os.PathLike[str],
    data: str,
    *,
    ood: str | None = None,
    out: str | os.PathLike[str] | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``data`` (and ``ood``) with a trained run; writes a CSV and returns a summary.

    The CSV goes to ``out``, by default ``RUN_DIR/scores.csv``.
    """
    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2, got {num_samples}")
    run = RunDir(run_dir).require()
    path = Path(out) if out is not None else run.scores
    check_writable_file(path, "--out")
    with run.lock():
        return _score(run, data, ood, path, num_samples, seed, progress)


def _score(
    run: RunDir,
    data: str,
    ood: str | None,
    path: Path,
    num_samples: int,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """:func:`score_run` once the run folder's lock is held."""
    cfg, vae = load_model(run.root)
    parts = [read_score_data(data, cfg, vae.event_shape)]
    if ood is not None:
        extra = read_score_data(ood, cfg, vae.event_shape)
        parts[0].ood = torch.zeros(len(parts[0].x), dtype=torch.long)
        extra.ood = torch.ones(len(extra.x), dtype=torch.long)
        parts.append(extra)
    x = torch.cat([p.x for p in parts])
    has_ood = all(p.ood is not None for p in parts)
    flags = torch.cat([p.ood for p in parts]) if has_ood else None
    y = None
    if vae.num_labels is not None:
        if any(p.labels is None for p in parts):
            raise UserError(
                "this model is conditional: every data set to score needs its class labels "
                "(a 'y' or 'label' column)"
            )
        y = torch.cat([p.labels for p in parts])
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
    scores = -res.per_datapoint
    auc = None
    if flags is not None and 0 < int(flags.sum()) < len(flags):
        auc = float(roc_auc_score(flags.numpy(), scores.numpy()))
    write_csv(path, _CSV_HEADER, _csv_rows(parts, scores, res))
    summary: dict[str, Any] = {
        "num_datapoints": len(x),
        "num_samples": num_samples,
        "mean_score": float(scores.mean()),
        "share_unreliable": float(1 - res.reliable.double().mean()),
        "auc": auc,
        "out": str(path),
    }
    if flags is not None:
        for name, sel in (("in", flags == 0), ("ood", flags == 1)):
            summary[f"mean_score_{name}"] = float(scores[sel].mean()) if sel.any() else None
    return summary


def _csv_rows(
    parts: list[ScoreData], scores: torch.Tensor, res: LogLikelihoodResult
) -> list[list[Any]]:
    rows, i = [], 0
    for part in parts:
        for row in range(len(part.x)):
            rows.append(
                [
                    part.name,
                    row,
                    "" if part.labels is None else int(part.labels[row]),
                    "" if part.ood is None else int(part.ood[row]),
                    f"{float(scores[i]):.6g}",
                    f"{float(res.mc_stderr_per_datapoint[i]):.3g}",
                    f"{float(res.khat[i]):.3g}",
                    f"{float(res.ess[i]):.4g}",
                    int(bool(res.reliable[i])),
                ]
            )
            i += 1
    return rows
