"""Deterministic networks: MLP and small convolutional encoders and decoders.

Encoders map a batch of data ``(..., *event_shape)`` to a feature vector
``(..., out_features)``; guides put their own output heads on those features.
Decoders map latents ``(..., latent_dim)`` to distribution parameters of shape
``(..., *out_shape)``; a likelihood module turns them into a distribution.
Both accept an optional one-hot label tensor, which conditions them (conditional VAE).

The networks are plain :class:`torch.nn.Module` s: they hold no random choices, so
they need none of Pyro's bookkeeping, and any ``torch.nn.Module`` with the same call
signature can stand in for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "ACTIVATIONS"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


def _activation(activation: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        try:
            return ACTIVATIONS[activation]
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}: choose one of {sorted(ACTIVATIONS)}"
            ) from None
    return activation


def _mlp(sizes: Sequence[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _with_labels(h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Concatenate one-hot labels to features, broadcasting over leading (particle) dims."""
    if y is None:
        return h
    y = y.to(h.dtype).expand(*h.shape[:-1], y.shape[-1])
    return torch.cat([h, y], dim=-1)


class MLPEncoder(nn.Module):
    """Fully connected encoder.

    Parameters
    ----------
    in_shape
        Event shape of one datapoint; it is flattened.
    hidden
        Widths of the hidden layers; ``out_features`` is the last one.
    activation
        Name from :data:`ACTIVATIONS` or a module factory.
    num_labels
        When set, one-hot labels are concatenated to the flattened input.
    input_scale
        Multiplies the input first, so that counts (0..16, 0..255) reach the first
        layer on a unit scale instead of saturating it.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        hidden: Sequence[int] = (400, 400),
        activation: str | Callable[[], nn.Module] = "relu",
        num_labels: int | None = None,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MLPEncoder needs at least one hidden layer width")
        self.input_scale = float(input_scale)
        self.in_shape = tuple(in_shape)
        self.in_features = math.prod(self.in_shape)
        self.out_features = int(hidden[-1])
        act = _activation(activation)
        sizes = [self.in_features + (num_labels or 0), *hidden]
        # The last hidden layer keeps its activation: guides add linear heads on top.
        self.net = nn.Sequential(_mlp(sizes, act), act())

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x.reshape(*x.shape[: x.dim() - len(self.in_shape)], self.in_features)
        if self.input_scale != 1.0:
            h = h * self.input_scale
        return self.net(_with_labels(h, y))


class MLPDecoder(nn.Module):
    """Fully connected decoder from latents to distribution parameters.

    Parameters
    ----------
    latent_dim
        Size of the latent vector.
    out_shape
        Shape of the parameters for one datapoint (from the likelihood's ``param_shape``).
    hidden
        Widths of the hidden layers.
    activation
        Name from :data:`ACTIVATIONS` or a module factory.
    num_labels
        When set, one-hot labels are concatenated to the latent.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        hidden: Sequence[int] = (400, 400),
        activation: str | Callable[[], nn.Module] = "relu",
        num_labels: int | None = None,
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        sizes = [latent_dim + (num_labels or 0), *hidden, math.prod(self.out_shape)]
        self.net = _mlp(sizes, _activation(activation))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(_with_labels(z, y))
        return out.reshape(*out.shape[:-1], *self.out_shape)


class ConvEncoder(nn.Module):
    """Small convolutional encoder for 28×28 single- or multi-channel images.

    Two stride-2 convolutions (28 → 14 → 7) and a dense layer; ``input_scale`` as
    for :class:`MLPEncoder`.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        out_features: int = 256,
        activation: str | Callable[[], nn.Module] = "relu",
        num_labels: int | None = None,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_scale = float(input_scale)
        self.in_shape = tuple(in_shape)
        if len(self.in_shape) != 3 or self.in_shape[1:] != (28, 28):
            raise ValueError(
                f"ConvEncoder expects event shape (C, 28, 28), got {self.in_shape}: "
                "use encoder='mlp' for other shapes"
            )
        act = _activation(activation)
        c0, c1, c2 = self.in_shape[0], *channels
        self.conv = nn.Sequential(
            nn.Conv2d(c0, c1, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            act(),
            nn.Flatten(),
        )
        self.dense = nn.Sequential(nn.Linear(c2 * 7 * 7 + (num_labels or 0), out_features), act())
        self.out_features = out_features

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[: x.dim() - 3]
        if self.input_scale != 1.0:
            x = x * self.input_scale
        h = self.conv(x.reshape(-1, *self.in_shape))
        h = h.reshape(*batch, h.shape[-1])
        return self.dense(_with_labels(h, y))


class ConvDecoder(nn.Module):
    """Small transposed-convolutional decoder to parameters of shape ``(P·C, 28, 28)``.

    ``out_shape`` is the likelihood's parameter shape: ``(C, 28, 28)`` or
    ``(C, 28, 28, P)`` for likelihoods with ``P`` parameters per pixel.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (64, 32),
        activation: str | Callable[[], nn.Module] = "relu",
        num_labels: int | None = None,
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        if len(self.out_shape) < 3 or self.out_shape[1:3] != (28, 28):
            raise ValueError(
                f"ConvDecoder produces (C, 28, 28[, P]) parameters, got {self.out_shape}: "
                "use decoder='mlp' for other shapes"
            )
        out_channels = math.prod(self.out_shape) // (28 * 28)
        act = _activation(activation)
        c1, c2 = channels
        self.c1 = c1
        self.dense = nn.Sequential(nn.Linear(latent_dim + (num_labels or 0), c1 * 7 * 7), act())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(c2, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dense(_with_labels(z, y))
        batch = h.shape[:-1]
        out = self.deconv(h.reshape(-1, self.c1, 7, 7))
        if len(self.out_shape) == 4:
            # Channels are stored parameter-major; move the parameter axis last.
            c, p = self.out_shape[0], self.out_shape[3]
            out = out.reshape(-1, p, c, 28, 28).permute(0, 2, 3, 4, 1)
        return out.reshape(*batch, *self.out_shape)
