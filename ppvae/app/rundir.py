"""The run folder: where each file of a run lives, and every read and write of them.

A run folder holds everything needed to repeat and inspect one training run::

    RUN_DIR/config.toml          resolved configuration (``ppvae train RUN_DIR/config.toml``)
    RUN_DIR/checkpoints/last.pt  checkpoint after every epoch (``--resume`` continues it)
    RUN_DIR/checkpoints/best.pt  checkpoint of the best validation ELBO
    RUN_DIR/history.json         per-epoch training record
    RUN_DIR/model.pt             the final model
    RUN_DIR/metrics.json         the latest evaluation: log-likelihood, errors, k-hat verdict
    RUN_DIR/loglik_<split>.pt    per-datapoint estimates and diagnostics of that evaluation
    RUN_DIR/bdmc.json            bounds that certify an AIS schedule (``ppvae bdmc``)
    RUN_DIR/scores.csv           anomaly scores (``ppvae score``, unless ``--out`` says otherwise)
    RUN_DIR/samples.png          a sample grid (``ppvae sample``, likewise)
    RUN_DIR/figures/*.png        figures, and RUN_DIR/report.html embedding them

Every file this module writes goes through :func:`atomic_write` (a temporary file in the
same folder, then :func:`os.replace`), so a reader, or a run killed mid-write, never sees
half a file. The two writers that live in the library, :func:`ppvae.plots.save_figure`
for the figures and :func:`ppvae.inference.checkpoint.save` for checkpoints (also written
by :func:`ppvae.fit` during training), write atomically in the same way.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ppvae.app.config import RunConfig, UserError, read_toml, to_toml
from ppvae.inference import checkpoint

__all__ = [
    "RunDir",
    "atomic_write",
    "write_text",
    "write_json",
    "write_csv",
    "save_config",
    "load_config",
]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place.

    The folder is created if missing. If ``write`` raises, the temporary file is removed
    and ``path`` is left as it was (absent, or its previous content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically (non-finite floats become null)."""
    return write_text(path, json.dumps(_finite(data), indent=2) + "\n")


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Write a CSV file with a header row atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    return atomic_write(path, write)


def save_config(config: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as TOML, atomically."""
    return write_text(path, "# ppvae run configuration\n" + to_toml(config.to_dict()))


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a TOML configuration (a run folder means its ``config.toml``).

    Problems raise :class:`UserError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.toml"
    return RunConfig.from_dict(read_toml(path), source=str(path))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class RunDir:
    """The files of one run folder, and their readers and writers."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.config = self.root / "config.toml"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.history = self.root / "history.json"
        self.model = self.root / "model.pt"
        self.metrics = self.root / "metrics.json"
        self.bdmc = self.root / "bdmc.json"
        self.scores = self.root / "scores.csv"
        self.samples = self.root / "samples.png"
        self.figures = self.root / "figures"
        self.report = self.root / "report.html"

    def loglik(self, split: str) -> Path:
        """The per-datapoint evaluation record of ``split``."""
        return self.root / f"loglik_{split}.pt"

    def require(self) -> RunDir:
        """Raise :class:`UserError` unless this is a run folder."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a run directory: give the folder")
        if not self.root.is_dir():
            raise UserError(f"run directory {self.root} does not exist: check the path")
        if not self.config.is_file():
            raise UserError(
                f"{self.root} is not a ppvae run directory (no config.toml): "
                "create one with 'ppvae train --out DIR'"
            )
        return self

    def has_training(self) -> bool:
        """Whether a training run has started here (a checkpoint or a final model exists)."""
        return self.last.exists() or self.model.exists()

    # -------------------------------------------------------------- configuration
    def read_config(self) -> RunConfig:
        """The run's saved configuration."""
        return load_config(self.config)

    def write_config(self, config: RunConfig) -> Path:
        """Save the (resolved) configuration as ``config.toml``."""
        return save_config(config, self.config)

    # -------------------------------------------------------------- model
    def save_model(
        self, vae: Any, *, history: Any = None, config: dict[str, Any] | None = None
    ) -> Path:
        """Save the trained model with its history and configuration as ``model.pt``."""
        return checkpoint.save(vae, self.model, history=history, config=config)

    def load_model(self, map_location: torch.device | str = "cpu") -> Any:
        """The trained model; :class:`UserError` when training has not finished."""
        if not self.model.is_file():
            fix = "ppvae train --resume --out " + str(self.root)
            raise UserError(f"{self.root} has not finished training (no model.pt): run '{fix}'")
        return checkpoint.load(self.model, map_location=map_location)

    # -------------------------------------------------------------- records
    def read_history(self) -> dict[str, Any] | None:
        """The training history, or ``None`` before training has finished."""
        return _read_json(self.history)

    def write_history(self, record: dict[str, Any]) -> Path:
        """Save the training history (``History.to_dict()``)."""
        return write_json(self.history, record)

    def read_metrics(self) -> dict[str, Any] | None:
        """The latest evaluation's summary, or ``None`` before any evaluation."""
        return _read_json(self.metrics)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Save an evaluation's summary."""
        return write_json(self.metrics, metrics)

    def read_bdmc(self) -> dict[str, Any] | None:
        """The latest bidirectional Monte Carlo check, or ``None`` before any."""
        return _read_json(self.bdmc)

    def write_bdmc(self, record: dict[str, Any]) -> Path:
        """Save a bidirectional Monte Carlo check (``ppvae bdmc``)."""
        return write_json(self.bdmc, record)

    def read_loglik(self, split: str) -> dict[str, Any]:
        """The per-datapoint record of the evaluation of ``split``."""
        path = self.loglik(split)
        if not path.is_file():
            raise UserError(
                f"{self.root} has no {split} evaluation ({path.name} missing): run "
                f"'ppvae evaluate {self.root} --split {split}' first"
            )
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(
                f"cannot read {path} ({type(err).__name__}): evaluate the run again"
            ) from None

    def write_loglik(self, split: str, record: dict[str, Any]) -> Path:
        """Save the per-datapoint record (tensors and plain values) of an evaluation."""
        return atomic_write(self.loglik(split), lambda tmp: torch.save(record, tmp))

    def write_report(self, content: str) -> Path:
        """Save the HTML report."""
        return write_text(self.report, content)

    # -------------------------------------------------------------- clean-up
    def clear(self) -> None:
        """Remove an earlier run's results (only the files a run writes).

        A folder that exists, is not empty and holds no ``config.toml`` is refused with a
        :class:`UserError`: it is not ours to empty.
        """
        if not self.config.is_file():
            if self.root.exists() and any(self.root.iterdir()):
                raise UserError(
                    f"{self.root} exists and is not a ppvae run directory: choose another --out"
                )
            return
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        shutil.rmtree(self.figures, ignore_errors=True)
        for path in (self.model, self.history, self.metrics, self.bdmc, self.report, self.config):
            path.unlink(missing_ok=True)
        for path in self.root.glob("loglik_*.pt"):
            path.unlink()
