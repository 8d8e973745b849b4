"""Shared pieces of the benchmarks: the model under test, data, and calls into ppvae."""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from typing import Any

import torch

__all__ = [
    "EVENT_SHAPE",
    "LATENT_DIM",
    "HIDDEN",
    "DECODER_FLOPS_PER_PAIR",
    "FASHION_MNIST_SKIP",
    "build_vae",
    "missing",
    "fashion_mnist",
    "training_images",
    "ppvae_log_likelihood",
    "PLAIN_IS",
    "DIGITS_LATENT_DIM",
    "DIGITS_HIDDEN",
    "digits_model",
    "missing_proposals",
]

EVENT_SHAPE = (1, 28, 28)
LATENT_DIM = 50
HIDDEN = (400, 400)
# One decoder pass 50-400-400-784 per datapoint-particle pair, 2 FLOPs per multiply-add.
DECODER_FLOPS_PER_PAIR = 2 * (50 * 400 + 400 * 400 + 400 * 784)
# Plain importance sampling with the guide as proposal: the estimator of the hand-written
# references (log_likelihood's default, "auto", refines where the guide fails).
PLAIN_IS: dict[str, Any] = {"proposal": "guide"}

# The demo model of ``make demo``: digits, Binomial(16) pixels, 16 latents, 256-256 MLPs.
DIGITS_LATENT_DIM = 16
DIGITS_HIDDEN = (256, 256)
FASHION_MNIST_SKIP = (
    "Fashion-MNIST not found (looked in {where}): apt-get install dataset-fashion-mnist, "
    "or set PPVAE_DATA — skipping the accuracy benchmark"
)


def build_vae(seed: int = 0, device: str = "cpu") -> Any:
    """The benchmarked model: ``VAE((1,28,28), 50, likelihood="bernoulli", hidden=(400,400))``."""
    from ppvae.models import VAE

    torch.manual_seed(seed)
    return VAE(EVENT_SHAPE, LATENT_DIM, likelihood="bernoulli", hidden=HIDDEN).to(device)


def missing(module: str) -> str | None:
    """``None`` when ``module`` imports, else why not (a library piece not written yet)."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        return f"{module} is not available ({err})"
    return None


def fashion_mnist() -> tuple[Any | None, str]:
    """Fashion-MNIST via ``ppvae.data.load_dataset`` (dynamic binarisation), or the skip text."""
    from ppvae.data import load_dataset

    try:
        return load_dataset("fashion-mnist", binarize="auto"), ""
    except FileNotFoundError as err:
        text = str(err)
        # "... (optionally .gz) in DIRS and their SUBDIRS subfolders; fix: ..." -> DIRS...
        where = text.split(".gz) in ", 1)[-1].split("; fix", 1)[0].strip()
        return None, FASHION_MNIST_SKIP.format(where=where)


def training_images(num: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``num`` grey-level 28×28 images in [0, 1] and where they came from.

    Fashion-MNIST's training images when they are on disk, else uniform noise of the same
    shape: throughput does not depend on the pixel values, only on their number.
    """
    ds, _ = fashion_mnist()
    if ds is not None and len(ds.train) >= num:
        return ds.train[:num].clone(), "fashion-mnist"
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(num, *EVENT_SHAPE, generator=gen), "synthetic uniform [0,1]"


def ppvae_log_likelihood(
    model: Any, guide: Any, x: torch.Tensor, num_samples: int, *, seed: int | None = None
) -> Any:
    """``ppvae.inference.importance.log_likelihood`` with the guide as proposal.

    Plain importance sampling (``proposal="guide"``), the estimator the hand-written
    references implement; the default ``"auto"`` would refine datapoints the guide fits
    badly, which :mod:`bench.refined` measures. Defaults otherwise, no progress bar.
    """
    from ppvae.inference.importance import log_likelihood

    return log_likelihood(
        model, guide, x, num_samples=num_samples, seed=seed, progress=False, **PLAIN_IS
    )


def missing_proposals() -> str | None:
    """``None`` when ``ppvae.log_likelihood`` takes ``proposal=``, else why the refined
    evaluation benchmark is skipped."""
    import ppvae

    if "proposal" in inspect.signature(ppvae.log_likelihood).parameters:
        return None
    return "ppvae.log_likelihood has no proposal= argument yet"


@functools.lru_cache(maxsize=2)
def digits_model(
    epochs: int, seed: int = 0, device: str = "cpu"
) -> tuple[Any, torch.Tensor, float]:
    """The demo model trained on digits: ``(vae, test digits, training seconds)``.

    ``VAE(ds.event_shape, latent_dim=16, likelihood=ds.likelihood, hidden=(256, 256))``
    fitted with ``fit(vae, ds, epochs=epochs, batch_size=128, seed=seed)``, its weights
    initialised from ``torch.manual_seed(seed)``; the 359 test digits are grey levels
    0..16. Cached, so that the benchmarks of one run share it.
    """
    import ppvae

    ds = ppvae.load_dataset("digits")
    torch.manual_seed(seed)
    vae = ppvae.VAE(
        ds.event_shape,
        latent_dim=DIGITS_LATENT_DIM,
        likelihood=ds.likelihood,
        likelihood_kwargs=ds.likelihood_kwargs,
        hidden=DIGITS_HIDDEN,
    )
    start = time.perf_counter()
    ppvae.fit(vae, ds, epochs=epochs, batch_size=128, seed=seed, device=device, progress=False)
    seconds = time.perf_counter() - start
    return vae.eval(), ds.test.to(device), seconds
