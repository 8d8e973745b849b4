"""Training into a run folder, and the run's dataset and model.

:func:`train_run` resolves a configuration against its dataset, builds the VAE, trains it
with :func:`ppvae.fit` (checkpointing into ``RUN_DIR/checkpoints``) and saves the result;
:func:`load_model` and :func:`load_run_dataset` give the other commands what a run was
trained with. Where each file lives and how it is written is :mod:`ppvae.app.rundir`'s
business. These functions print nothing unless given an ``echo`` callable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch

from ppvae.app.config import RunConfig, UserError
from ppvae.app.rundir import RunDir
from ppvae.data import Dataset, load_dataset
from ppvae.inference import TCVAE_ELBO, AnnealedCapacityELBO, fit
from ppvae.inference.batches import binarize_once
from ppvae.models import VAE

__all__ = [
    "make_objective",
    "resolve_config",
    "resume_config",
    "check_device",
    "load_run_dataset",
    "build_vae",
    "load_model",
    "train_run",
    "split_data",
]

Echo = Callable[[str], None]
# Settings a resumed run may change: they do not alter what was already computed.
RESUMABLE_CHANGES = ("epochs", "device")


def _silent(_: str) -> None:
    pass


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


def load_run_dataset(cfg: RunConfig) -> Dataset:
    """The dataset a run trains on, exactly as configured."""
    return load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        download=cfg.download,
        binarize=cfg.binarize_mode,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )


def resolve_config(cfg: RunConfig, ds: Dataset) -> RunConfig:
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


def build_vae(cfg: RunConfig, event_shape: Sequence[int]) -> VAE:
    """The VAE a (resolved) configuration describes."""
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
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise UserError(
            f"{run.root} holds no run to resume (no config.toml): train it without --resume"
        )
    saved = run.read_config()
    RunConfig.from_dict({**saved.to_dict(), **requested})  # unknown keys, wrong types
    for name, value in requested.items():
        if name not in RESUMABLE_CHANGES and value != getattr(saved, name):
            raise UserError(
                f"cannot resume {run.root} with {name}={value!r} (it was trained with "
                f"{getattr(saved, name)!r}): only {', '.join(RESUMABLE_CHANGES)} may change "
                "on --resume; train into a new --out instead"
            )
    return saved.replace(**{k: v for k, v in requested.items() if k in RESUMABLE_CHANGES})


def train_run(
    cfg: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    dataset: Dataset | None = None,
    resume: bool = False,
    progress: bool = True,
    echo: Echo = _silent,
) -> dict[str, Any]:
    """Train the configured VAE into ``run_dir``; returns the history as a dict.

    ``dataset`` is the run's data when the caller has loaded it already (as
    :func:`load_run_dataset` would); otherwise it is loaded here. With ``resume=True``
    the run continues from ``checkpoints/last.pt`` (if any epoch finished) and ends
    exactly as an uninterrupted run would.
    """
    run = RunDir(run_dir)
    check_device(cfg.device)
    if not resume and run.has_training():
        raise UserError(
            f"{run.root} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )
    ds = load_run_dataset(cfg) if dataset is None else dataset
    cfg = resolve_config(cfg, ds)
    torch.manual_seed(cfg.seed)  # the initial weights depend on it
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(cfg, ds.event_shape)
    # Refuse data the model cannot take before anything is written.
    vae.check_data(ds.test, ds.test_labels if vae.num_labels is not None else None)
    run.write_config(cfg)
    continuing = resume and run.last.is_file()
    echo(ds.describe())
    echo(
        f"{'resuming' if continuing else 'training'} a VAE (latent {cfg.latent_dim}, hidden "
        f"{'-'.join(map(str, cfg.hidden))}, {cfg.likelihood} likelihood) for {cfg.epochs} "
        f"epochs into {run.root}"
    )
    objective = make_objective(cfg)
    history = fit(
        vae,
        ds,
        elbo=objective,
        num_particles=cfg.particles,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        beta=cfg.beta if isinstance(objective, str) else 1.0,
        kl_anneal=cfg.kl_anneal,
        clip_norm=cfg.clip_norm,
        seed=cfg.seed,
        device=cfg.device,
        checkpoint_dir=run.checkpoints,
        resume=continuing,
        patience=cfg.patience,
        progress=progress,
        callback=lambda epoch, h, _: _log_epoch(echo, epoch, cfg.epochs, h),
    )
    record = history.to_dict()
    run.write_history(record)
    run.save_model(vae, history=history, config=cfg.to_dict())
    return record


def make_objective(cfg: RunConfig) -> Any:
    """The objective ``fit`` trains with: a name, or β-TCVAE / annealed-capacity objects
    (whose β or γ are theirs, so ``fit`` then gets β = 1)."""
    if cfg.elbo == "tcvae":
        return TCVAE_ELBO(cfg.beta)
    if cfg.elbo == "capacity":
        return AnnealedCapacityELBO(cfg.capacity, cfg.capacity_steps, cfg.gamma)
    return cfg.elbo


def _log_epoch(echo: Echo, epoch: int, epochs: int, h: Any) -> None:
    """One line per tenth of the run (and the first and last epochs)."""
    if epoch not in (1, epochs) and epoch % max(1, epochs // 10):
        return
    val = f", val ELBO {h.val_elbo[-1]:.2f}" if h.val_elbo else ""
    echo(
        f"epoch {epoch}/{epochs}: train {h.train_objective[-1]:.2f}{val} nats "
        f"({h.seconds[-1]:.2f} s, {h.images_per_second[-1]:.0f} images/s)"
    )


def load_model(run_dir: str | os.PathLike[str]) -> tuple[RunConfig, Any]:
    """The configuration and trained model of a run (in eval mode, on the run's device)."""
    run = RunDir(run_dir).require()
    cfg = run.read_config()
    vae = run.load_model(map_location=check_device(cfg.device))
    return cfg, vae.eval()


def split_data(ds: Dataset, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Data and labels of one split (training data of dynamic binarisation drawn once)."""
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}: use test, val or train")
    x = getattr(ds, split)
    if split == "train" and ds.binarize == "dynamic":
        (x,) = binarize_once(x, seed=0)
    if len(x) == 0:
        raise UserError(f"the {split} split of {ds.name} is empty: evaluate another split")
    return x, getattr(ds, f"{split}_labels")
