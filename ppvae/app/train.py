"""Training into a run folder, and the run's dataset and model.

:func:`train_run` resolves a configuration against its dataset, builds the VAE, trains it
with :func:`ppvae.fit` (checkpointing into ``RUN_DIR/checkpoints``) and saves the result;
:func:`load_model` and :func:`load_run_dataset` give the other commands what a run was
trained with. Where each file lives and how it is written is :mod:`ppvae.app.rundir`'s
business. These functions print nothing unless given an ``echo`` callable.

A run folder is created only once everything that could refuse the run has been checked
(the output is writable, the dataset loads, the model, objective and optimizer build and
the data lie in the likelihood's support), so a refused ``train`` leaves nothing behind;
the folder's lock (:meth:`ppvae.app.rundir.RunDir.lock`) is then held until training ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch

from ppvae.app.config import RunConfig, UserError
from ppvae.app.rundir import RunDir
from ppvae.app.vq import build_vqvae, train_code_priors, vq_arguments, vq_objective
from ppvae.data import Dataset, load_dataset
from ppvae.inference import TCVAE_ELBO, AnnealedCapacityELBO, checkpoint, fit
from ppvae.inference.batches import binarize_once
from ppvae.inference.distributed import ProcessGroup, process_group
from ppvae.inference.options import FitOptions
from ppvae.inference.prepare import check_model_once, prepare
from ppvae.inference.rng import seeded
from ppvae.models import VAE

__all__ = [
    "make_objective",
    "resolve_config",
    "resume_config",
    "check_device",
    "load_run_dataset",
    "model_arguments",
    "build_vae",
    "load_model",
    "check_event_shape",
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
    if cfg.model == "vqvae" and cfg.prior == "normal":
        changes["prior"] = "learned"  # the default prior of a VAE means "learned" here
    if cfg.conditional and cfg.num_labels is None:
        if ds.num_labels is None:
            raise UserError(
                f"dataset {ds.name!r} has no labels, so a conditional VAE cannot be trained "
                "on it: drop conditional or use labelled data"
            )
        changes["num_labels"] = int(ds.num_labels)
    return cfg.replace(**changes)


def model_class(cfg: RunConfig) -> str:
    """The name of the model class a configuration builds (as checkpoints record it)."""
    return "VQVAE" if cfg.model == "vqvae" else "VAE"


def model_arguments(cfg: RunConfig) -> dict[str, Any]:
    """The model's constructor arguments (all but the event shape) a configuration gives."""
    if cfg.model == "vqvae":
        return vq_arguments(cfg)
    return dict(
        latent_dim=cfg.latent_dim,
        prior=cfg.prior,
        likelihood=cfg.likelihood,
        guide=cfg.guide,
        encoder=cfg.encoder,
        decoder=cfg.decoder,
        hidden=list(cfg.hidden),
        activation=cfg.activation,
        num_labels=cfg.num_labels if cfg.conditional else None,
        prior_kwargs=dict(cfg.prior_kwargs),
        likelihood_kwargs=dict(cfg.likelihood_kwargs),
        guide_kwargs=dict(cfg.guide_kwargs),
    )


def build_vae(cfg: RunConfig, event_shape: Sequence[int]) -> Any:
    """The VAE (or, with ``model = "vqvae"``, the VQ-VAE) a configuration describes."""
    if cfg.model == "vqvae":
        return build_vqvae(cfg, event_shape)
    return VAE(event_shape, **{**model_arguments(cfg), "hidden": tuple(cfg.hidden)})


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
    done = _epochs_done(run)
    if requested.get("epochs") is not None and requested["epochs"] < done:
        raise UserError(
            f"{run.root} has already trained {done} epochs, so --epochs {requested['epochs']} "
            f"cannot continue it: pass --epochs {done} or more to extend it (config.toml "
            "then records the new total), or omit --epochs"
        )
    for name, value in requested.items():
        if name not in RESUMABLE_CHANGES and value != getattr(saved, name):
            raise UserError(
                f"cannot resume {run.root} with {name}={value!r} (it was trained with "
                f"{getattr(saved, name)!r}): only {', '.join(RESUMABLE_CHANGES)} may change "
                "on --resume; train into a new --out instead"
            )
    return saved.replace(**{k: v for k, v in requested.items() if k in RESUMABLE_CHANGES})


def _epochs_done(run: RunDir) -> int:
    """How many epochs the run's last checkpoint has trained (0 before the first)."""
    if not run.last.is_file():
        return 0
    history = checkpoint.load_checkpoint(run.last).get("history") or {}
    return int(history.get("epochs_completed") or 0)


def _fit_settings(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`ppvae.fit` that a configuration decides."""
    objective = make_objective(cfg)
    return dict(
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
        patience=cfg.patience,
    )


def _check_training(vae: VAE, ds: Dataset, settings: dict[str, Any]) -> None:
    """Everything ``fit`` checks before its first epoch, without a checkpoint folder.

    ``fit``'s own set-up (the data of every split in the likelihood's support, the
    objective, the optimizer, early stopping's validation data) and one loss evaluation,
    on a random stream of their own: the run itself is unchanged.
    """
    if settings["patience"] is not None and len(ds.val) == 0:
        raise UserError(
            "--patience (early stopping) needs validation data, but val_fraction = 0 leaves "
            "none: set val_fraction above 0 in the configuration, or drop --patience"
        )
    if settings["elbo"] == "iwae" and (settings["beta"] != 1 or settings["kl_anneal"] > 0):
        raise UserError(
            "--beta and --kl-anneal weight the KL term of the ELBO, which --elbo iwae does not "
            "have: use --elbo trace or meanfield, or --beta 1 and --kl-anneal 0"
        )
    with seeded(0):
        check_model_once(prepare(vae, ds, FitOptions(**settings, progress=False), loader_seed=0))


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
    run = RunDir(run_dir).check_writable("--out")
    check_device(cfg.device)
    # Under torchrun every rank runs this function; rank 0 alone writes, speaks and holds
    # the run folder's lock (for the whole group).
    group = process_group(None, cfg.device)
    main = group is None or group.is_main
    echo = echo if main else _silent
    _refuse_overwrite(run, resume)
    ds = load_run_dataset(cfg) if dataset is None else dataset
    cfg = resolve_config(cfg, ds)
    torch.manual_seed(cfg.seed)  # the initial weights depend on it
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(cfg, ds.event_shape)
    # Refuse what the run cannot use before anything is written.
    vae.check_data(ds.test, ds.test_labels if vae.num_labels is not None else None)
    settings = _fit_settings(cfg)
    if cfg.model == "vqvae":
        settings["elbo"] = vq_objective(vae)
    _check_training(vae, ds, settings)
    with run.lock():
        if main:
            _refuse_overwrite(run, resume)  # again: another process may have trained meanwhile
        return _train_locked(cfg, run, vae, ds, settings, resume, progress, echo, group)


def _refuse_overwrite(run: RunDir, resume: bool) -> None:
    if not resume and run.has_training():
        raise UserError(
            f"{run.root} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )


def _train_locked(
    cfg: RunConfig,
    run: RunDir,
    vae: VAE,
    ds: Dataset,
    settings: dict[str, Any],
    resume: bool,
    progress: bool,
    echo: Echo,
    group: ProcessGroup | None,
) -> dict[str, Any]:
    """The part of :func:`train_run` that writes: configuration, checkpoints, model."""
    main = group is None or group.is_main
    continuing = resume and run.last.is_file()
    if group is not None:
        group.barrier("the start of training")  # every rank has read the folder as it was
    if main:
        run.write_config(cfg)
    echo(ds.describe())
    what = (
        f"VQ-VAE ({cfg.num_codes} codes of size {cfg.code_dim}, grid "
        f"{'x'.join(map(str, cfg.grid))}, {cfg.posterior} posterior"
        if cfg.model == "vqvae"
        else f"VAE (latent {cfg.latent_dim}"
    )
    echo(
        f"{'resuming' if continuing else 'training'} a {what}, hidden "
        f"{'-'.join(map(str, cfg.hidden))}, {cfg.likelihood} likelihood) for {cfg.epochs} "
        f"epochs into {run.root}"
    )
    history = fit(
        vae,
        ds,
        **settings,
        checkpoint_dir=run.checkpoints,
        resume=continuing,
        progress=progress,
        callback=lambda epoch, h, _: _log_epoch(echo, epoch, cfg.epochs, h),
    )
    if cfg.model == "vqvae":
        train_code_priors(vae, ds, cfg, progress=progress, echo=echo)
    record = history.to_dict()
    if main:
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
    vae = run.load_model(
        map_location=check_device(cfg.device),
        expected=model_arguments(cfg),
        expected_class=model_class(cfg),
    )
    return cfg, vae.eval()


def check_event_shape(run_dir: str | os.PathLike[str], vae: Any, ds: Dataset) -> None:
    """Refuse a model whose datapoints are not the shape of the run's dataset."""
    if tuple(vae.event_shape) != tuple(ds.event_shape):
        run = RunDir(run_dir)
        raise UserError(
            f"{run.model} was not trained with {run.config} (event_shape: "
            f"{list(ds.event_shape)} in config.toml's dataset {ds.name}, "
            f"{list(vae.event_shape)} in the checkpoint): put the run's own model.pt back, "
            f"or retrain with 'ppvae train {run.config} --out NEW_DIR'"
        )


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
