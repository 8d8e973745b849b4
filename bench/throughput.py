"""SVI training throughput: ``ppvae.fit`` against a hand-written loop and Pyro's ``SVI``.

All three train the same 784-400-400-50 Bernoulli VAE from the same initial weights with
Adam at the same learning rate, on the same in-memory images, each epoch visiting them in
a fresh random order and binarising every batch by one Bernoulli draw (ppvae's dynamic
binarisation). Throughput is images per second over whole epochs, batching and
binarisation included. A warm-up epoch of each is discarded; then the three alternate
epoch by epoch (in a rotating order) so that drifts in machine load hit all of them, and
the medians are compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from bench.common import build_vae
from bench.machine import median, timed
from bench.reference import ReferenceVAE, pyro_programs, pyro_svi_epoch, reference_train_epoch

__all__ = ["training_throughput", "TRAINING_TARGET", "METHODS"]

TRAINING_TARGET = 0.95  # ppvae images/s over the hand-written loop's
METHODS = ("ppvae", "reference", "pyro_svi", "ppvae_fused_adam")


def _runners(
    x: torch.Tensor, batch_size: int, lr: float, device: str, seed: int
) -> dict[str, Callable[[], float]]:
    """One callable per method that trains one epoch and returns its wall-clock seconds."""
    from ppvae.inference.train import fit

    vae = build_vae(seed, device)
    vae_fused = build_vae(seed, device)
    ref = ReferenceVAE().to(device).copy_from(vae)
    svi_net = ReferenceVAE().to(device).copy_from(vae)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    pyro.clear_param_store()
    model, guide = pyro_programs(svi_net, register="bench_vae")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())

    def run_ppvae(model: Any = vae, optimizer: Any = "adam") -> float:
        hist = fit(
            model,
            x,
            epochs=1,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            binarize="dynamic",
            device=device,
            progress=False,
        )
        # History.seconds is the epoch alone; fit's one-off setup (moving and checking the
        # data, building the optimizer and loader) is outside it.
        return hist.seconds[0]

    def fused_adam(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, fused=True)

    def run_reference() -> float:
        return timed(
            lambda: reference_train_epoch(
                ref, ref_opt, x, batch_size=batch_size, generator=gen, dynamic_binarize=True
            ),
            device,
        )[0]

    def run_svi() -> float:
        return timed(
            lambda: pyro_svi_epoch(
                svi, x, batch_size=batch_size, generator=gen, dynamic_binarize=True
            ),
            device,
        )[0]

    return {
        "ppvae": run_ppvae,
        "reference": run_reference,
        "pyro_svi": run_svi,
        # What-if: ppvae with torch's fused Adam kernel instead of the default one.
        "ppvae_fused_adam": lambda: run_ppvae(vae_fused, fused_adam),
    }


def training_throughput(
    x: torch.Tensor,
    *,
    batch_sizes: tuple[int, ...] = (128, 512),
    rounds: int = 5,
    lr: float = 1e-3,
    device: str = "cpu",
    seed: int = 0,
    data_source: str = "",
) -> dict[str, Any]:
    """Images per second of the three training loops at each batch size.

    A fourth, ``ppvae_fused_adam``, is ppvae with ``torch.optim.Adam(fused=True)`` passed
    as ``optimizer``: not part of the target, it shows what that library default would
    change (the hand-written loop keeps torch's default Adam, as most user code does).
    """
    x = x.to(device)
    out: dict[str, Any] = {
        "num_images": len(x),
        "data": data_source,
        "rounds": rounds,
        "lr": lr,
        "by_batch_size": {},
        "rows": [],
    }
    for bs in batch_sizes:
        runners = _runners(x, bs, lr, device, seed)
        warmup = {name: run() for name, run in runners.items()}
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(rounds):
            shift = r % len(METHODS)
            order = METHODS[shift:] + METHODS[:shift]
            for name in order:
                seconds[name].append(runners[name]())
        rates = {name: [len(x) / s for s in ts] for name, ts in seconds.items()}
        med = {name: median(v) for name, v in rates.items()}
        best = {name: max(v) for name, v in rates.items()}
        ratio = med["ppvae"] / med["reference"]
        ratio_best = best["ppvae"] / best["reference"]
        svi_ratio = med["pyro_svi"] / med["reference"]
        out["by_batch_size"][str(bs)] = {
            "warmup_seconds": warmup,
            "epoch_seconds": seconds,
            "images_per_second": rates,
            "median_images_per_second": med,
            "best_images_per_second": best,
            "ratio_best_of": ratio_best,
            "ratio_ppvae_vs_reference": ratio,
            "ratio_pyro_svi_vs_reference": svi_ratio,
            "ratio_ppvae_vs_pyro_svi": med["ppvae"] / med["pyro_svi"],
            "target": TRAINING_TARGET,
            "met": ratio >= TRAINING_TARGET,
        }
        out["rows"].append(
            {
                "metric": f"SVI training, batch {bs} (images/s)",
                "ppvae": f"{med['ppvae']:.0f}",
                "reference": f"{med['reference']:.0f} hand-written; "
                f"{med['pyro_svi']:.0f} Pyro SVI ({svi_ratio:.2f}×)",
                "ratio": f"{ratio:.3f} (best-of {ratio_best:.3f})",
                "target": f"≥ {TRAINING_TARGET}",
                "met": ratio >= TRAINING_TARGET,
            }
        )
        fused = med["ppvae_fused_adam"]
        out["rows"].append(
            {
                "metric": f"  … ppvae with optimizer=Adam(fused=True), batch {bs}",
                "ppvae": f"{fused:.0f}",
                "reference": f"{fused / med['ppvae']:.2f}× ppvae's default",
                "ratio": f"{fused / med['reference']:.3f}",
                "target": "",
                "met": None,
            }
        )
    return out
