"""An autoregressive prior over a VQ-VAE's code grid, as a Pyro model with exact likelihood.

:class:`PixelCNNPrior` models p(k) = Π_i p(k_i | k_<i) over the positions of the code grid
in raster order with masked convolutions (van den Oord et al. 2016): the first layer's
mask ("A") hides the position itself and those after it, later layers' masks ("B") hide
only those after it, so the logits at position i see k_<i alone. Its Pyro program
``model(codes)`` observes the codes in ``pyro.plate("data")``, so log p(k) is exact and
the prior trains with :func:`ppvae.fit` (an empty ``guide``: the ELBO is then log p(k)).
It is trained after the VQ-VAE, on the codes of the training data (van den Oord et al.
2017), and samples by drawing one position at a time.

References
----------
van den Oord, Kalchbrenner & Kavukcuoglu (2016), "Pixel Recurrent Neural Networks", ICML.
van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning",
NeurIPS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppvae.models.programs import ProgramModule, local_params_method, program

__all__ = ["MaskedConv2d", "PixelCNNPrior"]


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only positions before the centre in raster order.

    ``mask_type="A"`` also hides the centre (first layer); ``"B"`` lets it through.
    """

    def __init__(self, mask_type: str, in_channels: int, out_channels: int, size: int) -> None:
        super().__init__(in_channels, out_channels, size, padding=size // 2)
        mask = torch.ones_like(self.weight)
        centre = size // 2
        mask[:, :, centre, centre + (mask_type == "B") :] = 0
        mask[:, :, centre + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNPrior(ProgramModule):
    """Autoregressive categorical prior over a grid of codes.

    Parameters
    ----------
    grid
        The code grid's shape, ``(H, W)`` or ``(G,)`` (then a 1 × G row).
    num_codes
        K, the codebook size.
    channels, layers, kernel
        Width, number of masked layers after the first, and their kernel size.
    """

    def __init__(
        self,
        grid: Sequence[int],
        num_codes: int,
        *,
        channels: int = 64,
        layers: int = 3,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        grid = tuple(int(g) for g in grid)
        self.shape2d = grid if len(grid) == 2 else (1, math.prod(grid))
        self.num_positions, self.num_codes = math.prod(grid), int(num_codes)
        self.config: dict[str, Any] = dict(
            grid=list(grid), num_codes=self.num_codes, channels=channels, layers=layers,
            kernel=kernel,
        )  # fmt: skip
        self.embed = nn.Embedding(num_codes, channels)
        body: list[nn.Module] = [MaskedConv2d("A", channels, channels, kernel + 2 * (kernel // 2))]
        for _ in range(layers):
            body += [nn.ReLU(), MaskedConv2d("B", channels, channels, kernel)]
        self.body = nn.Sequential(*body, nn.ReLU(), nn.Conv2d(channels, num_codes, 1))

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits of p(k_i | k_<i) at every position, shape ``(B, G, K)``."""
        h, w = self.shape2d
        e = self.embed(codes.long().reshape(-1, h, w)).permute(0, 3, 1, 2)
        out = self.body(e)  # (B, K, H, W)
        return out.flatten(2).transpose(1, 2)

    @program
    def model(self, codes: torch.Tensor, *, num_data: int | None = None) -> None:
        """Observe the codes ``(B, G)``: the program's log-density is log p(k), exact."""
        batch = codes.shape[0]
        plate = (
            pyro.plate("data", batch, dim=-1)
            if num_data is None or num_data == batch
            else pyro.plate("data", num_data, subsample=torch.arange(batch), dim=-1)
        )
        with plate:
            fn = dist.Categorical(logits=self.logits(codes)).to_event(1)
            pyro.sample("codes", fn, obs=codes.long())

    @program
    def guide(self, codes: torch.Tensor, *, num_data: int | None = None) -> None:
        """No latent sites: the ELBO of the model is its exact log-likelihood."""

    def check_data(self, codes: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Raise ``ValueError`` unless ``codes`` are integer codes of shape ``(N, G)``."""
        if codes.dim() != 2 or codes.shape[1] != self.num_positions:
            raise ValueError(
                f"codes must have shape (N, {self.num_positions}), got {tuple(codes.shape)}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"codes must lie in 0..{self.num_codes - 1}")

    @local_params_method
    @torch.no_grad()
    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(k) of each code grid, shape ``(B,)``."""
        return dist.Categorical(logits=self.logits(codes)).log_prob(codes.long()).sum(-1)

    @local_params_method
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` code grids ``(n, G)``, drawn one position at a time."""
        device = self.embed.weight.device
        codes = torch.zeros(n, self.num_positions, dtype=torch.long, device=device)
        for i in range(self.num_positions):
            codes[:, i] = dist.Categorical(logits=self.logits(codes)[:, i]).sample()
        return codes
