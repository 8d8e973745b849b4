"""Sample grids of a trained run (``ppvae sample``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ppvae import plots
from ppvae.app.config import UserError
from ppvae.app.figures import display_range
from ppvae.app.rundir import RunDir, check_writable_file
from ppvae.app.train import load_model

__all__ = ["sample_run"]


def sample_run(
    run_dir: str | os.PathLike[str],
    *,
    n: int = 64,
    label: int | None = None,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a PNG grid of samples (one row per class for a conditional model).

    The grid goes to ``out``, by default ``RUN_DIR/samples.png``.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    run = RunDir(run_dir).require()
    path = Path(out) if out is not None else run.samples
    check_writable_file(path, "--out")
    with run.lock():
        return _sample(run, n, label, path, seed)


def _sample(run: RunDir, n: int, label: int | None, path: Path, seed: int) -> Path:
    """:func:`sample_run` once the run folder's lock is held."""
    cfg, vae = load_model(run.root)
    if not plots.is_image_shape(vae.event_shape):
        raise UserError(
            f"datapoints of shape {vae.event_shape} are not images, so there is no sample "
            "grid: use the report's per-feature figure"
        )
    value_range = display_range(vae.likelihood, torch.zeros(1))
    torch.manual_seed(seed)
    conditional = vae.num_labels is not None
    if label is not None and not conditional:
        raise UserError("--label needs a conditional model (trained with conditional = true)")
    if label is not None and not 0 <= label < vae.num_labels:
        raise UserError(f"--label must lie in 0..{vae.num_labels - 1}, got {label}")
    with torch.no_grad():
        if conditional and label is None:
            per = max(1, n // vae.num_labels)
            labels = torch.arange(vae.num_labels).repeat_interleave(per)
            images = vae.sample(len(labels), y=labels)
            fig = plots.plot_conditional_samples(
                images.reshape(vae.num_labels, per, *vae.event_shape), value_range=value_range
            )
        else:
            images = vae.sample(n, y=label)
            fig = plots.plot_samples(images, value_range=value_range, nrow=min(n, 8))
    return plots.save_figure(fig, path)
