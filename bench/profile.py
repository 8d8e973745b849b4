"""Where a training step's time goes: ``ppvae.fit`` against the hand-written loop, by cProfile.

Both train the same model on the same number of batches under ``cProfile``. Self time is
grouped by where the code lives (torch's compiled kernels, torch's Python, Pyro, ppvae,
the rest), and the cumulative time of the functions that make up Pyro's per-step work
(tracing the guide and the model, computing log-densities, shape validation) is listed,
so that a shortfall in throughput can be pinned on its cause.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO

from bench.common import build_vae
from bench.reference import ReferenceVAE, pyro_programs, reference_elbo, reference_train_epoch

__all__ = ["profile_training", "step_overhead", "format_profile", "format_overhead"]

# Functions of Pyro's per-step work, by (file suffix, function name).
_KEY_FUNCTIONS = {
    "differentiable_loss (whole objective)": ("infer/trace_elbo.py", "differentiable_loss"),
    "trace the guide, replay the model": ("infer/enum.py", "get_importance_trace"),
    "compute_log_prob": ("poutine/trace_struct.py", "compute_log_prob"),
    "check_site_shape (validation)": ("infer/util.py", "check_site_shape"),
    "check_if_enumerated (validation)": ("infer/util.py", "check_if_enumerated"),
    "backward": ("torch/_tensor.py", "backward"),
    "optimizer.step (Adam)": ("torch/optim/adam.py", "step"),
    "BatchLoader batches": ("inference/batches.py", "_batches"),
    "train_step": ("inference/step.py", "train_step"),
    "fit setup (one-off): check_data": ("models/vae.py", "check_data"),
    "fit setup (one-off): binarize_once": ("inference/batches.py", "binarize_once"),
}
_SETUP = ("fit setup (one-off): check_data", "fit setup (one-off): binarize_once")


def _category(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<built-in"):
        return "compiled (torch kernels, builtins)"
    if "/pyro/" in filename:
        return "pyro (Python)"
    if "/torch/" in filename:
        return "torch (Python)"
    if "/site-packages/" in filename or "/lib/python" in filename:
        return "other libraries"
    return "ppvae / bench"


def _summarise(prof: cProfile.Profile, steps: int) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    total = stats.total_tt
    by_cat: dict[str, float] = {}
    rows = []
    key_times: dict[str, float] = {}
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        cat = _category(filename)
        by_cat[cat] = by_cat.get(cat, 0.0) + tottime
        short = filename.split("site-packages/")[-1] if "site-packages" in filename else filename
        rows.append((tottime, cumtime, ncalls, f"{short}:{line}({func})"))
        for label, (suffix, name) in _KEY_FUNCTIONS.items():
            if func == name and filename.endswith(suffix):
                key_times[label] = key_times.get(label, 0.0) + cumtime
    rows.sort(reverse=True)
    per_step = 1e3 / steps
    # fit checks the data once per call (a fixed Bernoulli draw of all of it, then a
    # support check): spread over few profiled steps it would look like per-step work.
    setup = sum(key_times.get(k, 0.0) for k in _SETUP)
    return {
        "steps": steps,
        "total_seconds": total,
        "ms_per_step": total * per_step,
        "ms_per_step_without_setup": (total - setup) * per_step,
        "self_ms_per_step_by_category": {k: v * per_step for k, v in sorted(by_cat.items())},
        "cumulative_ms_per_step": {k: v * per_step for k, v in key_times.items()},
        "top_self_time": [
            {"function": f, "calls_per_step": n / steps, "self_ms_per_step": t * per_step}
            for t, _, n, f in rows[:15]
        ],
    }


def profile_training(
    batch_size: int, steps: int = 20, device: str = "cpu", seed: int = 0
) -> dict[str, Any]:
    """Profile ``steps`` training steps of ``ppvae.fit`` and of the hand-written loop."""
    from ppvae.inference.train import fit

    x = torch.rand(batch_size * steps, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    x = x.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    vae = build_vae(seed, device)
    ref = ReferenceVAE().to(device).copy_from(vae)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    kw = {"batch_size": batch_size, "generator": gen, "dynamic_binarize": True}
    # Warm up both outside the profiler.
    fit(vae, x, epochs=1, batch_size=batch_size, binarize="dynamic", progress=False)
    reference_train_epoch(ref, opt, x, **kw)
    out = {}
    prof = cProfile.Profile()
    prof.enable()
    fit(vae, x, epochs=1, batch_size=batch_size, binarize="dynamic", progress=False)
    prof.disable()
    out["ppvae"] = _summarise(prof, steps)
    prof = cProfile.Profile()
    prof.enable()
    reference_train_epoch(ref, opt, x, **kw)
    prof.disable()
    out["reference"] = _summarise(prof, steps)
    return out


def format_profile(result: dict[str, Any]) -> str:
    """A plain-text digest of :func:`profile_training`'s output."""
    lines = []
    for side in ("ppvae", "reference"):
        r = result[side]
        lines.append(
            f"{side}: {r['ms_per_step_without_setup']:.1f} ms/step under cProfile "
            f"({r['steps']} steps; {r['ms_per_step']:.1f} with fit's one-off setup)"
        )
        for cat, ms in r["self_ms_per_step_by_category"].items():
            lines.append(f"    self time {cat:<36} {ms:8.2f} ms/step")
        for label, ms in r["cumulative_ms_per_step"].items():
            lines.append(f"    cumulative {label:<40} {ms:8.2f} ms/step")
        lines.append("    top self time:")
        for row in r["top_self_time"][:10]:
            lines.append(
                f"      {row['self_ms_per_step']:7.2f} ms/step  "
                f"{row['calls_per_step']:6.0f} calls/step  {row['function']}"
            )
    return "\n".join(lines)


def _best_ms(fn: Callable[[], Any], number: int, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e3


def step_overhead(number: int = 200, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Fixed per-step costs, measured without a profiler on one-image batches.

    With a batch of one the arithmetic is negligible, so the differences between these
    timings are the per-step overheads themselves (best of 5 repeats of ``number`` calls):

    * the forward ELBO by hand, by Pyro's ``Trace_ELBO`` on the same networks written as
      plain Pyro programs, and by ``Trace_ELBO`` on ppvae's ``VAE`` (as ``fit`` calls it,
      with ``num_data``), each with Pyro's validation on (its default) and off;
    * a whole training step (forward, backward, Adam), ppvae's ``fit`` against the
      hand-written loop, with validation on and off.
    """
    from ppvae.inference.train import fit

    vae = build_vae(seed, device)
    ref = ReferenceVAE().to(device).copy_from(vae)
    model, guide = pyro_programs(ref)
    x = torch.bernoulli(torch.full((1, 1, 28, 28), 0.3, device=device))
    elbo = Trace_ELBO(vectorize_particles=True, max_plate_nesting=1)
    forward = {
        "hand-written": lambda: reference_elbo(ref, x).sum(),
        "Trace_ELBO, plain Pyro programs": lambda: elbo.differentiable_loss(model, guide, x),
        "Trace_ELBO, ppvae VAE": lambda: elbo.differentiable_loss(
            vae.model, vae.guide, x, num_data=60_000
        ),
    }
    out: dict[str, Any] = {"forward_ms": {}, "step_ms": {}, "number": number}
    for validate in (True, False):
        with pyro.validation_enabled(validate):
            tag = "validation on" if validate else "validation off"
            for name, fn in forward.items():
                out["forward_ms"][f"{name}, {tag}"] = _best_ms(fn, number)
    n = number
    xs = torch.rand(n, 1, 28, 28, device=device)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = {"batch_size": 1, "generator": gen, "dynamic_binarize": True}

    def fit_step_ms() -> float:
        hist = fit(vae, xs, epochs=1, batch_size=1, binarize="dynamic", progress=False)
        return hist.seconds[0] / n * 1e3

    for validate in (True, False):
        with pyro.validation_enabled(validate):
            tag = "validation on" if validate else "validation off"
            out["step_ms"][f"ppvae fit, {tag}"] = min(fit_step_ms() for _ in range(3))

    def ref_step_ms() -> float:
        start = time.perf_counter()
        reference_train_epoch(ref, opt, xs, **kw)
        return (time.perf_counter() - start) / n * 1e3

    out["step_ms"]["hand-written"] = min(ref_step_ms() for _ in range(3))
    return out


def format_overhead(result: dict[str, Any]) -> str:
    """A plain-text digest of :func:`step_overhead`'s output."""
    lines = ["per-step costs on one-image batches (best of 5, ms):"]
    for section in ("forward_ms", "step_ms"):
        for name, ms in result[section].items():
            lines.append(
                f"    {'forward ' if section == 'forward_ms' else 'step    '}{name:<48} {ms:7.3f}"
            )
    return "\n".join(lines)
