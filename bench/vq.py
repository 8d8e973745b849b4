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
environment; it is not a dependency of ppvae); otherwise the row says so. It wraps copies
of the same untrained encoder and decoder (the decoder's output mapped through the same
likelihood's mean), with the same number of codes, code dimension, grid, batch size,
epochs, Adam and learning rate, trained by a plain loop over ``model({"data": x}).loss``
timed like the hand-written one (not Pythae's trainer). It sees the same train and test
rows divided by the data's largest value (``total_count`` for counts, so digits' 0..16
become [0, 1], Pythae's scale); the encoder wrapper multiplies them back and its
reconstruction MSE is reported in data units like the other rows. Pythae's own method
differs in the rest: its loss is the summed squared error plus a codebook and commitment
term averaged over elements (not the likelihood), its codebook starts uniform in
±1/K and no dead codes are re-initialised. It defines no likelihood, so no bits/dim.

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
    return {
        "recon_mse": float(((recon - x) ** 2).mean()),
        "bits_per_dim": float(ppvae.bits_per_dim(bound, math.prod(net.event_shape))),
        "perplexity": _perplexity(codes, net.num_codes),
    }


def _perplexity(codes: torch.Tensor, num_codes: int) -> float:
    """exp of the entropy of the empirical code frequencies."""
    freq = torch.bincount(codes.flatten(), minlength=num_codes).double()
    freq = freq / freq.sum()
    return math.exp(float(-(freq * freq.clamp_min(1e-300).log()).sum()))


def _steady(speeds: list[float]) -> float:
    """Median images/s over the epochs after the first (warm-up)."""
    return statistics.median(speeds[1:] or speeds)


def _data_scale(kwargs: dict) -> float:
    """Largest value of the data: ``total_count`` for counts, 1 for values in [0, 1]."""
    return float(kwargs.get("total_count", 1))


def build_pythae(net: VQVAE, scale: float) -> torch.nn.Module:
    """Pythae's ``VQVAE`` around copies of ``net``'s (untrained) encoder and decoder.

    Parameters
    ----------
    net : VQVAE
        The ppvae model before training; its networks and likelihood are copied, so Pythae
        starts from the same weights as the other rows.
    scale : float
        Largest data value. Pythae sees the data divided by it (values in [0, 1], the scale
        its reconstruction MSE is written for); the encoder wrapper multiplies it back so the
        shared network computes the same function of the data as in the other rows.

    Returns
    -------
    torch.nn.Module
        ``pythae.models.VQVAE`` with the classic loss (codebook term + 0.25 × commitment),
        no EMA, ``net.num_codes`` codes of ``net``'s code dimension on ``net``'s grid.
    """
    from pythae.models import VQVAE as PythaeVQVAE
    from pythae.models import VQVAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    # Pythae quantises (B, D, H, W) maps; a 1-D grid of G positions becomes (B, D, G, 1).
    grid = tuple(net.grid) if len(net.grid) == 2 else (math.prod(net.grid), 1)

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = copy.deepcopy(net.encoder)

        def forward(self, x: torch.Tensor) -> ModelOutput:
            z = self.net(x * scale)  # (B, G, D)
            return ModelOutput(embedding=z.transpose(1, 2).reshape(len(z), -1, *grid))

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = copy.deepcopy(net.decoder)
            self.likelihood = copy.deepcopy(net.likelihood)

        def forward(self, z: torch.Tensor) -> ModelOutput:
            # The likelihood's mean is the other rows' reconstruction; Pythae's MSE wants it
            # on its [0, 1] scale.
            mean = self.likelihood(self.net(z.flatten(2).transpose(1, 2))).mean
            return ModelOutput(reconstruction=mean / scale)

    config = VQVAEConfig(
        input_dim=tuple(net.event_shape),
        latent_dim=int(net.codebook.weight.shape[-1]),
        num_embeddings=net.num_codes,
        commitment_loss_factor=0.25,
        quantization_loss_factor=1.0,
        use_ema=False,
    )
    return PythaeVQVAE(config, encoder=Encoder(), decoder=Decoder())


def train_pythae(
    model: torch.nn.Module, x: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int
) -> list[float]:
    """Train Pythae's model with a plain loop over ``model({"data": xb}).loss``.

    The loop mirrors :func:`train_reference` (same Adam, shuffling generator and timing) so
    that images/s measures the model's step, not Pythae's trainer (which adds logging,
    checkpointing and a ``DataLoader``). ``x`` is already on Pythae's scale; returns images/s
    per epoch.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    speeds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=gen, device=x.device)
        for i in range(0, len(x), batch_size):
            loss = model({"data": x[order[i : i + batch_size]]}).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(x.device)
        speeds.append(len(x) / (time.perf_counter() - start))
    return speeds


@torch.no_grad()
def evaluate_pythae(model: torch.nn.Module, x: torch.Tensor, scale: float) -> dict[str, Any]:
    """Reconstruction MSE in data units and test-code perplexity; ``x`` in data units."""
    model.eval()
    outs = [model({"data": x[i : i + 1000] / scale}) for i in range(0, len(x), 1000)]
    recon = torch.cat([o.recon_x for o in outs]) * scale
    codes = torch.cat([o.quantized_indices.flatten(1) for o in outs])
    return {
        "recon_mse": float(((recon - x) ** 2).mean()),
        "bits_per_dim": None,  # Pythae's VQVAE trains on MSE and defines no likelihood
        "perplexity": _perplexity(codes, model.model_config.num_embeddings),
    }


def _pythae_row(
    init: VQVAE, train: torch.Tensor, test: torch.Tensor, scale: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Pythae's row, or ``{"skipped": why}`` when ``pythae`` does not import."""
    if importlib.util.find_spec("pythae") is None:
        return {"skipped": "pythae is not importable (install it in the bench's own environment)"}
    torch.manual_seed(args.seed)  # Pythae draws its codebook from the global generator
    model = build_pythae(init.cpu(), scale).to(train.device)
    speeds = train_pythae(
        model, train / scale, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed,
    )  # fmt: skip
    return {**evaluate_pythae(model, test, scale), "images_per_s": _steady(speeds)}


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
    ref, init = copy.deepcopy(vq), copy.deepcopy(vq)
    hist = ppvae.fit(
        vq, train, elbo=ppvae.VQ_ELBO(0.25), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, device=device, progress=False,
    )  # fmt: skip
    ref_speeds = train_reference(
        ref, train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    pythae = _pythae_row(init, train, test, _data_scale(kwargs), args)
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
    if "skipped" in pythae:
        print(f"{'pythae':<14}{pythae['skipped']}")
    else:
        print(
            f"{'pythae':<14}{pythae['images_per_s']:>10.0f}{pythae['recon_mse']:>11.4f}"
            f"{'n/a':>10}{pythae['perplexity']:>12.1f}"
        )
        print("pythae bits/dim: n/a (MSE-trained, no likelihood)")
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"throughput ppvae / hand-written = {ratio:.2f} ({verdict} the {TARGET} target)")
    return {"rows": rows, "ratio": ratio, "pythae": pythae}


if __name__ == "__main__":
    main()
