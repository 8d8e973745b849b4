"""Scaling out: training on 2 processes × 1 thread against 1 process × 1 thread.

Both train the digits demo model (``VAE(latent 16, hidden 256-256)``, Binomial(16)
pixels) with ``ppvae.fit`` at a global batch of 512 on the same data from the same seed;
the two-process run is a ``torchrun --standalone --nproc-per-node 2`` launch (gloo), each
rank on one thread. Throughput is training images per second over the epochs after the
first (validation and start-up excluded; all ranks' images counted), and the efficiency
is ``images/s(2 processes) / (2 × images/s(1 process))``. The two alternate for a few
rounds so that changes in the machine's load hit both; the load average
(``os.getloadavg``) before and after is printed, since on a shared machine it decides the
result as much as the code does.

With a GPU (``torch.cuda.is_available()``), the same model is also trained on one GPU,
and importance sampling (K = 1000) and AIS (100 steps × 16 chains) throughput on it are
measured in datapoints per second; otherwise that part is skipped with a message.

``--data synthetic28`` trains an MNIST-sized generated problem instead (12,000 binary
28×28 images, a 512-512 MLP), where a step's arithmetic outweighs its fixed cost.

Run: ``.venv/bin/python -m bench.scaling [--epochs 30] [--rounds 2] [--data synthetic28]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import DIGITS_HIDDEN, DIGITS_LATENT_DIM

__all__ = ["train_throughput", "scaling", "gpu_throughput"]

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZE = 512
TARGET_EFFICIENCY = 0.8


def _vae(ds: Any, seed: int) -> Any:
    import ppvae

    torch.manual_seed(seed)
    return ppvae.VAE(
        ds.event_shape,
        latent_dim=DIGITS_LATENT_DIM,
        likelihood=ds.likelihood,
        likelihood_kwargs=ds.likelihood_kwargs,
        hidden=DIGITS_HIDDEN,
    )


def _synthetic28(seed: int) -> tuple[Any, torch.Tensor]:
    """An MNIST-sized problem: 12,000 binary 28×28 images and a 512-512 MLP VAE.

    On the digits (1,293 images of 8×8, 3 steps an epoch) a step's fixed cost (Pyro's
    traces, the optimizer's Python) is as large as its arithmetic, so halving the batch per
    rank cannot halve the step; this is the size of problem scaling out is for.
    """
    import ppvae

    g = torch.Generator().manual_seed(1234)
    strokes = torch.rand(12_000, 1, 28, 1, generator=g) < 0.3  # row patterns, then noise
    x = (strokes & (torch.rand(12_000, 1, 28, 28, generator=g) < 0.8)).float()
    torch.manual_seed(seed)
    vae = ppvae.VAE((1, 28, 28), latent_dim=16, likelihood="bernoulli", hidden=(512, 512))
    return vae, x


def train_throughput(
    epochs: int, device: str = "cpu", seed: int = 0, data: str = "digits"
) -> dict[str, Any]:
    """Train the ``data`` model ``epochs`` epochs here (one rank of a launch, or alone)."""
    import ppvae

    if data == "synthetic28":
        vae, x = _synthetic28(seed)
    else:
        ds = ppvae.load_dataset("digits")
        vae, x = _vae(ds, seed), ds.train
    hist = ppvae.fit(
        vae,
        x,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        seed=seed,
        progress=False,
        device=device,
    )
    ips = hist.images_per_second[1:] or hist.images_per_second
    return {
        "images_per_second": statistics.median(ips),
        "epochs": epochs,
        "device": device,
        "data": data,
    }


def _run(nproc: int, epochs: int, data: str) -> float:
    """images/s of a fresh run on ``nproc`` processes, one thread each."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        worker = ["-m", "bench.scaling", "--worker", str(out), "--epochs", str(epochs)]
        worker += ["--data", data]
        if nproc == 1:
            cmd = [sys.executable, *worker]
        else:
            launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
            cmd = [sys.executable, *launch, *worker]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env["OMP_NUM_THREADS"] = "1"
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=1200)
        return float(json.loads(out.read_text())["images_per_second"])


def scaling(epochs: int = 30, rounds: int = 2, data: str = "digits") -> dict[str, Any]:
    """1 × 1 against 2 × 1 on the CPU, alternating for ``rounds`` rounds (medians)."""
    load_before = os.getloadavg()
    one, two = [], []
    for _ in range(rounds):
        one.append(_run(1, epochs, data))
        two.append(_run(2, epochs, data))
    ips1, ips2 = statistics.median(one), statistics.median(two)
    return {
        "batch_size": BATCH_SIZE,
        "epochs": epochs,
        "data": data,
        "one_process": one,
        "two_processes": two,
        "images_per_second_1x1": ips1,
        "images_per_second_2x1": ips2,
        "efficiency": ips2 / (2 * ips1),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cores": len(os.sched_getaffinity(0)),
    }


def gpu_throughput(epochs: int = 30, seed: int = 0) -> dict[str, Any]:
    """Training images/s, IS and AIS datapoints/s on one GPU."""
    import ppvae

    ds = ppvae.load_dataset("digits")
    train = train_throughput(epochs, "cuda", seed)
    vae = _vae(ds, seed).to("cuda")
    ppvae.fit(
        vae, ds.train, epochs=epochs, batch_size=128, seed=seed, progress=False, device="cuda"
    )
    x = ds.test.to("cuda")
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "train": train}
    for name, call in (
        (
            "is_k1000",
            lambda: ppvae.log_likelihood(
                vae.model, vae.guide, x, num_samples=1000, proposal="guide", seed=0, progress=False
            ),
        ),
        (
            "ais_100x16",
            lambda: ppvae.ais_log_likelihood(
                vae.model, vae.guide, x, num_steps=100, num_chains=16, seed=0, progress=False
            ),
        ),
    ):
        call()  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        out[f"{name}_datapoints_per_second"] = len(x) / (time.perf_counter() - start)
    return out


def _report(r: dict[str, Any]) -> None:
    print(f"cores {r['cores']}, load average before {r['load_before']}, after {r['load_after']}")
    print(f"{r['data']}: batch {r['batch_size']}, {r['epochs']} epochs per run; runs (images/s):")
    print(f"  1 process x 1 thread : {[round(v) for v in r['one_process']]}")
    print(f"  2 processes x 1 thread: {[round(v) for v in r['two_processes']]}")
    eff = r["efficiency"]
    verdict = "meets" if eff >= TARGET_EFFICIENCY else "misses"
    print(
        f"median: {r['images_per_second_1x1']:.0f} -> {r['images_per_second_2x1']:.0f} "
        f"images/s, efficiency {eff:.2f} ({verdict} the {TARGET_EFFICIENCY} target)"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--data",
        default="digits",
        choices=("digits", "synthetic28"),
        help="the digits demo model, or an MNIST-sized generated problem",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        result = train_throughput(args.epochs, data=args.data)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(args.worker).write_text(json.dumps(result))
        return
    r = scaling(args.epochs, args.rounds, args.data)
    _report(r)
    if torch.cuda.is_available():
        print(json.dumps(gpu_throughput(args.epochs), indent=1))
    else:
        print("GPU part skipped: CUDA is not available on this machine")


if __name__ == "__main__":
    main()
