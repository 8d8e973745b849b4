"""Stochastic variational inference for VAEs with ``torch.optim`` (Pyro's PyTorch-native SVI).

The loop calls ``elbo.differentiable_loss(model, guide, x_batch, [y_batch], num_data=N)`` and
steps a ``torch.optim`` optimizer over ``vae.parameters()``; parameters stay in their modules
(no global param store), so several models can train in one process.

References
----------
Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR.
Hoffman, Blei, Wang & Paisley (2013), "Stochastic Variational Inference", JMLR 14.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled

from ppvae.data import BatchLoader, Dataset
from ppvae.inference.history import History
from ppvae.inference.runstate import resume_run, save_run
from ppvae.inference.scaling import LatentScale, kl_weight
from ppvae.inference.step import (
    TrainingDivergedError,
    evaluate,
    make_elbo,
    make_optimizer,
    train_step,
)

__all__ = ["fit"]


def fit(
    vae: Any,
    train: torch.Tensor | Dataset,
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
        Training data ``(N, *event_shape)``, or a :class:`~ppvae.data.Dataset`, whose train
        split, validation split and binarisation mode are then used unless given explicitly
        (its labels too, for a conditional VAE).
    y, val, val_y
        Training labels, validation data and labels.
    elbo, num_particles
        The objective (see :func:`~ppvae.inference.step.make_elbo`) and its number of particles.
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
        Seeds torch, ``random`` and NumPy (``pyro.set_rng_seed``) before anything is drawn.
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
        [0, 1]); validation data are drawn once with a fixed seed. ``None`` takes a
        Dataset's mode, else none.
    progress
        A progress bar per epoch, shown only when stderr is a terminal.
    callback
        Called as ``callback(epoch, history, vae)`` after each epoch (and its checkpoint).

    Returns
    -------
    History
        ``train_elbo`` is the training objective per datapoint averaged over the epoch
        (β-weighted when β ≠ 1); ``val_elbo`` is the objective at β = 1 on the validation
        data with the end-of-epoch parameters.

    Raises
    ------
    TrainingDivergedError
        The loss became NaN or infinite (the last checkpoint is left intact).
    """
    if isinstance(train, Dataset):
        ds = train
        conditional = getattr(vae, "num_labels", None) is not None
        train = ds.train
        val = (ds.val if len(ds.val) else None) if val is None else val
        y = ds.train_labels if y is None and conditional else y
        val_y = ds.val_labels if val_y is None and conditional else val_y
        binarize = ds.binarize if binarize is None else binarize
    _check_args(
        epochs=epochs,
        batch_size=batch_size,
        num_particles=num_particles,
        beta=beta,
        kl_anneal=kl_anneal,
        patience=patience,
        clip_norm=clip_norm,
    )
    if len(train) == 0:
        raise ValueError("the training data are empty: pass at least one datapoint")
    if val is not None and len(val) == 0:
        raise ValueError("the validation data are empty: pass val=None or some datapoints")
    if binarize not in (None, "dynamic"):
        raise ValueError(
            f"binarize={binarize!r} is not a training mode: use 'dynamic' or None (static or "
            "threshold binarisation are done once by ppvae.data.load_dataset)"
        )
    if patience is not None and val is None:
        raise ValueError("patience (early stopping) needs validation data: pass val=")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir of the run to continue")
    scaled = beta != 1 or kl_anneal > 0
    if scaled and elbo == "iwae":
        raise ValueError(
            "beta and kl_anneal weight the KL term of the ELBO, which the importance-weighted "
            "bound does not have; use elbo='trace' or 'meanfield', or beta=1 and kl_anneal=0"
        )
    device = torch.device(device)
    dynamic = binarize == "dynamic"
    x = train.to(device)
    y = None if y is None else y.to(device)
    if val is not None:
        val = _fixed_draw(val.to(device)) if dynamic else val.to(device)
        val_y = None if val_y is None else val_y.to(device)
    if hasattr(vae, "to"):
        vae.to(device)
    if hasattr(vae, "check_data"):
        vae.check_data(_fixed_draw(x) if dynamic else x, y)
        if val is not None:
            vae.check_data(val, val_y)
    if seed is not None:
        pyro.set_rng_seed(seed)

    objective = make_elbo(elbo, num_particles)
    model, guide = vae.model, vae.guide
    scale = LatentScale()
    if scaled:
        model, guide = scale(model), scale(guide)
    loss_fn = functools.partial(objective.differentiable_loss, model, guide, num_data=len(x))
    params = [p for p in vae.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = make_optimizer(optimizer, params, lr)
    loader = BatchLoader(x, y, batch_size=batch_size, dynamic_binarize=dynamic)
    config = {
        "elbo": elbo if isinstance(elbo, str) else type(elbo).__name__,
        "num_particles": num_particles,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer if isinstance(optimizer, str) else _name(optimizer),
        "beta": beta,
        "kl_anneal": kl_anneal,
        "clip_norm": clip_norm,
        "seed": seed,
        "binarize": binarize,
        "patience": patience,
        "num_data": len(x),
        "num_val": None if val is None else len(val),
        "labels": y is not None,
    }
    history, best_state = History(), None
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    if resume:
        history, best_state = resume_run(
            folder, vae, opt, loader, config, want_best=patience is not None
        )

    show = progress and sys.stderr.isatty()
    if history.epochs_completed < epochs and is_validation_enabled():
        # Pyro's validation (shapes, supports, NaN checks with gradient hooks) costs about
        # as much per step as the optimizer on small networks, and nothing it checks changes
        # between steps: run it once on a first batch, under a forked random state so that
        # resumed and uninterrupted runs draw the same numbers, then train without it.
        first = (x[:batch_size],) if y is None else (x[:batch_size], y[:batch_size])
        if dynamic:
            first = (_fixed_draw(first[0]), *first[1:])
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            loss_fn(*first)
    with warnings.catch_warnings(), pyro.validation_enabled(False):
        # A NaN loss raises TrainingDivergedError below, which says more than Pyro's warning.
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        for epoch in range(history.epochs_completed + 1, epochs + 1):
            if history.stopped_early:
                break
            start = time.perf_counter()
            scale.beta = kl_weight(epoch, beta, kl_anneal)
            if hasattr(vae, "train"):
                vae.train()
            batches: Iterable[Any] = iter(loader)
            bar = None
            if show:
                from tqdm import tqdm

                batches = bar = tqdm(batches, total=len(loader), desc=f"epoch {epoch}/{epochs}")
            total, seen = 0.0, 0
            for step, (xb, yb) in enumerate(batches, 1):
                args = (xb,) if yb is None else (xb, yb)
                info = train_step(loss_fn, opt, params, *args, clip_norm=clip_norm)
                if not math.isfinite(info.loss):
                    if bar is not None:
                        bar.close()
                    raise _diverged(info.loss, epoch, step, lr, folder)
                total += info.loss * len(xb)
                seen += len(xb)
                if bar is not None:
                    bar.set_postfix(elbo=f"{-total / seen / len(x):.4g}", refresh=False)
            train_seconds = time.perf_counter() - start
            history.train_elbo.append(-total / seen / len(x))
            history.beta.append(scale.beta)
            history.images_per_second.append(seen / train_seconds)
            improved = False
            if val is not None:
                value = evaluate(objective, vae, val, val_y, batch_size=batch_size)
                history.val_elbo.append(value)
                best = history.best_val_elbo
                improved = best is None or value > best or (math.isnan(best) and value == value)
                if improved:
                    history.best_epoch = epoch
                    if patience is not None:
                        best_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
            history.epochs_completed = epoch
            stale = 0 if history.best_epoch is None else epoch - history.best_epoch
            history.stopped_early = patience is not None and stale >= patience and epoch < epochs
            history.seconds.append(time.perf_counter() - start)
            if folder is not None:
                save_run(folder, vae, opt, loader, history, config, best=improved)
            if callback is not None:
                callback(epoch, history, vae)
    if best_state is not None:
        vae.load_state_dict(best_state)
    return history


def _check_args(**args: Any) -> None:
    rules = {
        "epochs": (lambda v: v >= 0, "a non-negative integer"),
        "batch_size": (lambda v: v >= 1, "a positive integer"),
        "num_particles": (lambda v: v >= 1, "a positive integer"),
        "beta": (lambda v: v >= 0, "a non-negative number"),
        "kl_anneal": (lambda v: v >= 0, "a non-negative number of epochs"),
        "patience": (lambda v: v is None or v >= 1, "None or a positive integer"),
        "clip_norm": (lambda v: v is None or v > 0, "None or positive"),
    }
    for name, value in args.items():
        ok, what = rules[name]
        if not ok(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")


def _fixed_draw(x: torch.Tensor) -> torch.Tensor:
    """One Bernoulli draw with a fixed seed, leaving the global RNG untouched."""
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(
            f"binarize='dynamic' draws Bernoulli(x) and needs data in [0, 1], got range "
            f"[{lo:g}, {hi:g}]: rescale the data or pass binarize=None"
        )
    return torch.bernoulli(x, generator=torch.Generator(x.device).manual_seed(0))


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


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__
