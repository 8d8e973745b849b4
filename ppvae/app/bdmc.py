"""``ppvae bdmc``: certify an AIS schedule on data simulated from a trained run's model.

Bidirectional Monte Carlo (Grosse et al. 2015, :func:`ppvae.bdmc`) simulates datapoints
(x_n, z_n) from the model, runs AIS forward from the guide and backward from the exact
z_n, and so sandwiches log p(x_n) between a stochastic lower and upper bound. Their gap
bounds the error of ``ppvae evaluate --ais`` with the same steps and chains on data like
the model's own. The result goes to ``RUN_DIR/bdmc.json``, which the report shows.

References
----------
Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
bidirectional Monte Carlo", arXiv:1511.02543.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from ppvae.app.config import UserError
from ppvae.app.rundir import RunDir
from ppvae.app.summaries import bdmc_record
from ppvae.app.train import load_model, load_run_dataset, split_data
from ppvae.data import Dataset
from ppvae.inference import bdmc

__all__ = ["bdmc_run"]


def _with_labels(fn: Callable, y: torch.Tensor) -> Callable:
    """``fn(x)`` that calls ``fn(x, y)``: BDMC calls the model and guide with data alone."""

    def call(x: torch.Tensor) -> Any:
        return fn(x, y)

    return call


def bdmc_run(
    run_dir: str | os.PathLike[str],
    *,
    num_datapoints: int = 10,
    num_steps: int = 1000,
    num_chains: int = 16,
    seed: int = 0,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Run BDMC with a run's model and guide; writes and returns ``RUN_DIR/bdmc.json``.

    The test data serve as a template for the shape of the simulated datapoints (their
    values are not used). A conditional model is simulated given the labels of the
    template rows, so the bounds are on log p(x_n | y_n).
    """
    if num_datapoints < 1:
        raise UserError(f"--num-datapoints must be at least 1, got {num_datapoints}")
    if num_steps < 1:
        raise UserError(f"--steps must be at least 1, got {num_steps}")
    if num_chains < 1:
        raise UserError(f"--chains must be at least 1, got {num_chains}")
    run = RunDir(run_dir).require()
    cfg, vae = load_model(run.root)
    ds = load_run_dataset(cfg) if dataset is None else dataset
    x, y = split_data(ds, "test")
    # Only the shape of the rows matters: repeat them when more datapoints are asked for.
    rows = torch.arange(num_datapoints) % len(x)
    template = x[rows].to(cfg.device)
    model, guide = vae.model, vae.guide
    if vae.num_labels is not None:
        labels = y[rows].to(cfg.device)
        model, guide = _with_labels(model, labels), _with_labels(guide, labels)
    start = time.perf_counter()
    result = bdmc(
        model,
        guide,
        template,
        num_datapoints=num_datapoints,
        num_steps=num_steps,
        num_chains=num_chains,
        seed=seed,
    )
    record = bdmc_record(result, seed=seed, seconds=time.perf_counter() - start)
    run.write_bdmc(record)
    return record
