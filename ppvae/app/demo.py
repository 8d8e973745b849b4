"""``ppvae demo``: train, evaluate and report on a small dataset in one go.

On ``digits`` (scikit-learn's 8×8 digits, grey levels 0..16) the demo trains a VAE
with a Binomial likelihood, estimates the test log-likelihood by importance sampling
with K = 1000 particles (the guide, refined on the digits whose PSIS k-hat rejects it)
with its diagnostics, draws the figures and writes the HTML report. ``fashion-mnist``
does the same when the data are on disk. The dataset is loaded once and handed to each
step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ppvae.app.config import RunConfig, UserError
from ppvae.app.evaluate import evaluate_run
from ppvae.app.report import report_run
from ppvae.app.rundir import RunDir
from ppvae.app.summaries import guide_sentence, mc_stderr_text
from ppvae.app.train import load_run_dataset, train_run
from ppvae.data import Dataset

__all__ = ["DEMO_SETTINGS", "demo_config", "run_demo"]

#: Settings per dataset; digits trains in well under a minute on two CPU cores.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"latent_dim": 16, "hidden": [256, 256], "epochs": 250, "batch_size": 128},
    "fashion-mnist": {"latent_dim": 16, "hidden": [512, 256], "epochs": 10, "batch_size": 128},
}
DEMO_NUM_SAMPLES = 1000
#: Test images evaluated per dataset (None: all). K = 1000 particles through a 784-pixel
#: decoder cost about 30 ms per image on one core, so Fashion-MNIST's 10 000 would take
#: over five minutes; the first 1000 keep the whole demo to about two.
DEMO_EVAL_LIMIT: dict[str, int | None] = {"digits": None, "fashion-mnist": 1000}


def demo_config(
    dataset: str = "digits",
    *,
    epochs: int | None = None,
    data_dir: str | None = None,
    download: bool = False,
) -> RunConfig:
    """The demo's run configuration for ``dataset``."""
    if dataset not in DEMO_SETTINGS:
        raise UserError(f"the demo runs on {' or '.join(DEMO_SETTINGS)}, not {dataset!r}")
    settings = {**DEMO_SETTINGS[dataset], "epochs": epochs or DEMO_SETTINGS[dataset]["epochs"]}
    return RunConfig(dataset=dataset, data_dir=data_dir, download=download, **settings)


def _load(cfg: RunConfig) -> Dataset:
    """The demo's dataset; a missing one raises :class:`UserError` saying how to get it."""
    try:
        return load_run_dataset(cfg)
    except FileNotFoundError:
        raise UserError(
            f"{cfg.dataset} is not on disk: install it with 'apt-get install "
            f"dataset-{cfg.dataset}', point --data-dir or PPVAE_DATA at its IDX files, or "
            "pass --download (needs internet)"
        ) from None


def run_demo(
    dataset: str = "digits",
    out: str | os.PathLike[str] = "runs/demo",
    *,
    epochs: int | None = None,
    data_dir: str | None = None,
    download: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, evaluate and report; prints the headline numbers and returns the metrics.

    With ``progress=False`` only the headline numbers and the report's path are printed.
    """
    start = time.perf_counter()
    cfg = demo_config(dataset, epochs=epochs, data_dir=data_dir, download=download)
    run = RunDir(out).check_writable("--out")
    ds = _load(cfg)  # before anything is removed or written
    run.check_clearable()
    chatter = echo if progress else _quiet
    with run.lock():  # one demo (or other command) per folder at a time
        run.clear()
        chatter(f"ppvae demo: {dataset}, writing to {run.root}")
        history = train_run(cfg, run.root, dataset=ds, progress=progress, echo=chatter)
        metrics = evaluate_run(
            run.root,
            num_samples=DEMO_NUM_SAMPLES,
            limit=DEMO_EVAL_LIMIT[dataset],
            progress=progress,
            dataset=ds,
        )
        report = report_run(run.root, dataset=ds)
    for line in headline(metrics, history, dataset):
        echo(line)
    echo(f"report: {report} (demo took {time.perf_counter() - start:.0f} s)")
    return metrics


def _quiet(_: str) -> None:
    pass


def headline(metrics: dict[str, Any], history: dict[str, Any], dataset: str) -> list[str]:
    """The demo's summary lines: the headline, its estimator, reliability and the guide's."""
    seconds = sum(history["seconds"])
    ips = sum(history["images_per_second"]) / max(len(history["images_per_second"]), 1)
    split, n = metrics["split"], metrics["num_datapoints"]
    noun = "digits" if dataset == "digits" else "images"
    reliable = metrics["num_reliable"]
    lines = [
        f"trained {history['epochs_completed']} epochs in {seconds:.1f} s ({ips:.0f} images/s)",
        f"{split} log p(x) = {metrics['log_likelihood']:.2f} ± {metrics['stderr']:.2f} nats "
        f"(standard error over {n} {split} {noun})",
        f"  Monte Carlo s.e. {mc_stderr_text(metrics, digits=3, noun=noun)}",
        f"  estimator: {metrics['estimator']}",
        f"  {metrics['num_refined']} of {n} {noun} refined; reliable (k-hat ≤ "
        f"{metrics['khat_threshold']:.2f}) for {reliable} of {n} {noun} "
        f"({100 * reliable / n:.1f}%)",
    ]
    if metrics.get("guide_only"):
        lines.append(f"  guide alone: {guide_sentence(metrics, noun)}")
    lines += [
        f"{split} ELBO     = {metrics['elbo']:.2f} nats (gap log p(x) - ELBO = "
        f"{metrics['gap']:.2f} nats)",
        f"k-hat verdict: {metrics['verdict']}",
    ]
    if not metrics["reliable"]:
        lines.append(
            "  (where k-hat rejects the weights the estimate may fall short of log p(x) by an "
            "unknown amount: check it with 'ppvae evaluate RUN_DIR --ais 20')"
        )
    return lines
