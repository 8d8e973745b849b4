"""Accuracy at a fixed budget: ppvae and the hand-written reference trained alike on Fashion-MNIST.

Both start from identical weights (the reference copies ppvae's initialisation), see the
same images for the same number of epochs with the same batch size, learning rate and
dynamic binarisation, and are then scored by importance sampling on the same fixed test
images. The reference is scored twice, with the hand-written estimator and with
``ppvae.log_likelihood`` on the reference written as Pyro programs, so that a difference
in training (same estimator, different trainers) is told apart from a difference in
evaluation (same weights, different estimators). Differences are paired over test images
and carry the paired standard error; a single training run per side means training noise
(minibatch order, ELBO samples) is not in that error bar.

The importance-weighted objective is reported alongside: ppvae models trained with
``elbo="iwae"`` at K = 5 and K = 50 (Burda et al., 2016).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from bench.common import build_vae, fashion_mnist, ppvae_log_likelihood
from bench.reference import (
    ReferenceVAE,
    pyro_programs,
    reference_log_likelihood,
    reference_train_epoch,
)

__all__ = ["accuracy_benchmark", "iwae_benchmark", "paired"]


def paired(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean of ``a − b`` over datapoints and its standard error."""
    d = (a.double() - b.double()).cpu()
    se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return {"mean": float(d.mean()), "stderr": se}


def _summary(ll: torch.Tensor) -> dict[str, float]:
    ll = ll.double().cpu()
    return {"mean": float(ll.mean()), "stderr": float(ll.std() / math.sqrt(len(ll)))}


def _fit(vae: Any, x: torch.Tensor, **kw: Any) -> tuple[Any, float]:
    from ppvae.inference.train import fit

    start = time.perf_counter()
    hist = fit(vae, x, binarize="dynamic", progress=False, **kw)
    return hist, time.perf_counter() - start


def _train_reference(
    ref: ReferenceVAE, x: torch.Tensor, epochs: int, batch_size: int, lr: float, seed: int
) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    start, elbo = time.perf_counter(), []
    for _ in range(epochs):
        elbo.append(
            reference_train_epoch(
                ref, opt, x, batch_size=batch_size, generator=gen, dynamic_binarize=True
            )
        )
    return elbo, time.perf_counter() - start


def accuracy_benchmark(
    *,
    train_size: int | None,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    test_size: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    seed_noise: bool = True,
) -> dict[str, Any]:
    """Train ppvae and the reference alike, then compare test log-likelihoods.

    With ``seed_noise`` the reference is trained a second time from the same initial
    weights with another seed (minibatch order, binarisation and ELBO draws), and the
    paired difference of the two references is reported: how far apart two runs of the
    *same* trainer land, the yardstick for the ppvae − reference difference.
    """
    ds, skip = fashion_mnist()
    if ds is None:
        row = {"metric": "accuracy (Fashion-MNIST)", "ppvae": "skipped", "reference": skip}
        row.update(ratio="", target="", met=None)
        return {"skipped": skip, "rows": [row], "notes": [skip]}
    x = ds.train if train_size is None else ds.train[:train_size]
    x, x_test = x.to(device), ds.test[:test_size].to(device)
    budget = f"{len(x)} images × {epochs} epochs, batch {batch_size}, lr {lr}"
    out: dict[str, Any] = {
        "data": ds.name,
        "binarize": ds.binarize,
        "budget": budget,
        "test_size": len(x_test),
        "num_samples": num_samples,
        "seed": seed,
        "notes": [],
    }

    vae = build_vae(seed, device)
    ref = ReferenceVAE().to(device).copy_from(vae)
    hist, t_ppvae = _fit(vae, x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    ref_elbo, t_ref = _train_reference(ref, x, epochs, batch_size, lr, seed)
    vae.eval()
    ref.eval()

    ll_ppvae = ppvae_log_likelihood(vae.model, vae.guide, x_test, num_samples, seed=1)
    torch.manual_seed(1)
    ll_ref_hand = reference_log_likelihood(ref, x_test, num_samples)
    model, guide = pyro_programs(ref)
    ll_ref_ppvae = ppvae_log_likelihood(model, guide, x_test, num_samples, seed=1)
    p, rh, rp = ll_ppvae.per_datapoint, ll_ref_hand, ll_ref_ppvae.per_datapoint
    training = paired(p, rp)  # same estimator, different trainers
    end_to_end = paired(p, rh)
    estimator = paired(rp, rh)  # same weights, different estimators
    met = training["mean"] >= -training["stderr"]
    out["vae"] = {
        "train_seconds": {"ppvae": t_ppvae, "reference": t_ref},
        "train_elbo": {"ppvae": hist.train_objective, "reference": ref_elbo},
        "test_log_likelihood": {
            "ppvae": _summary(p),
            "reference_handwritten_estimator": _summary(rh),
            "reference_ppvae_estimator": _summary(rp),
        },
        "ppvae_minus_reference_same_estimator": training,
        "ppvae_minus_reference_end_to_end": end_to_end,
        "estimator_difference_on_reference_weights": estimator,
        "target": "ppvae − reference ≥ −1 paired s.e.",
        "met": met,
    }
    s = out["vae"]["test_log_likelihood"]
    rows = [
        {
            "metric": f"Fashion-MNIST test log p(x), K={num_samples}, {len(x_test)} images "
            f"(Trace_ELBO, {budget})",
            "ppvae": f"{s['ppvae']['mean']:.2f} ± {s['ppvae']['stderr']:.2f}",
            "reference": f"{s['reference_ppvae_estimator']['mean']:.2f} (ppvae est.), "
            f"{s['reference_handwritten_estimator']['mean']:.2f} (hand-written est.)",
            "ratio": f"Δ = {training['mean']:+.2f} ± {training['stderr']:.2f} nats",
            "target": "Δ ≥ −1 s.e.",
            "met": met,
        },
        {
            "metric": "estimators on the reference's weights: ppvae − hand-written",
            "ppvae": "",
            "reference": "",
            "ratio": f"Δ = {estimator['mean']:+.3f} ± {estimator['stderr']:.3f} nats",
            "target": "",
            "met": None,
        },
        {
            "metric": "training wall-clock for that budget (s; one run each, not interleaved)",
            "ppvae": f"{t_ppvae:.0f}",
            "reference": f"{t_ref:.0f}",
            "ratio": f"{t_ref / t_ppvae:.2f} (speed)",
            "target": "",
            "met": None,
        },
    ]

    if seed_noise:
        ref2 = ReferenceVAE().to(device).copy_from(build_vae(seed, device))
        _train_reference(ref2, x, epochs, batch_size, lr, seed + 1)
        m2, g2 = pyro_programs(ref2.eval())
        ll2 = ppvae_log_likelihood(m2, g2, x_test, num_samples, seed=1).per_datapoint
        noise = paired(ll2, rp)
        out["vae"]["reference_seed_minus_reference"] = noise
        rows.insert(
            2,
            {
                "metric": "seed noise: reference (another seed) − reference, ppvae est.",
                "ppvae": "",
                "reference": f"{_summary(ll2)['mean']:.2f}",
                "ratio": f"Δ = {noise['mean']:+.2f} ± {noise['stderr']:.2f} nats",
                "target": "",
                "met": None,
            },
        )
    out["rows"] = rows
    out["ppvae_per_datapoint"] = p.double().cpu().tolist()
    out["train_size"], out["epochs"] = len(x), epochs
    return out


def iwae_benchmark(
    num_particles: int,
    *,
    train_size: int | None,
    epochs: int,
    vae_result: dict[str, Any] | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    test_size: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train a ppvae model with ``elbo="iwae"`` and score it on the same test images.

    When ``vae_result`` (from :func:`accuracy_benchmark`) had the same training budget, the
    paired difference to that Trace-ELBO model is reported too.
    """
    ds, skip = fashion_mnist()
    if ds is None:
        return {"skipped": skip, "rows": [], "notes": [skip]}
    k = num_particles
    x = ds.train if train_size is None else ds.train[:train_size]
    x, x_test = x.to(device), ds.test[:test_size].to(device)
    budget = f"{len(x)} images × {epochs} epochs"
    out: dict[str, Any] = {"num_particles": k, "budget": budget, "notes": [], "rows": []}
    vae = build_vae(seed, device)
    try:
        hist, seconds = _fit(
            vae,
            x,
            elbo="iwae",
            num_particles=k,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
        )
    except (ImportError, NotImplementedError, ValueError) as err:
        out["error"] = str(err)
        out["notes"].append(f"IWAE k={k} not trained: {err}")
        return out
    vae.eval()
    res = ppvae_log_likelihood(vae.model, vae.guide, x_test, num_samples, seed=1)
    ll = _summary(res.per_datapoint)
    out.update(train_seconds=seconds, train_bound=hist.train_objective, test_log_likelihood=ll)
    same = (
        vae_result is not None
        and vae_result.get("train_size") == len(x)
        and vae_result.get("epochs") == epochs
        and len(vae_result.get("ppvae_per_datapoint", [])) == len(res)
    )
    vs = (
        paired(res.per_datapoint, torch.tensor(vae_result["ppvae_per_datapoint"])) if same else None
    )
    out["minus_trace_elbo_vae"] = vs
    out["rows"].append(
        {
            "metric": f"IWAE k={k} (ppvae, {budget}), test log p(x), K={num_samples}",
            "ppvae": f"{ll['mean']:.2f} ± {ll['stderr']:.2f}",
            "reference": "Trace-ELBO VAE, same budget" if same else "",
            "ratio": f"Δ = {vs['mean']:+.2f} ± {vs['stderr']:.2f}" if vs else "",
            "target": "",
            "met": None,
        }
    )
    return out
