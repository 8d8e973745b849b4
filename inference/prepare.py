"""Everything ``fit`` sets up before its first epoch: the data, the objective, the optimizer,
the loader and, when resuming, the saved state.

:func:`training_data` resolves what ``fit`` was given (tensors, or a dataset by the
:class:`~ppvae.inference.batches.TrainingData` protocol) into checked tensors on the device;
:func:`prepare` builds a :class:`TrainingRun`, the state the epoch and end-of-epoch steps of
:func:`ppvae.inference.train.fit` share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyro.infer.util import is_validation_enabled

from ppvae.inference.batches import BatchLoader, TrainingData, binarize_once
from ppvae.inference.history import History
from ppvae.inference.objectives import make_elbo
from ppvae.inference.options import FitOptions
from ppvae.inference.resume import resume_run
from ppvae.inference.rng import seeded
from ppvae.inference.scaling import LatentScale
from ppvae.inference.step import make_optimizer

__all__ = ["FitData", "TrainingRun", "training_data", "prepare", "check_model_once"]

# The seed of the one-off validation pass of check_model_once: its draws do not matter, and a
# stream of its own keeps the run's stream the same whether Pyro's validation is on or off.
_CHECK_SEED = 0


@dataclass
class FitData:
    """Training and validation tensors on the training device, checked.

    ``val`` is already binarised when ``binarize == "dynamic"`` (``x`` is drawn afresh
    each epoch by the loader).
    """

    x: torch.Tensor
    y: torch.Tensor | None
    val: torch.Tensor | None
    val_y: torch.Tensor | None
    binarize: str | None


def training_data(
    vae: Any,
    train: torch.Tensor | TrainingData,
    *,
    y: torch.Tensor | None = None,
    val: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    binarize: str | None = None,
    device: torch.device,
) -> FitData:
    """Resolve ``fit``'s data arguments (see :func:`~ppvae.inference.train.fit`).

    A dataset supplies its train split, validation split (when not empty) and binarisation
    mode unless they are given explicitly, and its labels when ``vae`` is conditional.
    The model's ``check_data(x, y)``, when it has one, is called on both splits.
    """
    if not isinstance(train, torch.Tensor):
        if not isinstance(train, TrainingData):
            raise TypeError(
                "train must be a tensor or a dataset with train, val, train_labels, "
                f"val_labels and binarize (e.g. ppvae.load_dataset's), got {type(train)}"
            )
        ds, conditional = train, getattr(vae, "num_labels", None) is not None
        train = ds.train
        val = (ds.val if len(ds.val) else None) if val is None else val
        y = ds.train_labels if y is None and conditional else y
        val_y = ds.val_labels if val_y is None and conditional else val_y
        binarize = ds.binarize if binarize is None else binarize
    if len(train) == 0:
        raise ValueError("the training data are empty: pass at least one datapoint")
    if val is not None and len(val) == 0:
        raise ValueError("the validation data are empty: pass val=None or some datapoints")
    if binarize not in (None, "dynamic"):
        raise ValueError(
            f"binarize={binarize!r} is not a training mode: use 'dynamic' or None (static or "
            "threshold binarisation are done once, when the data are loaded: ppvae.load_dataset)"
        )
    dynamic = binarize == "dynamic"
    x = train.to(device)
    y = None if y is None else y.to(device)
    if val is not None:
        val = binarize_once(val.to(device))[0] if dynamic else val.to(device)
        val_y = None if val_y is None else val_y.to(device)
    if hasattr(vae, "check_data"):
        vae.check_data(binarize_once(x)[0] if dynamic else x, y)
        if val is not None:
            vae.check_data(val, val_y)
    return FitData(x, y, val, val_y, binarize)


@dataclass
class TrainingRun:
    """The state one training run's steps share.

    Attributes
    ----------
    vae, options, data
        The model, the settings and the data.
    objective, scale
        The objective (a Pyro ELBO or :class:`~ppvae.inference.iwae.IWAE_ELBO`) and the
        β-weighting applied to the model and guide it is called with.
    loss_fn
        ``loss_fn(x_batch, [y_batch])``: the differentiable loss on a batch, scaled to the
        whole training set.
    params, optimizer, loader
        The trained tensors, their optimizer and the batch loader.
    config
        The settings a checkpoint records (a resumption with other ones is refused).
    folder
        Where checkpoints go, or ``None``.
    history
        What the epochs so far measured.
    best_state
        With early stopping, a copy of the parameters of the best epoch so far.
    """

    vae: Any
    options: FitOptions
    data: FitData
    objective: Any
    scale: LatentScale
    loss_fn: Callable[..., torch.Tensor]
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    loader: BatchLoader
    config: dict[str, Any]
    folder: Path | None
    history: History
    best_state: dict[str, torch.Tensor] | None = None


def prepare(
    vae: Any,
    train: torch.Tensor | TrainingData,
    options: FitOptions,
    *,
    y: torch.Tensor | None = None,
    val: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    binarize: str | None = None,
    loader_seed: int,
) -> TrainingRun:
    """Move the model to the device, resolve the data (:func:`training_data`), build the
    objective, optimizer and loader, and restore the checkpoint when resuming.

    Call it inside the run's :func:`~ppvae.inference.rng.seeded` block: resuming resets
    the RNG states to the checkpoint's.
    """
    device = torch.device(options.device)
    if hasattr(vae, "to"):
        vae.to(device)
    data = training_data(vae, train, y=y, val=val, val_y=val_y, binarize=binarize, device=device)
    if options.patience is not None and data.val is None:
        raise ValueError("patience (early stopping) needs validation data: pass val=")
    objective = make_elbo(options.elbo, options.num_particles)
    scale = LatentScale()
    model, guide = (
        (scale(vae.model), scale(vae.guide)) if options.scaled else (vae.model, vae.guide)
    )
    num_data = len(data.x)

    def loss_fn(*args: torch.Tensor) -> torch.Tensor:
        return objective.differentiable_loss(model, guide, *args, num_data=num_data)

    params = [p for p in vae.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    dynamic = data.binarize == "dynamic"
    run = TrainingRun(
        vae=vae,
        options=options,
        data=data,
        objective=objective,
        scale=scale,
        loss_fn=loss_fn,
        params=params,
        optimizer=make_optimizer(options.optimizer, params, options.lr),
        loader=BatchLoader(
            data.x,
            data.y,
            batch_size=options.batch_size,
            seed=loader_seed,
            dynamic_binarize=dynamic,
        ),
        config={
            **options.record(),
            "binarize": data.binarize,
            "num_data": num_data,
            "num_val": None if data.val is None else len(data.val),
            "labels": data.y is not None,
        },
        folder=None if options.checkpoint_dir is None else Path(options.checkpoint_dir),
        history=History(),
    )
    if options.resume:
        run.history, run.best_state = resume_run(
            run.folder,
            vae,
            run.optimizer,
            run.loader,
            run.config,
            want_best=options.patience is not None,
        )
    return run


def check_model_once(run: TrainingRun) -> None:
    """Run the loss once on a first batch with Pyro's validation on, if it is on.

    Pyro's validation (shapes, supports, NaN checks with gradient hooks) costs about as much
    per step as the optimizer on small networks, and nothing it checks changes between
    steps: ``fit`` runs it once here, then trains without it. The pass draws from a stream
    of its own, so that it changes nothing in the run.
    """
    if run.history.epochs_completed >= run.options.epochs or not is_validation_enabled():
        return
    n, data = run.options.batch_size, run.data
    first = data.x[:n]
    if data.binarize == "dynamic":
        first = binarize_once(first)[0]
    args = (first,) if data.y is None else (first, data.y[:n])
    with seeded(_CHECK_SEED), torch.no_grad():
        run.loss_fn(*args)
