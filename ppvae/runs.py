"""Run directories: their layout, training into them, and loading what they hold.

A run folder holds everything needed to repeat and inspect one training run::

    RUN_DIR/config.toml          resolved configuration (``ppvae train RUN_DIR/config.toml``)
    RUN_DIR/checkpoints/last.pt  checkpoint after every epoch (``--resume`` continues it)
    RUN_DIR/checkpoints/best.pt  checkpoint of the best validation ELBO
    RUN_DIR/history.json         per-epoch training record
    RUN_DIR/model.pt             the final model
    RUN_DIR/metrics.json         the latest evaluation: log-likelihood, errors, k-hat verdict
    RUN_DIR/loglik_<split>.pt    per-datapoint estimates and diagnostics of that evaluation
    RUN_DIR/figures/*.png        figures, and RUN_DIR/report.html embedding them

This module trains into a run folder and loads what it holds; :mod:`ppvae.evaluation`
evaluates and compares runs, :mod:`ppvae.sampling` draws sample grids and
:mod:`ppvae.report` writes the report. The command-line interface (:mod:`ppvae.cli`)
only parses arguments and calls these functions, which print nothing unless given an
``echo`` callable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ppvae.config import RunConfig, UserError, load_config, save_config

__all__ = [
    "RunPaths",
    "resolve_config",
    "resume_config",
    "check_device",
    "load_run_dataset",
    "build_vae",
    "load_model",
    "train_run",
    "split_data",
    "write_json",
]

Echo = Callable[[str], None]
# Settings a resumed run may change: they do not alter what was already computed.
RESUMABLE_CHANGES = ("epochs", "device")


def _silent(_: str) -> None:
    pass


class RunPaths:
    """The files of one run folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.config = self.root / "config.toml"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.history = self.root / "history.json"
        self.model = self.root / "model.pt"
        self.metrics = self.root / "metrics.json"
        self.figures = self.root / "figures"
        self.report = self.root / "report.html"

    def loglik(self, split: str) -> Path:
        return self.root / f"loglik_{split}.pt"

    def require(self) -> RunPaths:
        """Raise :class:`UserError` unless this is a run folder."""
        if not self.root.is_dir():
            raise UserError(f"run directory {self.root} does not exist: check the path")
        if not self.config.is_file():
            raise UserError(
                f"{self.root} is not a ppvae run directory (no config.toml): "
                "create one with 'ppvae train --out DIR'"
            )
        return self


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically (non-finite floats become null)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_finite(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def check_device(name: str) -> torch.device:
    """The torch device called ``name``; :class:`UserError` if it is unknown or absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available: use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices): "
            "pick another index"
        )
    return device


def load_run_dataset(cfg: RunConfig) -> Any:
    """The dataset a run trains on, exactly as configured."""
    from ppvae.data import load_dataset

    return load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        download=cfg.download,
        binarize=cfg.binarize_mode,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )


def resolve_config(cfg: RunConfig, ds: Any) -> RunConfig:
    """Fill in what the dataset decides: its suggested likelihood and the number of classes."""
    changes: dict[str, Any] = {"binarize": ds.binarize or "none"}
    if cfg.likelihood is None:
        changes["likelihood"] = ds.likelihood
    if (cfg.likelihood in (None, ds.likelihood)) and not cfg.likelihood_kwargs:
        changes["likelihood_kwargs"] = dict(ds.likelihood_kwargs)
    if cfg.conditional and cfg.num_labels is None:
        if ds.num_labels is None:
            raise UserError(
                f"dataset {ds.name!r} has no labels, so a conditional VAE cannot be trained "
                "on it: drop conditional or use labelled data"
            )
        changes["num_labels"] = int(ds.num_labels)
    return cfg.replace(**changes)


def build_vae(cfg: RunConfig, event_shape: Sequence[int]) -> Any:
    """The VAE a (resolved) configuration describes."""
    from ppvae.models.vae import VAE

    return VAE(
        event_shape,
        cfg.latent_dim,
        prior=cfg.prior,
        likelihood=cfg.likelihood,
        guide=cfg.guide,
        encoder=cfg.encoder,
        decoder=cfg.decoder,
        hidden=tuple(cfg.hidden),
        activation=cfg.activation,
        num_labels=cfg.num_labels if cfg.conditional else None,
        prior_kwargs=cfg.prior_kwargs,
        likelihood_kwargs=cfg.likelihood_kwargs,
        guide_kwargs=cfg.guide_kwargs,
    )


def resume_config(run_dir: str | os.PathLike[str], requested: dict[str, Any]) -> RunConfig:
    """The saved configuration of a run to resume, with the few changes a resume allows.

    ``requested`` holds only the settings the user gave explicitly (flags, or the keys
    of a configuration file); any that would change the run is refused.
    """
    paths = RunPaths(run_dir)
    if not paths.config.is_file():
        raise UserError(
            f"{paths.root} holds no run to resume (no config.toml): train it without --resume"
        )
    saved = load_config(paths.config)
    RunConfig.from_dict({**saved.to_dict(), **requested})  # unknown keys, wrong types
    for name, value in requested.items():
        if name not in RESUMABLE_CHANGES and value != getattr(saved, name):
            raise UserError(
                f"cannot resume {paths.root} with {name}={value!r} (it was trained with "
                f"{getattr(saved, name)!r}): only {', '.join(RESUMABLE_CHANGES)} may change "
                "on --resume; train into a new --out instead"
            )
    return saved.replace(**{k: v for k, v in requested.items() if k in RESUMABLE_CHANGES})


def train_run(
    cfg: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    echo: Echo = _silent,
) -> dict[str, Any]:
    """Train the configured VAE into ``run_dir``; returns the history as a dict.

    With ``resume=True`` the run continues from ``checkpoints/last.pt`` (if any epoch
    finished) and ends exactly as an uninterrupted run would.
    """
    import pyro

    from ppvae.inference import checkpoint
    from ppvae.inference.train import fit

    paths = RunPaths(run_dir)
    check_device(cfg.device)
    if not resume and (paths.last.exists() or paths.model.exists()):
        raise UserError(
            f"{paths.root} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )
    ds = load_run_dataset(cfg)
    cfg = resolve_config(cfg, ds)
    torch.manual_seed(cfg.seed)  # the initial weights depend on it
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(cfg, ds.event_shape)
    # Refuse data the model cannot take before anything is written.
    vae.check_data(ds.test, ds.test_labels if vae.num_labels is not None else None)
    save_config(cfg, paths.config)
    continuing = resume and paths.last.is_file()
    echo(ds.describe())
    echo(
        f"{'resuming' if continuing else 'training'} a VAE (latent {cfg.latent_dim}, hidden "
        f"{'-'.join(map(str, cfg.hidden))}, {cfg.likelihood} likelihood) for {cfg.epochs} "
        f"epochs into {paths.root}"
    )
    history = fit(
        vae,
        ds,
        elbo=cfg.elbo,
        num_particles=cfg.particles,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        beta=cfg.beta,
        kl_anneal=cfg.kl_anneal,
        clip_norm=cfg.clip_norm,
        seed=cfg.seed,
        device=cfg.device,
        checkpoint_dir=paths.checkpoints,
        resume=continuing,
        patience=cfg.patience,
        progress=progress,
        callback=lambda epoch, h, _: _log_epoch(echo, epoch, cfg.epochs, h),
    )
    record = history.to_dict()
    write_json(paths.history, record)
    checkpoint.save(vae, paths.model, history=history, config=cfg.to_dict())
    return record


def _log_epoch(echo: Echo, epoch: int, epochs: int, h: Any) -> None:
    """One line per tenth of the run (and the first and last epochs)."""
    if epoch not in (1, epochs) and epoch % max(1, epochs // 10):
        return
    val = f", val ELBO {h.val_elbo[-1]:.2f}" if h.val_elbo else ""
    echo(
        f"epoch {epoch}/{epochs}: train {h.train_elbo[-1]:.2f}{val} nats "
        f"({h.seconds[-1]:.2f} s, {h.images_per_second[-1]:.0f} images/s)"
    )


def load_model(run_dir: str | os.PathLike[str]) -> tuple[RunConfig, Any]:
    """The configuration and trained model of a run (in eval mode, on the run's device)."""
    from ppvae.inference import checkpoint

    paths = RunPaths(run_dir).require()
    cfg = load_config(paths.config)
    if not paths.model.is_file():
        fix = "ppvae train --resume --out " + str(paths.root)
        raise UserError(f"{paths.root} has not finished training (no model.pt): run '{fix}'")
    vae = checkpoint.load(paths.model, map_location=check_device(cfg.device))
    return cfg, vae.eval()


def split_data(ds: Any, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Data and labels of one split (training data of dynamic binarisation drawn once)."""
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}: use test, val or train")
    x = getattr(ds, split)
    if split == "train" and ds.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    if len(x) == 0:
        raise UserError(f"the {split} split of {ds.name} is empty: evaluate another split")
    return x, getattr(ds, f"{split}_labels")
