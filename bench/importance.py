"""Importance-sampling throughput: ``ppvae.log_likelihood`` against two baselines.

Throughput is datapoint-particle pairs per second: ``N·K`` over the seconds an estimate
of log p(x) for ``N`` datapoints with ``K`` particles takes. ppvae runs plain importance
sampling (``proposal="guide"``), the estimator the baselines implement. The baselines use
the same weights (copied from the ppvae model):

* a hand-written chunked PyTorch estimator (:func:`bench.reference.reference_log_likelihood`):
  encode once, draw K·N latents in chunks, decode, Bernoulli log-prob, logsumexp;
* Pyro's ``vectorized_importance_weights`` on the same model written as Pyro programs.
  It sums the log-weights over the data plate, so per-datapoint weights need one call per
  datapoint: it is timed on a few datapoints and its rate extrapolated.

The decoder's dense layers are almost all of the arithmetic, so pairs/s times the
decoder's FLOPs per pair over the machine's measured matmul peak says how close an
estimator comes to the hardware.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.importance import vectorized_importance_weights

from bench.common import DECODER_FLOPS_PER_PAIR, PLAIN_IS, build_vae, ppvae_log_likelihood
from bench.machine import median, timed
from bench.reference import ReferenceVAE, pyro_programs, reference_log_likelihood

__all__ = ["importance_throughput", "pyro_per_datapoint", "IMPORTANCE_TARGET"]

IMPORTANCE_TARGET = 1.0  # ppvae pairs/s over the better baseline's


@torch.no_grad()
def pyro_per_datapoint(model: Callable, guide: Callable, x: torch.Tensor, k: int) -> torch.Tensor:
    """log p(x_i) per datapoint from Pyro's ``vectorized_importance_weights``, one call each."""
    out = []
    for i in range(len(x)):
        lw, _, _ = vectorized_importance_weights(
            model, guide, x[i : i + 1], num_samples=k, max_plate_nesting=1
        )
        out.append(torch.logsumexp(lw, 0) - math.log(k))
    return torch.stack(out)


def importance_throughput(
    x: torch.Tensor,
    *,
    settings: dict[int, tuple[int, int]],
    repeats: int = 3,
    device: str = "cpu",
    peak_flops: float | None = None,
    seed: int = 0,
    what_if_batch_size: int | None = 20,
) -> dict[str, Any]:
    """Pairs per second of the three estimators.

    Parameters
    ----------
    x
        Binary images; the first ``N`` are used.
    settings
        ``{K: (N, N_pyro)}``: datapoints for ppvae and the hand-written estimator, and for
        the one-call-per-datapoint Pyro baseline.
    repeats
        Timed repetitions (interleaved) after one warm-up of each.
    peak_flops
        The machine's matmul FLOP/s, for the fraction-of-peak column.
    what_if_batch_size
        Also time ppvae with this ``batch_size`` (datapoints per chunk of particles) when
        ``N`` exceeds it: the default, about 2**24 / (256 × 784) = 83 datapoints, makes
        every chunk's activations 64 MB, past the CPU caches. 20 keeps them near 16 MB,
        the reference's budget.
    """
    from ppvae.inference.importance import log_likelihood

    vae = build_vae(seed, device).eval()
    ref = ReferenceVAE().to(device).copy_from(vae).eval()
    model, guide = pyro_programs(ref)
    x = x.to(device)
    out: dict[str, Any] = {"by_k": {}, "rows": [], "notes": []}
    for k, (n, n_pyro) in sorted(settings.items()):
        xs, xp = x[:n], x[:n_pyro]
        runs: dict[str, Callable[[], Any]] = {
            "ppvae": lambda xs=xs, k=k: ppvae_log_likelihood(vae.model, vae.guide, xs, k),
            "reference": lambda xs=xs, k=k: reference_log_likelihood(ref, xs, k),
            "pyro": lambda xp=xp, k=k: pyro_per_datapoint(model, guide, xp, k),
        }
        pairs = {"ppvae": n * k, "reference": n * k, "pyro": n_pyro * k}
        if what_if_batch_size is not None and n > what_if_batch_size:
            # ppvae with a smaller data batch per chunk: how much its default costs.
            runs["ppvae_small_batches"] = lambda xs=xs, k=k: log_likelihood(
                vae.model,
                vae.guide,
                xs,
                num_samples=k,
                batch_size=what_if_batch_size,
                progress=False,
                **PLAIN_IS,
            )
            pairs["ppvae_small_batches"] = n * k
        results = {name: run() for name, run in runs.items()}  # warm-up, and the estimates
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                seconds[name].append(timed(runs[name], device)[0])
        rate = {name: pairs[name] / median(ts) for name, ts in seconds.items()}
        best_rate = {name: pairs[name] / min(ts) for name, ts in seconds.items()}
        best_name = max(("reference", "pyro"), key=rate.get)
        ratio = rate["ppvae"] / rate[best_name]
        ratio_best = best_rate["ppvae"] / max(best_rate["reference"], best_rate["pyro"])
        frac = {
            name: (r * DECODER_FLOPS_PER_PAIR / peak_flops if peak_flops else None)
            for name, r in rate.items()
        }
        ppvae_ll = results["ppvae"].per_datapoint.detach().cpu()
        ref_ll = results["reference"].detach().cpu()
        diff = ppvae_ll - ref_ll
        agree = float(diff.mean()), float(diff.std() / math.sqrt(len(diff))) if n > 1 else 0.0
        out["by_k"][str(k)] = {
            "num_data": n,
            "num_data_pyro": n_pyro,
            "seconds": seconds,
            "pairs_per_second": rate,
            "best_pairs_per_second": best_rate,
            "ratio_best_of_vs_better_baseline": ratio_best,
            "fraction_of_matmul_peak": frac,
            "better_baseline": best_name,
            "ratio_vs_better_baseline": ratio,
            "target": IMPORTANCE_TARGET,
            "met": ratio >= IMPORTANCE_TARGET,
            "mean_log_likelihood": {
                "ppvae": float(ppvae_ll.mean()),
                "reference": float(ref_ll.mean()),
                "pyro": float(results["pyro"].mean()),
                "pyro_on_first": n_pyro,
            },
            "ppvae_minus_reference": {"mean": agree[0], "stderr": agree[1]},
        }
        peak_text = f", {frac['ppvae']:.0%} of matmul peak" if peak_flops else ""
        out["rows"].append(
            {
                "metric": f"importance sampling K={k}, {n} datapoints (pairs/s)",
                "ppvae": f"{rate['ppvae']:.3g}{peak_text}",
                "reference": f"{rate['reference']:.3g} hand-written; "
                f"{rate['pyro']:.3g} Pyro per-datapoint",
                "ratio": f"{ratio:.3f} vs {'hand-written' if best_name == 'reference' else 'Pyro'}"
                f" (best-of {ratio_best:.3f})",
                "target": f"≥ {IMPORTANCE_TARGET}",
                "met": ratio >= IMPORTANCE_TARGET,
            }
        )
        if "ppvae_small_batches" in rate:
            gain = rate["ppvae_small_batches"] / rate["ppvae"]
            out["rows"].append(
                {
                    "metric": f"  … ppvae with batch_size={what_if_batch_size} "
                    f"(chunks of {what_if_batch_size}×256 datapoint-particle pairs)",
                    "ppvae": f"{rate['ppvae_small_batches']:.3g}",
                    "reference": f"{gain:.2f}× ppvae's default",
                    "ratio": f"{rate['ppvae_small_batches'] / rate[best_name]:.3f}",
                    "target": "",
                    "met": None,
                }
            )
        if abs(agree[0]) > 4 * agree[1] + 0.05:
            out["notes"].append(
                f"K={k}: ppvae and the hand-written estimator disagree on the same weights: "
                f"mean difference {agree[0]:.3f} ± {agree[1]:.3f} nats"
            )
    return out
