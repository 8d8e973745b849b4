"""Networks of the vector-quantised VAE: data to a grid of code-sized vectors and back.

An encoder maps a batch ``(..., *event_shape)`` to ``(..., G, code_dim)``, one vector per
position of the code grid (G positions); a decoder maps ``(..., G, code_dim)`` to the
likelihood's parameters ``(..., *param_shape)``. The MLP pair serves tabular data and
small images (digits 8×8) with any grid; the convolutional pair serves 28×28 images with
a 7×7 grid, as in van den Oord et al. (2017), scaled down.

References
----------
van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning",
NeurIPS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ppvae.models.networks import _activation, _mlp

__all__ = ["GridMLPEncoder", "GridMLPDecoder", "GridConvEncoder", "GridConvDecoder"]


class GridMLPEncoder(nn.Module):
    """Fully connected encoder to ``num_positions`` vectors of size ``code_dim``.

    ``input_scale`` multiplies the input first (counts on a unit scale).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_positions: int,
        code_dim: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.num_positions, self.code_dim = int(num_positions), int(code_dim)
        self.input_scale = float(input_scale)
        sizes = [math.prod(self.in_shape), *hidden, self.num_positions * self.code_dim]
        self.net = _mlp(sizes, _activation(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.in_shape)]
        h = x.reshape(*batch, -1) * self.input_scale
        return self.net(h).reshape(*batch, self.num_positions, self.code_dim)


class GridMLPDecoder(nn.Module):
    """Fully connected decoder from ``(..., G, code_dim)`` to ``(..., *out_shape)``."""

    def __init__(
        self,
        num_positions: int,
        code_dim: int,
        out_shape: Sequence[int],
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        sizes = [num_positions * code_dim, *hidden, math.prod(self.out_shape)]
        self.net = _mlp(sizes, _activation(activation))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z.flatten(-2))
        return out.reshape(*out.shape[:-1], *self.out_shape)


class GridConvEncoder(nn.Module):
    """Two stride-2 convolutions, 28×28 → 7×7, and a 1×1 convolution to ``code_dim``."""

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        code_dim: int = 16,
        channels: int = 64,
        activation: str = "relu",
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        if len(self.in_shape) != 3 or self.in_shape[1:] != (28, 28):
            raise ValueError(
                f"the convolutional VQ encoder expects (C, 28, 28) data, got {self.in_shape}: "
                "use encoder='mlp' for other shapes"
            )
        act = _activation(activation)
        self.input_scale = float(input_scale)
        self.net = nn.Sequential(
            nn.Conv2d(self.in_shape[0], channels, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(channels, code_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - 3]
        h = self.net(x.reshape(-1, *self.in_shape) * self.input_scale)  # (n, D, 7, 7)
        return h.flatten(2).transpose(1, 2).reshape(*batch, 49, h.shape[1])


class GridConvDecoder(nn.Module):
    """A 3×3 convolution on the 7×7 grid and two stride-2 transposed convolutions to 28×28."""

    def __init__(
        self,
        code_dim: int,
        out_shape: Sequence[int] = (1, 28, 28),
        channels: int = 64,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        if len(self.out_shape) < 3 or self.out_shape[1:3] != (28, 28):
            raise ValueError(
                f"the convolutional VQ decoder produces (C, 28, 28[, P]) parameters, got "
                f"{self.out_shape}: use decoder='mlp' for other shapes"
            )
        act = _activation(activation)
        out_channels = math.prod(self.out_shape) // (28 * 28)
        self.code_dim = int(code_dim)
        self.net = nn.Sequential(
            nn.Conv2d(code_dim, channels, 3, padding=1),
            act(),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-2]
        h = z.reshape(-1, 7, 7, self.code_dim).permute(0, 3, 1, 2)
        out = self.net(h)
        if len(self.out_shape) == 4:
            # Channels are stored parameter-major; move the parameter axis last.
            c, p = self.out_shape[0], self.out_shape[3]
            out = out.reshape(-1, p, c, 28, 28).permute(0, 2, 3, 4, 1)
        return out.reshape(*batch, *self.out_shape)
