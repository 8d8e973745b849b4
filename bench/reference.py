"""Hand-written PyTorch references: the same VAE, its training loop and its IS estimator.

Everything here is plain PyTorch (plus, in :func:`pyro_programs` and :func:`pyro_svi_epoch`,
the way a Pyro user writes the same model without ppvae), so the benchmarks measure what
ppvae's abstractions cost against code that does the same arithmetic with nothing around it.

The architecture matches ``ppvae.VAE(event_shape, latent_dim, likelihood="bernoulli",
hidden=hidden)``: an MLP encoder with ReLU after every hidden layer, one linear head giving
the mean and a raw scale (σ = softplus(raw) + 1e-5), a mirrored MLP decoder giving Bernoulli
logits, and a standard-normal prior. :meth:`ReferenceVAE.copy_from` copies a ppvae model's
weights, so both sides start from (or evaluate) identical parameters.

References
----------
Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR.
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as pdist
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal
from torch.nn import functional as F

__all__ = [
    "ReferenceVAE",
    "reference_elbo",
    "reference_iwae",
    "reference_train_epoch",
    "reference_log_likelihood",
    "pyro_programs",
    "pyro_svi_epoch",
]

_MIN_SCALE = 1e-5  # the floor ppvae's diagonal guide adds to softplus(raw scale)


def _mlp(sizes: Sequence[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


class ReferenceVAE(nn.Module):
    """A Bernoulli MLP VAE written directly in PyTorch.

    Parameters
    ----------
    event_shape
        Shape of one datapoint, e.g. ``(1, 28, 28)``; it is flattened.
    latent_dim
        Size of the latent vector.
    hidden
        Encoder widths; the decoder uses them reversed.
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 50,
        hidden: Sequence[int] = (400, 400),
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.in_features = math.prod(self.event_shape)
        self.latent_dim = int(latent_dim)
        self.encoder = _mlp([self.in_features, *hidden], final_activation=True)
        self.head = nn.Linear(hidden[-1], 2 * self.latent_dim)
        self.decoder = _mlp([self.latent_dim, *reversed(hidden), self.in_features], False)

    @torch.no_grad()
    def copy_from(self, vae: nn.Module) -> ReferenceVAE:
        """Copy the weights of a ppvae ``VAE`` with the same architecture; returns ``self``."""
        pairs = [
            (_linears(self.encoder), _linears(vae.guide_net.encoder)),
            ([self.head], [vae.guide_net.head]),
            (_linears(self.decoder), _linears(vae.decoder)),
        ]
        for mine, theirs in pairs:
            if [m.weight.shape for m in mine] != [m.weight.shape for m in theirs]:
                raise ValueError("the ppvae model has a different architecture")
            for a, b in zip(mine, theirs):
                a.weight.copy_(b.weight)
                a.bias.copy_(b.bias)
        return self

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x) for ``x`` of shape ``(B, *event_shape)``."""
        h = self.encoder(x.reshape(x.shape[0], self.in_features))
        loc, raw_scale = self.head(h).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + _MIN_SCALE

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Flat Bernoulli logits ``(..., in_features)`` for latents ``(..., latent_dim)``."""
        return self.decoder(z)


def _log_weights(
    vae: ReferenceVAE, x_flat: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, k: int
) -> torch.Tensor:
    """log p(x, z) − log q(z | x) for ``k`` reparameterised draws: shape ``(k, B)``."""
    q = Normal(loc, scale, validate_args=False)
    z = q.rsample((k,))
    prior = Normal(torch.zeros_like(loc), torch.ones_like(scale), validate_args=False)
    log_px = Bernoulli(logits=vae.decode(z), validate_args=False).log_prob(x_flat).sum(-1)
    return log_px + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)


def reference_elbo(vae: ReferenceVAE, x: torch.Tensor) -> torch.Tensor:
    """Single-sample ELBO per datapoint, the estimator Pyro's ``Trace_ELBO`` computes.

    log p(x, z) − log q(z | x) at one reparameterised z (no analytic KL), shape ``(B,)``.
    """
    loc, scale = vae.encode(x)
    return _log_weights(vae, x.reshape(x.shape[0], -1), loc, scale, 1)[0]


def reference_iwae(vae: ReferenceVAE, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    """Importance-weighted bound per datapoint (Burda et al., 2016), shape ``(B,)``."""
    loc, scale = vae.encode(x)
    lw = _log_weights(vae, x.reshape(x.shape[0], -1), loc, scale, num_particles)
    return torch.logsumexp(lw, 0) - math.log(num_particles)


def reference_train_epoch(
    vae: ReferenceVAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    dynamic_binarize: bool,
    scale_to_dataset: bool = True,
    num_particles: int = 1,
) -> float:
    """One epoch of minibatch training; returns the mean training ELBO per datapoint.

    Batches are index slices of the in-memory tensor ``x`` in a fresh random order, each
    binarised by one Bernoulli draw when ``dynamic_binarize`` (as
    ``ppvae.inference.batches.BatchLoader`` does). With ``scale_to_dataset`` the minibatch
    loss is scaled by ``N / B``, as a Pyro plate with ``num_data=N`` scales it.
    ``num_particles > 1`` trains the IWAE bound.
    """
    n = len(x)
    order = torch.randperm(n, generator=generator, device=x.device)
    total = torch.zeros((), device=x.device)
    for start in range(0, n, batch_size):
        xb = x[order[start : start + batch_size]]
        if dynamic_binarize:
            xb = torch.bernoulli(xb, generator=generator)
        if num_particles == 1:
            elbo = reference_elbo(vae, xb).sum()
        else:
            elbo = reference_iwae(vae, xb, num_particles).sum()
        loss = -elbo * (n / len(xb) if scale_to_dataset else 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += elbo.detach()
    return float(total) / n


@torch.no_grad()
def reference_log_likelihood(
    vae: ReferenceVAE,
    x: torch.Tensor,
    num_samples: int,
    *,
    batch_size: int = 100,
    chunk_elements: int = 2**22,
) -> torch.Tensor:
    """Importance-sampling estimate of log p(x) per datapoint with the guide as proposal.

    Encodes each batch once, then draws the ``num_samples`` particles in chunks of at most
    ``chunk_elements`` decoder outputs, so memory does not grow with ``num_samples``;
    returns ``logsumexp_k w_k − log K`` with shape ``(N,)``.
    """
    out = []
    for xb in x.split(batch_size):
        x_flat = xb.reshape(len(xb), -1)
        loc, scale = vae.encode(xb)
        chunk = max(1, chunk_elements // (len(xb) * x_flat.shape[1]))
        lw = [
            _log_weights(vae, x_flat, loc, scale, min(chunk, num_samples - k0))
            for k0 in range(0, num_samples, chunk)
        ]
        out.append(torch.logsumexp(torch.cat(lw), 0) - math.log(num_samples))
    return torch.cat(out)


def pyro_programs(
    vae: ReferenceVAE, *, register: str | None = None
) -> tuple[Callable[[torch.Tensor], None], Callable[[torch.Tensor], None]]:
    """The reference VAE written as a Pyro model and guide, the way Pyro's VAE example does.

    Sites ``"z"`` and ``"x"`` sit in ``pyro.plate("data", B, dim=-1)`` like ppvae's. With
    ``register`` the networks are registered in Pyro's global parameter store under that
    name (``pyro.module``), as ``pyro.infer.SVI`` with a ``pyro.optim`` optimizer requires.
    """
    shape = vae.event_shape

    def model(x: torch.Tensor) -> None:
        if register is not None:
            pyro.module(register, vae)
        loc = x.new_zeros(vae.latent_dim)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", pdist.Normal(loc, 1.0, validate_args=False).to_event(1))
            logits = vae.decode(z)
            logits = logits.reshape(*logits.shape[:-1], *shape)
            px = pdist.Bernoulli(logits=logits, validate_args=False).to_event(len(shape))
            pyro.sample("x", px, obs=x)

    def guide(x: torch.Tensor) -> None:
        if register is not None:
            pyro.module(register, vae)
        with pyro.plate("data", x.shape[0], dim=-1):
            loc, scale = vae.encode(x)
            pyro.sample("z", pdist.Normal(loc, scale, validate_args=False).to_event(1))

    return model, guide


def pyro_svi_epoch(
    svi: pyro.infer.SVI,
    x: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    dynamic_binarize: bool,
) -> float:
    """One epoch of ``svi.step`` over minibatches (Pyro's examples/vae/vae.py loop).

    Returns the mean training ELBO per datapoint. The model carries no ``num_data``
    scaling, exactly like Pyro's example.
    """
    n = len(x)
    order = torch.randperm(n, generator=generator, device=x.device)
    total = 0.0
    for start in range(0, n, batch_size):
        xb = x[order[start : start + batch_size]]
        if dynamic_binarize:
            xb = torch.bernoulli(xb, generator=generator)
        total += svi.step(xb)
    return -total / n
