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
    RUN_DIR/ppvae.lock           the lock a command holds while it works here (ppvae.app.runlock)

Every file this module writes goes through :func:`atomic_write` (a temporary file in the
same folder, then :func:`os.replace`), so a reader, or a run killed mid-write, never sees
half a file. The two writers that live in the library, :func:`ppvae.plots.save_figure`
for the figures and :func:`ppvae.inference.checkpoint.save` for checkpoints (also written
by :func:`ppvae.fit` during training), write atomically in the same way.

A process killed mid-write leaves its temporary file behind (``.NAME.tmpPID``,
``.STEM.tmpPID.png`` or ``.NAME.XXXXXXXX.tmp``). :func:`remove_stale_temporaries` removes
them: every successful :func:`atomic_write` removes those of dead processes beside its
target, and a command that takes a run folder's lock (:meth:`RunDir.lock`, see
:mod:`ppvae.app.runlock`) removes all of them, since no other process writes there then.

Commands check that they can write their outputs before doing any work
(:func:`check_writable_dir`, :func:`check_writable_file`), so that a read-only folder, or a
file where a folder should be, is reported in one line at once rather than after training
or an estimate.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ppvae.app.config import RunConfig, UserError, read_toml, to_toml
from ppvae.app.runlock import LOCK_NAME, lock_run
from ppvae.app.tempfiles import file_digest, remove_stale_temporaries
from ppvae.inference import checkpoint
from ppvae.inference.distributed import is_main_process

__all__ = [
    "RunDir",
    "atomic_write",
    "write_text",
    "write_json",
    "write_csv",
    "save_config",
    "load_config",
    "check_writable_dir",
    "check_writable_file",
    "file_digest",
    "remove_stale_temporaries",
]


def _cannot_write(path: Path, why: str, flag: str) -> UserError:
    return UserError(f"cannot write {path}: {why}: choose another {flag}")


def check_writable_dir(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """Raise :class:`UserError` unless a folder can be written at ``path`` (or created there).

    Nothing is created: a missing folder is judged by its nearest existing ancestor.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise _cannot_write(path, f"{probe} is a broken link", flag)
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise _cannot_write(path, f"{probe} is a file, not a directory", flag)
    try:  # a real write: permission bits say nothing for root or read-only file systems
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        why = f"{probe} is not writable ({err.strerror}); make it writable or"
        raise UserError(f"cannot write {path}: {why} choose another {flag}") from None


def check_writable_file(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """Raise :class:`UserError` unless a file can be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise _cannot_write(path, "it is a directory, not a file", flag)
    check_writable_dir(path.parent, flag)


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
    remove_stale_temporaries(path.parent)
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


def _plain(value: Any) -> Any:
    """Tuples as lists and numbers as they compare in JSON, for comparing configurations."""
    return json.loads(json.dumps(value, default=str))


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

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run folder's lock for a block (creating the folder if missing).

        Temporary files of killed writes are removed once the lock is held. Under torchrun
        rank 0 holds it for the whole group; the other ranks neither lock nor write.
        """
        if not is_main_process():
            yield self
            return
        with lock_run(self.root):
            for folder in (self.root, self.checkpoints, self.figures):
                remove_stale_temporaries(folder, all_writers=True)
            yield self

    def check_writable(self, flag: str = "run directory") -> RunDir:
        """Raise :class:`UserError` unless every file a command writes here can be written.

        ``flag`` names what the user would change (e.g. ``--out``).
        """
        check_writable_dir(self.root, flag)
        fix = f"move it out of the way, or choose another {flag}"
        for folder in (self.checkpoints, self.figures):
            if folder.exists() and not folder.is_dir():
                raise UserError(f"cannot write {folder}: it is a file, not a directory: {fix}")
        files = (self.config, self.model, self.history, self.metrics, self.report, self.bdmc)
        for path in (*files, self.scores, self.samples, *self.root.glob("loglik_*")):
            if path.is_dir():
                raise UserError(f"cannot write {path}: it is a directory, not a file: {fix}")
        return self

    def model_digest(self) -> str | None:
        """The SHA-256 of ``model.pt``, or ``None`` when there is none."""
        return file_digest(self.model) if self.model.is_file() else None

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

    def load_model(
        self,
        map_location: torch.device | str = "cpu",
        expected: dict[str, Any] | None = None,
        expected_class: str = "VAE",
    ) -> Any:
        """The trained model; :class:`UserError` when training has not finished.

        ``expected`` (and ``expected_class``) hold the constructor arguments (and class)
        ``config.toml`` implies; a checkpoint
        stored with other ones (another run's ``model.pt`` copied here, say) is refused
        before any network is built.
        """
        if not self.model.is_file():
            fix = "ppvae train --resume --out " + str(self.root)
            raise UserError(f"{self.root} has not finished training (no model.pt): run '{fix}'")
        saved = checkpoint.load_checkpoint(self.model, map_location=map_location)
        if expected is not None:
            self._check_model_config(saved, expected, expected_class)
        return checkpoint.restore_model(saved, source=str(self.model), map_location=map_location)

    def _check_model_config(
        self, saved: dict[str, Any], expected: dict[str, Any], expected_class: str
    ) -> None:
        stored = saved.get("model_config") or {}
        if saved.get("model_class") != expected_class:
            changed = [
                f"class: {expected_class} in config.toml, {saved.get('model_class')} in the "
                "checkpoint"
            ]
        else:
            changed = [
                f"{k}: {_plain(v)!r} in config.toml, {_plain(stored.get(k))!r} in the checkpoint"
                for k, v in expected.items()
                if _plain(v) != _plain(stored.get(k))
            ]
        if changed:
            raise UserError(
                f"{self.model} was not trained with {self.config} ({'; '.join(changed)}): "
                f"put the run's own model.pt back, or retrain with 'ppvae train {self.config} "
                "--out NEW_DIR'"
            )

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
    def check_clearable(self) -> None:
        """Raise :class:`UserError` if this folder holds files but is not a run folder."""
        if self.config.is_file() or not self.root.is_dir():
            return
        if any(p.name != LOCK_NAME for p in self.root.iterdir()):
            raise UserError(
                f"{self.root} exists and is not a ppvae run directory: choose another --out"
            )

    def clear(self) -> None:
        """Remove an earlier run's results (only the files a run writes).

        A folder that exists, is not empty and holds no ``config.toml`` is refused with a
        :class:`UserError`: it is not ours to empty.
        """
        self.check_clearable()
        if not self.config.is_file():
            return
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        shutil.rmtree(self.figures, ignore_errors=True)
        for path in (self.model, self.history, self.metrics, self.bdmc, self.report, self.config):
            path.unlink(missing_ok=True)
        for path in self.root.glob("loglik_*.pt"):
            path.unlink()
