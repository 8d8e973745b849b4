"""The long schedule of Burda et al. (2016), to compare ppvae with published numbers.

Binarised MNIST, one stochastic layer: encoder and decoder with two deterministic layers of
200 tanh units, 50 latent units, Bernoulli likelihood. Adam (β1 = 0.9, β2 = 0.999,
ε = 1e-4), minibatches of 20, and 3^i passes over the data at learning rate
0.001 · 10^(−i/7) for i = 0, …, 7: 3280 epochs in all. The test log-likelihood is
estimated with K = 5000 on the 10 000 test images. Published (Table 1, MNIST, one
stochastic layer): VAE (k = 1) −86.76 nats, IWAE (k = 50) −84.78 nats.

This takes days on a CPU and many hours on a GPU; run it with
``python -m bench.run --anchor --device cuda``. Each stage is one ``fit`` call with a fresh
Adam (its moment estimates restart at every learning-rate change).

References
----------
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import ppvae_log_likelihood

__all__ = ["PUBLISHED", "SCHEDULE", "run_anchor"]

PUBLISHED = {"vae_k1": -86.76, "iwae_k50": -84.78}
SCHEDULE = [(3**i, 1e-3 * 10 ** (-i / 7)) for i in range(8)]  # (epochs, learning rate)
_MODELS = {"vae_k1": ("trace", 1), "iwae_k50": ("iwae", 50)}


def run_anchor(
    device: str = "cuda", *, models: tuple[str, ...] = ("vae_k1", "iwae_k50"), seed: int = 0
) -> dict[str, Any]:
    """Train each model with the full schedule and estimate its test log-likelihood."""
    from ppvae.data import load_dataset
    from ppvae.inference.train import fit
    from ppvae.models import VAE

    out: dict[str, Any] = {"published": PUBLISHED, "schedule": SCHEDULE, "rows": [], "notes": []}
    try:
        # All 60 000 training images, as in the paper (no validation split).
        ds = load_dataset("mnist", binarize="dynamic", val_fraction=0.0)
    except FileNotFoundError as err:
        why = f"MNIST not found, skipping the anchor runs: {err}"
        row = {"metric": "Burda et al. (2016) anchors", "ppvae": "skipped", "reference": ""}
        out["rows"].append({**row, "ratio": "", "target": "", "met": None})
        out["notes"].append(why)
        out["skipped"] = why
        return out
    for name in models:
        elbo, k = _MODELS[name]
        torch.manual_seed(seed)
        vae = VAE((1, 28, 28), 50, likelihood="bernoulli", hidden=(200, 200), activation="tanh")
        start, history = time.perf_counter(), []
        for stage, (epochs, lr) in enumerate(SCHEDULE):

            def adam(params: list[torch.Tensor], lr: float = lr) -> torch.optim.Optimizer:
                return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-4)

            hist = fit(
                vae,
                ds.train,
                elbo=elbo,
                num_particles=k,
                epochs=epochs,
                batch_size=20,
                optimizer=adam,
                binarize="dynamic",
                seed=seed + stage,
                device=device,
                progress=False,
            )
            record = {"stage": stage, "epochs": epochs, "lr": lr}
            history.append({**record, "elbo": hist.train_objective})
        vae.eval()
        res = ppvae_log_likelihood(vae.model, vae.guide, ds.test.to(device), 5000, seed=1)
        out[name] = {
            "seconds": time.perf_counter() - start,
            "history": history,
            "test_log_likelihood": {"mean": res.mean, "stderr": res.stderr},
        }
        out["rows"].append(
            {
                "metric": f"MNIST test log p(x), K=5000, {name} (Burda et al. schedule)",
                "ppvae": f"{res.mean:.2f} ± {res.stderr:.2f}",
                "reference": f"{PUBLISHED[name]:.2f} published",
                "ratio": f"Δ = {res.mean - PUBLISHED[name]:+.2f}",
                "target": "",
                "met": None,
            }
        )
    return out
