"""Peak memory of ``log_likelihood`` at small and large K, each in a fresh process.

A process's peak resident set includes the imports (Python, torch, Pyro: about 500 MiB),
so every measurement runs in its own child: a *baseline* child that only imports and
builds the model, and one child per estimator and K that also runs the estimate. Each
child reports its high-water mark ``VmHWM`` after setup and a warm-up call with K = 1,
then resets it (``clear_refs``) and reports it again after the estimate, which gives the
estimate's own increment; on CUDA, the accelerator's peak allocation. Chunking over
particles works when the peak at K = 10000 is within 1.2× of the peak at K = 100.

Run as ``python -m bench.memory --child MODE K N DEVICE`` to get one child's JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["memory_benchmark", "MEMORY_TARGET"]

_ROOT = Path(__file__).resolve().parents[1]  # where ``-m bench.memory`` resolves
MEMORY_TARGET = 1.2
# glibc's default mmap threshold rises after every freed large block (up to 32 MiB), after
# which big temporaries come from the heap and freed ones stay resident, so a long run of
# chunks ratchets the resident set up with K. Fixing the threshold at glibc's initial
# value turns that off and shows the estimator's own footprint.
_FIXED_MMAP_THRESHOLD = 128 * 1024  # max allowed peak(K=10000) / peak(K=100)


def _status_mib(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0); whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _child(mode: str, num_samples: int, num_data: int, device: str) -> dict[str, Any]:
    import torch

    from bench.reference import ReferenceVAE, reference_log_likelihood
    from ppvae.models import VAE

    torch.manual_seed(0)
    vae = VAE((1, 28, 28), 50, likelihood="bernoulli", hidden=(400, 400)).to(device).eval()
    x = torch.bernoulli(torch.full((num_data, 1, 28, 28), 0.3)).to(device)
    out: dict[str, Any] = {"mode": mode, "num_samples": num_samples, "num_data": num_data}
    if mode == "ppvae":
        from bench.common import PLAIN_IS
        from ppvae.inference.importance import log_likelihood

        def estimate(k: int) -> float:
            res = log_likelihood(
                vae.model, vae.guide, x, num_samples=k, seed=0, progress=False, **PLAIN_IS
            )
            return res.mean

    elif mode == "reference":
        ref = ReferenceVAE().to(device).copy_from(vae)

        def estimate(k: int) -> float:
            return float(reference_log_likelihood(ref, x, k).mean())

    elif mode != "baseline":
        raise ValueError(f"unknown mode {mode!r}")
    if mode != "baseline":
        # One call with K = 2 first: lazy imports and kernel set-up on first use cost about
        # 100 MiB once, whatever K; the increment below is then the estimate's working set.
        # (K = 1 would skip the PSIS diagnostics and leave ArviZ's lazy import, about
        # 90 MiB, to the measured call.)
        estimate(2)
    out["vm_hwm_after_setup_mib"] = _status_mib("VmHWM")
    out["peak_was_reset"] = _reset_peak()
    out["vm_rss_before_mib"] = _status_mib("VmRSS")
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    if mode != "baseline":
        out["mean"] = estimate(num_samples)
    out["seconds"] = time.perf_counter() - start
    # ru_maxrss (KiB on Linux) keeps the parent's peak at fork time across exec, so it
    # overstates a child's own peak when the parent is large; VmHWM is the child's own.
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["vm_hwm_mib"] = _status_mib("VmHWM")
    if out["peak_was_reset"] and out["vm_hwm_mib"] is not None:
        out["call_increment_mib"] = out["vm_hwm_mib"] - out["vm_rss_before_mib"]
    if torch.device(device).type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _run_child(
    mode: str, num_samples: int, num_data: int, device: str, fixed_mmap: bool = False
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.memory", "--child", mode, str(num_samples)]
    env = dict(os.environ)
    if fixed_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(_FIXED_MMAP_THRESHOLD)
    proc = subprocess.run(
        [*cmd, str(num_data), device],
        capture_output=True,
        text=True,
        check=False,
        cwd=_ROOT,
        env=env,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"mode": mode, "num_samples": num_samples, "error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak(run: dict[str, Any], device: str) -> float:
    """The child's whole-process peak (imports included), or the accelerator's."""
    if device.startswith("cuda"):
        return run["cuda_max_allocated_mib"]
    return max(run["vm_hwm_after_setup_mib"], run["vm_hwm_mib"])


def _row(metric: str, ppvae: str, reference: str, ratio: str = "", **kw: Any) -> dict[str, Any]:
    row = {"metric": metric, "ppvae": ppvae, "reference": reference, "ratio": ratio}
    return {**row, "target": kw.get("target", ""), "met": kw.get("met")}


def memory_benchmark(
    *, num_data: int, small_k: int = 100, large_k: int = 10_000, device: str = "cpu"
) -> dict[str, Any]:
    """Peak memory of ppvae's and the reference estimator at ``small_k`` and ``large_k``.

    The target compares whole-process peaks (what the operating system sees, imports
    included). Because imports dominate that peak, the increment of the estimate itself
    (peak during the call over the resident set just before it, from a reset ``VmHWM``) is
    reported too: it is bounded by the chunk of particles in flight, not by K.
    """
    runs = {"baseline": _run_child("baseline", 0, num_data, device)}
    for mode in ("ppvae", "reference"):
        for k in (small_k, large_k):
            runs[f"{mode}_k{k}"] = _run_child(mode, k, num_data, device)
            if not device.startswith("cuda"):
                runs[f"{mode}_k{k}_fixed_mmap"] = _run_child(mode, k, num_data, device, True)
    summary: dict[str, Any] = {}
    base = runs["baseline"]
    base_peak = None if "error" in base else _peak(base, device)
    for mode in ("ppvae", "reference"):
        small, large = runs[f"{mode}_k{small_k}"], runs[f"{mode}_k{large_k}"]
        if "error" in small or "error" in large:
            summary[mode] = {"error": small.get("error") or large.get("error")}
            continue
        summary[mode] = {
            "peak_small_mib": _peak(small, device),
            "peak_large_mib": _peak(large, device),
            "ratio": _peak(large, device) / _peak(small, device),
            "call_increment_small_mib": small.get("call_increment_mib"),
            "call_increment_large_mib": large.get("call_increment_mib"),
            "seconds_large": large["seconds"],
        }
        fixed = [runs.get(f"{mode}_k{k}_fixed_mmap", {}) for k in (small_k, large_k)]
        if all("call_increment_mib" in r for r in fixed):
            summary[mode]["fixed_mmap_increment_small_mib"] = fixed[0]["call_increment_mib"]
            summary[mode]["fixed_mmap_increment_large_mib"] = fixed[1]["call_increment_mib"]
            summary[mode]["fixed_mmap_ratio"] = _peak(fixed[1], device) / _peak(fixed[0], device)
    ppvae, ref = summary.get("ppvae", {}), summary.get("reference", {})
    if "ratio" not in ppvae:
        error = f"failed: {ppvae.get('error', 'not run')}"
        rows = [_row("peak memory of log_likelihood", error, "", target="< 1.2", met=False)]
        return {"runs": runs, "summary": summary, "rows": rows}

    def pair(d: dict[str, Any], key: str) -> str:
        if d.get(f"{key}_large_mib") is None:
            return "n/a"
        return f"{d[f'{key}_large_mib']:.0f} / {d[f'{key}_small_mib']:.0f} MiB"

    met = ppvae["ratio"] < MEMORY_TARGET
    rows = [
        _row(
            f"process peak memory, K={large_k} / K={small_k}, {num_data} datapoints"
            + (f" (import baseline {base_peak:.0f} MiB)" if base_peak else ""),
            pair(ppvae, "peak"),
            pair(ref, "peak"),
            f"{ppvae['ratio']:.3f}",
            target=f"< {MEMORY_TARGET}",
            met=met,
        ),
        _row(
            f"memory added by the estimate itself, K={large_k} / K={small_k}",
            pair(ppvae, "call_increment"),
            pair(ref, "call_increment"),
        ),
    ]
    if "fixed_mmap_increment_large_mib" in ppvae:
        rows.append(
            _row(
                f"  … with MALLOC_MMAP_THRESHOLD_={_FIXED_MMAP_THRESHOLD}: added memory, "
                "and process-peak ratio",
                pair(ppvae, "fixed_mmap_increment"),
                pair(ref, "fixed_mmap_increment"),
                f"{ppvae['fixed_mmap_ratio']:.3f}",
            )
        )
    return {"runs": runs, "summary": summary, "baseline_peak_mib": base_peak, "rows": rows}


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _, _, mode_, k_, n_, device_ = sys.argv
        print(json.dumps(_child(mode_, int(k_), int(n_), device_)))
    else:
        sys.exit("usage: python -m bench.memory --child MODE K N DEVICE")
