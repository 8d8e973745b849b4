"""Augmented datasets from a trained run (``ppvae augment``).

Writes ``FILE.npz`` with arrays ``x`` (the generated examples on the data's scale) and
``y`` (their labels, when there are any), which :func:`ppvae.load_dataset` reads like any
other array file, and ``FILE.png`` beside it with a grid of the first examples (image
data only; replaced if present). Every user mistake is caught before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppvae import plots
from ppvae.app.config import RunConfig, UserError
from ppvae.app.figures import display_range
from ppvae.app.rundir import RunDir, atomic_write, check_writable_file
from ppvae.app.score import read_score_data
from ppvae.app.train import load_model, split_data
from ppvae.augment import MODES, OUTPUTS, augment
from ppvae.data import KNOWN_DATASETS, load_dataset

__all__ = ["augment_run", "parse_labels"]

_GRID_PER_CLASS = 8  # columns of the class-conditional grid
_GRID_MAX = 64  # examples in the grid otherwise


def parse_labels(text: str | None) -> list[int] | None:
    """``"0,3,7"`` → ``[0, 3, 7]`` (``None`` stays ``None``)."""
    if text is None:
        return None
    try:
        labels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--labels must be class numbers such as 0,3,7, got {text!r}") from None
    if not labels:
        raise UserError("--labels is empty: name at least one class, e.g. --labels 0,3,7")
    return labels


def _check_request(
    out: Path, force: bool, mode: str, n: int | None, n_per_class: int | None, source: Any
) -> None:
    """The checks that need no model: flags and the output file."""
    if out.suffix.lower() != ".npz":
        raise UserError(f"--out must name a .npz file, got {out}: e.g. --out augmented.npz")
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists: pass --force to overwrite it")
    check_writable_file(out, "--out")
    if mode not in MODES:
        raise UserError(f"--mode must be prior or posterior, got {mode!r}")
    for flag, value in (("--n", n), ("--n-per-class", n_per_class)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if n is not None and n_per_class is not None:
        raise UserError("give --n-per-class or --n, not both")
    if mode == "prior" and n is None and n_per_class is None:
        raise UserError("give --n-per-class N (class-conditional models) or --n N")
    if mode == "prior" and source is not None:
        raise UserError("--source goes with --mode posterior; prior samples need no data")
    if mode == "posterior" and source is None:
        raise UserError("--mode posterior needs --source DATA (a dataset name or data file)")


def _check_model(
    vae: Any, mode: str, n_per_class: int | None, labels: list[int] | None, temperature: float
) -> None:
    """The checks that need the model."""
    num_labels = getattr(vae, "num_labels", None)
    if mode == "prior" and num_labels is None and (n_per_class is not None or labels):
        raise UserError(
            "the run's model is not conditional (trained without --conditional), so it "
            "has no class-conditional samples: use --n N, or --mode posterior --source DATA"
        )
    if labels and num_labels is not None and not all(0 <= c < num_labels for c in labels):
        raise UserError(
            f"--labels must lie in 0..{num_labels - 1} (the model's classes), got "
            f"{','.join(map(str, labels))}"
        )
    if mode == "prior" and temperature != 1:
        raise UserError("--temperature goes with --mode posterior; prior samples use T = 1")
    if not temperature >= 0:
        raise UserError(f"--temperature must be >= 0, got {temperature}")


def _read_source(
    spec: str, cfg: RunConfig, event_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A dataset name (its training split, prepared as the run's data) or an array file."""
    if spec.lower().replace("_", "-") in KNOWN_DATASETS:
        ds = load_dataset(
            spec, data_dir=cfg.data_dir, download=cfg.download, binarize=cfg.binarize_mode
        )
        return split_data(ds, "train")
    data = read_score_data(spec, cfg, event_shape)  # every row of the file, in order
    return data.x, data.labels


def _grid(vae: Any, x: torch.Tensor, y: torch.Tensor | None, n_per_class: int | None) -> Any:
    """The figure of the first examples: one row per class for class-conditional sets."""
    value_range = display_range(vae.likelihood, x)
    x = x.cpu()
    if y is not None and n_per_class is not None:
        y = y.cpu()
        classes = torch.unique_consecutive(y)  # each class's examples are generated together
        per = min(n_per_class, _GRID_PER_CLASS)
        rows = torch.stack([x[y == c][:per] for c in classes])
        return plots.plot_conditional_samples(
            rows, value_range=value_range, labels=[str(int(c)) for c in classes]
        )
    shown = x[:_GRID_MAX]
    return plots.plot_samples(shown, value_range=value_range, nrow=min(len(shown), 8))


def augment_run(
    run_dir: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    n_per_class: int | None = None,
    n: int | None = None,
    labels: list[int] | None = None,
    mode: str = "prior",
    source: str | None = None,
    temperature: float = 1.0,
    output: str = "sample",
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Write an augmented dataset of a trained run to ``out`` (``.npz``) and a PNG grid.

    See :func:`ppvae.augment.augment` for the meaning of the arguments. Returns a summary:
    the paths written (``out``, ``grid`` or ``None`` for non-image data), the number of
    examples and the classes.
    """
    out = Path(out)
    _check_request(out, force, mode, n, n_per_class, source)
    if output not in OUTPUTS:
        raise UserError(f"--output must be sample or mean, got {output!r}")
    # Held like sample's: a run being trained (or re-evaluated) is not read half-way.
    with RunDir(run_dir).require().lock():
        return _augment_locked(
            run_dir, out, n_per_class, n, labels, mode, source, temperature, output, seed
        )


def _augment_locked(
    run_dir: str | os.PathLike[str],
    out: Path,
    n_per_class: int | None,
    n: int | None,
    labels: list[int] | None,
    mode: str,
    source: str | None,
    temperature: float,
    output: str,
    seed: int,
) -> dict[str, Any]:
    """:func:`augment_run` once the run folder's lock is held."""
    cfg, vae = load_model(run_dir)
    _check_model(vae, mode, n_per_class, labels, temperature)
    src = None if source is None else _read_source(source, cfg, vae.event_shape)
    if src is not None and src[1] is None and getattr(vae, "num_labels", None) is not None:
        raise UserError(
            f"--source {source} has no labels, which the run's conditional model needs to "
            "encode it: give a file with a y array (or column) of labels"
        )
    if src is not None and src[1] is None and (n_per_class is not None or labels):
        raise UserError(
            f"--source {source} has no labels, so --n-per-class and --labels do not apply: "
            "use --n N"
        )
    x, y = augment(
        vae,
        n_per_class=n_per_class,
        n=n,
        labels=labels,
        mode=mode,
        source=src,
        temperature=temperature,
        output=output,
        seed=seed,
    )
    grid = None
    if plots.is_image_shape(vae.event_shape):
        grid = plots.save_figure(_grid(vae, x, y, n_per_class), out.with_suffix(".png"))
    arrays = {"x": x.cpu().float().numpy()}
    if y is not None:
        arrays["y"] = y.cpu().numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)

    atomic_write(out, write)  # last: a complete .npz means a complete result
    classes = None if y is None else sorted(int(c) for c in y.unique())
    return {"out": out, "grid": grid, "num_examples": len(x), "classes": classes}
