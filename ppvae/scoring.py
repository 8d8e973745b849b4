"""Anomaly scores: per-datapoint −log p̂(x) of a trained run, with k-hat reliability flags.

A datapoint the model finds unlikely gets a high score. When the data say which
points are out-of-distribution (a column or array named ``ood`` / ``is_ood``, or a
second data set passed as ``ood``), the scores' ROC-AUC measures how well the
log-likelihood separates them (scikit-learn's ``roc_auc_score``).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppvae.config import RunConfig, UserError

__all__ = ["ScoreData", "read_score_data", "score_run"]

_X_KEYS = ("x", "data", "X")
_OOD_KEYS = ("ood", "is_ood")
_LABEL_KEYS = ("y", "labels", "label")


@dataclass
class ScoreData:
    """Rows to score: data ``(N, *event_shape)``, optional class labels and OOD flags."""

    name: str
    x: torch.Tensor
    labels: torch.Tensor | None = None
    ood: torch.Tensor | None = None


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError("the file is empty")
    header = [c.strip().strip("\"'").lower() for c in lines[0].split(",")]
    try:
        [float(c) for c in header]
        has_header = False
    except ValueError:
        has_header = True
    rows = lines[1:] if has_header else lines
    table = np.loadtxt(rows, delimiter=",", ndmin=2, dtype=np.float64)
    if not has_header:
        return {"x": table}
    if len(header) != table.shape[1]:
        raise ValueError(f"the header has {len(header)} columns but rows have {table.shape[1]}")
    out, keep = {}, []
    for j, name in enumerate(header):
        if name in _OOD_KEYS + _LABEL_KEYS:
            out[name] = table[:, j]
        else:
            keep.append(j)
    out["x"] = table[:, keep]
    return out


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    ext = path.suffix.lower()
    if ext == ".csv":
        return _read_csv(path)
    if ext in (".npy", ".npz"):
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            files = getattr(loaded, "files", None)
            return {"x": loaded} if files is None else {k: loaded[k] for k in files}
    if ext == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        obj = obj if isinstance(obj, dict) else {"x": obj}
        return {str(k): torch.as_tensor(v).numpy() for k, v in obj.items()}
    raise ValueError(f"unsupported extension {ext!r}: use .npy, .npz, .csv or .pt")


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray | None:
    return next((arrays[k] for k in keys if k in arrays), None)


def _read_file(path: Path, event_shape: tuple[int, ...]) -> ScoreData:
    """All rows of an array file, in file order."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist: check the path")
    try:
        arrays = _read_arrays(path)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot read {path} as data ({first}): check the file") from None
    x = _pick(arrays, _X_KEYS)
    if x is None:
        if len(arrays) != 1:
            raise UserError(f"{path} has no data array: name it 'x' (found {sorted(arrays)})")
        x = next(iter(arrays.values()))
    x = np.asarray(x, dtype=np.float64)
    size = math.prod(event_shape)
    if tuple(x.shape[1:]) != event_shape:
        if x.ndim >= 2 and math.prod(x.shape[1:]) == size:
            x = x.reshape(len(x), *event_shape)  # flat rows (e.g. a CSV) of image models
        else:
            raise UserError(
                f"{path}: datapoints have shape {tuple(x.shape[1:])} but the model expects "
                f"{event_shape}: reshape the data"
            )
    data = ScoreData(path.name, torch.as_tensor(x, dtype=torch.float32))
    for attr, keys in (("ood", _OOD_KEYS), ("labels", _LABEL_KEYS)):
        values = _pick(arrays, keys)
        if values is None:
            continue
        values = np.asarray(values).reshape(-1)
        if len(values) != len(x):
            raise UserError(f"{path}: {len(values)} {attr} values for {len(x)} rows")
        if attr == "ood" and not np.isin(values, (0, 1)).all():
            raise UserError(f"{path}: the ood column must hold 0 (in) or 1 (out) per row")
        setattr(data, attr, torch.as_tensor(values.astype(np.int64)))
    return data


def read_score_data(spec: str, cfg: RunConfig, event_shape: tuple[int, ...]) -> ScoreData:
    """A dataset name (its test split, prepared as the run's data) or an array file."""
    from ppvae.data import KNOWN_DATASETS, load_dataset

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
    """Score ``data`` (and ``ood``) with a trained run; writes a CSV and returns a summary."""
    from ppvae.inference.importance import log_likelihood
    from ppvae.runs import RunPaths, load_model

    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2, got {num_samples}")
    cfg, vae = load_model(run_dir)
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
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(flags.numpy(), scores.numpy()))
    path = Path(out) if out is not None else RunPaths(run_dir).root / "scores.csv"
    _write_csv(path, parts, scores, res)
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


def _write_csv(path: Path, parts: list[ScoreData], scores: torch.Tensor, res: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["source", "row", "label", "ood", "score", "mc_stderr", "khat", "ess", "reliable"]
        )
        i = 0
        for part in parts:
            for row in range(len(part.x)):
                writer.writerow(
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
    os.replace(tmp, path)
