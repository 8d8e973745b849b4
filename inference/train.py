"""Stochastic variational inference for VAEs with ``torch.optim`` (Pyro's PyTorch-native SVI).

The loop calls ``elbo.differentiable_loss(model, guide, x_batch, [y_batch], num_data=N)`` and
steps a ``torch.optim`` optimizer over ``vae.parameters()``; parameters stay in their modules
(no global param store), so several models can train in one process.

:func:`fit` reads as its three steps: :func:`~ppvae.inference.prepare.prepare` (data,
objective, optimizer, loader, resumption), :func:`train_epoch` (one pass of
:func:`~ppvae.inference.step.train_step` over the batches) and :func:`end_epoch`
(validation, early stopping, checkpoint).

References
----------
Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR.
Hoffman, Blei, Wang & Paisley (2013), "Stochastic Variational Inference", JMLR 14.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm import tqdm

from ppvae.inference.batches import TrainingData
from ppvae.inference.distributed import ProcessGroup, process_group
from ppvae.inference.distributed_fit import distribute_run, sharded_validation
from ppvae.inference.history import History
from ppvae.inference.objectives import check_objective
from ppvae.inference.options import FitOptions
from ppvae.inference.prepare import TrainingRun, check_model_once, prepare
from ppvae.inference.resume import save_run
from ppvae.inference.rng import derive_seeds, rank_seed, seeded
from ppvae.inference.scaling import kl_weight
from ppvae.inference.step import TrainingDivergedError, train_step, validation_elbo
from ppvae.models.programs import local_params_method

__all__ = ["fit", "train_epoch", "end_epoch"]


@local_params_method
def fit(
    vae: Any,
    train: torch.Tensor | TrainingData,
    *,
    y: torch.Tensor | None = None,
    val: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    elbo: str | Any = "trace",
    num_particles: int = 1,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | Callable[[list[torch.Tensor]], torch.optim.Optimizer] = "adam",
    beta: float = 1.0,
    kl_anneal: int = 0,
    clip_norm: float | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    patience: int | None = None,
    binarize: str | None = None,
    progress: bool = True,
    callback: Callable[[int, History, Any], None] | None = None,
    distributed: bool | None = None,
) -> History:
    """Train ``vae`` by stochastic variational inference on minibatches.

    Parameters
    ----------
    vae
        A :class:`~ppvae.models.vae.VAE`, or any object with Pyro programs ``model(x, [y],
        num_data=)`` and ``guide(...)`` and ``parameters()`` (e.g. an ``nn.Module`` holding
        a model and a guide). Moved to ``device``; ``check_data(x, y)`` is called once when
        it exists.
    train
        Training data ``(N, *event_shape)``, or a dataset such as ``ppvae.load_dataset``'s
        (anything with the attributes of :class:`~ppvae.inference.batches.TrainingData`),
        whose train split, validation split and binarisation mode are then used unless
        given explicitly (its labels too, for a conditional VAE).
    y, val, val_y
        Training labels, validation data and labels.
    elbo, num_particles
        The objective (see :func:`~ppvae.inference.objectives.make_elbo`) and its number of
        particles.
    epochs, batch_size, lr, optimizer, clip_norm
        Passes over the data, minibatch size, learning rate (ignored when ``optimizer`` is
        a callable ``params -> torch.optim.Optimizer``), optimizer name, and gradient-norm
        clipping.
    beta, kl_anneal
        Weight β of the latent sites (β-VAE, :class:`~ppvae.inference.scaling.LatentScale`):
        the objective is E_q[log p(x | z)] − β·KL(q ‖ p): the ELBO at β = 1, a looser lower
        bound on log p(x) for β > 1, and no bound for β < 1. ``kl_anneal = E`` ramps the
        weight linearly to β over the first E epochs
        (:func:`~ppvae.inference.scaling.kl_weight`). Not available with ``elbo="iwae"``.
    seed
        The run's one seed: the loader's generator (batch order, dynamic binarisation) and
        the stream Pyro samples from are both derived from it
        (:func:`~ppvae.inference.rng.derive_seeds`). Training draws from its own seeded
        stream (:func:`~ppvae.inference.rng.seeded`), so the caller's global random state
        is the same after ``fit`` as before. ``None`` draws the seed from torch's global
        stream (advancing it by one draw), so ``torch.manual_seed`` before ``fit`` still
        makes a run reproducible.
    device
        Where the model and data live; the data are moved there once.
    checkpoint_dir, resume
        Write ``last.pt`` at the end of every epoch, and ``best.pt`` whenever the validation
        ELBO improves (atomically, only after a successful epoch). ``resume=True`` continues
        from ``last.pt``: with the same arguments (checked), the result equals an
        uninterrupted run's exactly.
    patience
        Early stopping: stop after ``patience`` epochs without a better validation ELBO.
        When set, the parameters of the best epoch are restored at the end.
    binarize
        ``"dynamic"``: a fresh Bernoulli draw of the training data per epoch (data in
        [0, 1]); validation data are drawn once with a fixed seed
        (:func:`~ppvae.inference.batches.binarize_once`). ``None`` takes a
        Dataset's mode, else none.
    progress
        A progress bar per epoch, shown only when stderr is a terminal.
    callback
        Called as ``callback(epoch, history, vae)`` after each epoch (and its checkpoint),
        on every rank of a distributed run.
    distributed
        Train on the ranks of a ``torchrun`` launch (:mod:`ppvae.inference.distributed`;
        ``None``, the default, detects one from ``RANK`` and ``WORLD_SIZE``, ``False``
        trains on this process alone). Each rank holds all the data and takes its share of
        every global batch of ``batch_size``; the gradients are averaged so that a step
        equals the single-process step on that global batch; rank 0 alone writes
        checkpoints, which resume with any number of ranks. ``device="cuda"`` means the
        GPU ``LOCAL_RANK`` of each rank.

    Returns
    -------
    History
        ``train_objective`` is the training objective per datapoint averaged over the epoch
        (β-weighted when β ≠ 1); ``val_elbo`` is the objective at β = 1 on the validation
        data with the end-of-epoch parameters
        (:func:`~ppvae.inference.step.validation_elbo`).

    Raises
    ------
    TrainingDivergedError
        The loss became NaN or infinite (the last checkpoint is left intact).
    """
    group = process_group(distributed, device)
    if group is not None:
        device = group.device(device)
    options = FitOptions(
        elbo=elbo,
        num_particles=num_particles,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        beta=beta,
        kl_anneal=kl_anneal,
        clip_norm=clip_norm,
        seed=seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        patience=patience,
        progress=progress,
    )
    check_objective(vae, elbo)
    loader_seed, sampling_seed = derive_seeds(seed if group is None else group.shared_seed(seed), 2)
    if group is not None:
        sampling_seed = rank_seed(sampling_seed, group.rank)
    with seeded(sampling_seed):
        run = prepare(
            vae,
            train,
            options,
            y=y,
            val=val,
            val_y=val_y,
            binarize=binarize,
            loader_seed=loader_seed,
        )
        check_model_once(run)
        if group is not None:
            distribute_run(run, group, resumed=run.history.epochs_completed > 0)
        with _unchecked():
            for epoch in range(run.history.epochs_completed + 1, epochs + 1):
                if run.history.stopped_early:
                    break
                start = time.perf_counter()
                objective, images_per_second = train_epoch(run, epoch, group=group)
                end_epoch(run, epoch, objective, images_per_second, started=start, group=group)
                if callback is not None:
                    callback(epoch, run.history, vae)
    if run.best_state is not None:
        vae.load_state_dict(run.best_state)
    return run.history


def train_epoch(
    run: TrainingRun, epoch: int, *, group: ProcessGroup | None = None
) -> tuple[float, float]:
    """One pass of :func:`~ppvae.inference.step.train_step` over the training batches
    (this rank's share of them in a distributed run, the gradients averaged over ``group``).

    Returns
    -------
    objective, images_per_second
        The training objective per datapoint averaged over the epoch's batches, and the
        datapoints processed per second (by all ranks together).

    Raises
    ------
    TrainingDivergedError
        A loss became NaN or infinite (that step was skipped).
    """
    start = time.perf_counter()
    options, num_data = run.options, len(run.data.x)
    run.scale.beta = kl_weight(epoch, options.beta, options.kl_anneal)
    if hasattr(run.vae, "train"):
        run.vae.train()
    batches: Iterable[Any] = iter(run.loader)
    bar = None
    if options.progress and sys.stderr.isatty() and (group is None or group.is_main):
        batches = bar = tqdm(batches, total=len(run.loader), desc=f"epoch {epoch}/{options.epochs}")
    total, seen = 0.0, 0
    for step, (xb, yb) in enumerate(batches, 1):
        args = (xb,) if yb is None else (xb, yb)
        sync = None if group is None else group.gradient_sync(len(xb))
        info = train_step(
            run.loss_fn, run.optimizer, run.params, *args, clip_norm=options.clip_norm, sync=sync
        )
        if not math.isfinite(info.loss):
            if bar is not None:
                bar.close()
            raise _diverged(info.loss, epoch, step, options.lr, run.folder)
        _share_upkeep(run, group)
        total += info.loss * len(xb)
        seen += len(xb)
        if bar is not None:
            bar.set_postfix(elbo=f"{-total / seen / num_data:.4g}", refresh=False)
    if group is not None:
        # Each step's loss is already the global one; weight it by the global batch sizes.
        total, seen = group.sum(total, seen)
        group.average_buffers(run.vae)
    return -total / seen / num_data, seen / (time.perf_counter() - start)


def _share_upkeep(run: TrainingRun, group: ProcessGroup | None) -> None:
    """Give every rank rank 0's state when the objective moves parameters outside gradients.

    The VQ objectives' codebook upkeep (initialisation from encoder outputs, dead codes
    re-initialised, moving averages) uses each rank's own share of the data; the gradient
    exchange alone would then let the ranks' codebooks drift apart. Rank 0's state, upkeep
    included, becomes every rank's (one broadcast per step, for such objectives only).
    """
    if group is not None and getattr(run.objective, "updates_outside_gradients", False):
        group.broadcast_state(run.vae)


def end_epoch(
    run: TrainingRun,
    epoch: int,
    objective: float,
    images_per_second: float,
    *,
    started: float,
    group: ProcessGroup | None = None,
) -> None:
    """Record the epoch, validate, decide on early stopping and write the checkpoint.

    ``started`` is the epoch's ``time.perf_counter()`` at its start: the recorded seconds
    cover training and validation, not the checkpoint.
    """
    history, patience = run.history, run.options.patience
    history.train_objective.append(objective)
    history.beta.append(run.scale.beta)
    history.images_per_second.append(images_per_second)
    # Objectives with per-epoch statistics (the VQ objectives' codebook usage) report them here.
    epoch_stats = getattr(run.objective, "end_epoch", None)
    for key, value in (epoch_stats() if callable(epoch_stats) else {}).items():
        history.metrics.setdefault(key, []).append(value)
    _share_upkeep(run, group)
    improved = run.data.val is not None and _validate(run, epoch, group)
    history.epochs_completed = epoch
    stale = 0 if history.best_epoch is None else epoch - history.best_epoch
    history.stopped_early = (
        patience is not None and stale >= patience and epoch < run.options.epochs
    )
    history.seconds.append(time.perf_counter() - started)
    if run.folder is not None:
        save_run(
            run.folder,
            run.vae,
            run.optimizer,
            run.loader,
            history,
            run.config,
            best=improved,
            best_state=run.best_state,
        )


def _validate(run: TrainingRun, epoch: int, group: ProcessGroup | None) -> bool:
    """Append the validation bound; whether it is the best so far (kept for early stopping)."""
    history, data, size = run.history, run.data, run.options.batch_size
    if group is None:
        value = validation_elbo(run.objective, run.vae, data.val, data.val_y, batch_size=size)
    else:
        value = sharded_validation(
            run.objective, run.vae, data.val, data.val_y, batch_size=size, group=group
        )
    history.val_elbo.append(value)
    best = history.best_val_elbo
    improved = best is None or value > best or (math.isnan(best) and value == value)
    if improved:
        history.best_epoch = epoch
        if run.options.patience is not None:
            run.best_state = {k: v.detach().clone() for k, v in run.vae.state_dict().items()}
    return improved


@contextlib.contextmanager
def _unchecked() -> Iterator[None]:
    """Train without Pyro's per-step validation (``check_model_once`` ran it) and without its
    NaN warning: a NaN loss raises :class:`TrainingDivergedError`, which says more."""
    with warnings.catch_warnings(), pyro.validation_enabled(False):
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        yield


def _diverged(
    loss: float, epoch: int, step: int, lr: float, folder: Path | None
) -> TrainingDivergedError:
    where = ""
    if folder is not None and epoch > 1:
        where = f"; the last good checkpoint is {folder / 'last.pt'} (epoch {epoch - 1})"
    return TrainingDivergedError(
        f"loss became {loss} at epoch {epoch}, step {step}: lower the learning rate "
        f"(lr={lr}), set clip_norm, or check the data{where}",
        epoch=epoch,
        step=step,
        loss=loss,
    )
