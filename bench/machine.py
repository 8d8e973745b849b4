"""What the benchmarks ran on, a matmul peak to put throughputs in proportion, and timers."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["machine_info", "matmul_peak", "synchronize", "timed", "median"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """Host, CPU model, cores, torch threads, library versions and the accelerator if any."""
    import pyro

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": device,
        # Other processes on the machine distort timings; this says how busy it was.
        "load_average": os.getloadavg(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def synchronize(device: str | torch.device) -> None:
    """Wait for queued accelerator work so that wall-clock timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: str | torch.device) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, result), synchronising the device on both sides."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def matmul_peak(device: str, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Single-precision matmul rate of this machine: best of ``repeats`` ``n×n @ n×n``.

    FLOP/s = 2 n³ / t. This is the practical peak the decoder's dense layers can hope for,
    so the fraction of it an estimator reaches says how much time goes elsewhere.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    torch.mm(a, b)  # warm-up: thread pool, allocator, BLAS dispatch
    times = [timed(lambda: torch.mm(a, b), device)[0] for _ in range(repeats)]
    best = min(times)
    return {"n": n, "repeats": repeats, "seconds": best, "flops": 2 * n**3 / best}
