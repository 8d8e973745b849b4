"""The variational autoencoder as a pair of Pyro programs.

``VAE.model(x, y=None, num_data=None)`` draws ``z`` from the prior and ``x`` from the
likelihood, both inside ``pyro.plate("data", num_data)``; ``VAE.guide(x, ...)`` draws
``z`` from the amortised guide inside the same plate. When ``num_data`` (the size
of the whole training set) is given and ``x`` is a minibatch, the plate scales the
local sites by ``num_data / len(x)`` so that the minibatch ELBO is an unbiased
estimate of the full-data ELBO, while global sites of a hierarchical prior (drawn
outside the plate) are counted once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ppvae.models.networks import MLPDecoder, MLPEncoder
from ppvae.models.programs import ProgramModule, local_params, local_params_method, program
from ppvae.models.registry import (
    DECODERS,
    ENCODERS,
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    Registry,
    build,
)

__all__ = ["VAE"]


def _widths(registry: Registry, spec: str | nn.Module, hidden: Sequence[int]) -> dict[str, Any]:
    """``hidden=`` for the MLPs, which take their widths; the convolutional nets fix theirs."""
    takes_widths = isinstance(spec, str) and registry.get(spec) in (MLPEncoder, MLPDecoder)
    return {"hidden": tuple(hidden)} if takes_widths else {}


def _input_scale(likelihood: nn.Module) -> float:
    """1 / the largest data value for bounded data above 1 (counts, 8-bit levels), else 1."""
    value_range = getattr(likelihood, "value_range", None)
    high = value_range()[1] if value_range is not None else math.inf
    return 1.0 / high if math.isfinite(high) and high > 1 else 1.0


class VAE(ProgramModule):
    """Variational autoencoder p(z) p(x | z) with amortised guide q(z | x).

    Parameters
    ----------
    event_shape
        Shape of one datapoint, e.g. ``(1, 28, 28)`` or ``(D,)``.
    latent_dim
        Size of the latent vector ``z``.
    prior, likelihood, guide
        A registered name (see ``PRIORS``, ``LIKELIHOODS``, ``GUIDES``) or a module
        instance. Instances are the extension path: any module whose ``forward``
        returns a ``pyro.distributions`` object with the right event shape works.
    encoder, decoder
        ``"mlp"``, ``"conv"`` (28×28 images) or a network module. The guide puts its
        head on the encoder; the decoder must output ``likelihood.param_shape()``.
    hidden
        Hidden widths of the MLP encoder (the decoder uses them reversed).
    activation
        Activation of the built-in networks.
    num_labels
        Number of classes for a conditional VAE: labels condition the encoder and
        the decoder, and ``sample(n, y=...)`` generates a chosen class.
    prior_kwargs, likelihood_kwargs, guide_kwargs
        Extra constructor arguments when the component is given by name.

    References
    ----------
    Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR.
    Sohn, Lee & Yan (2015), "Learning Structured Output Representation using Deep
    Conditional Generative Models", NeurIPS (conditional VAE).

    Notes
    -----
    ``model`` and ``guide`` work with Pyro's ``SVI`` and ``pyro.optim`` (global param
    store) as well as with ``ppvae.fit`` and ``torch.optim``; the tools (``sample``,
    ``encode``, ...) never touch the global param store (:mod:`ppvae.models.programs`).
    A subclass that overrides ``model`` or ``guide`` decorates it with
    :func:`~ppvae.models.programs.program` to keep that.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        *,
        prior: str | nn.Module = "normal",
        likelihood: str | nn.Module = "bernoulli",
        guide: str | nn.Module = "diagonal",
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        hidden: Sequence[int] = (400, 400),
        activation: str = "relu",
        num_labels: int | None = None,
        prior_kwargs: dict[str, Any] | None = None,
        likelihood_kwargs: dict[str, Any] | None = None,
        guide_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = int(latent_dim)
        self.num_labels = num_labels
        # Constructor arguments, kept so that a checkpoint can rebuild the model.
        self.config: dict[str, Any] = dict(
            event_shape=list(self.event_shape),
            latent_dim=self.latent_dim,
            prior=prior,
            likelihood=likelihood,
            guide=guide,
            encoder=encoder,
            decoder=decoder,
            hidden=list(hidden),
            activation=activation,
            num_labels=num_labels,
            prior_kwargs=dict(prior_kwargs or {}),
            likelihood_kwargs=dict(likelihood_kwargs or {}),
            guide_kwargs=dict(guide_kwargs or {}),
        )
        cfg = self.config
        d = self.latent_dim
        self.likelihood = build(
            LIKELIHOODS, likelihood, event_shape=self.event_shape, **cfg["likelihood_kwargs"]
        )
        net = dict(activation=activation, num_labels=num_labels)
        encoder = build(
            ENCODERS,
            encoder,
            in_shape=self.event_shape,
            input_scale=_input_scale(self.likelihood),
            **net,
            **_widths(ENCODERS, encoder, hidden),
        )
        out_shape = self.likelihood.param_shape()
        widths = _widths(DECODERS, decoder, tuple(reversed(hidden)))
        self.decoder = build(DECODERS, decoder, latent_dim=d, out_shape=out_shape, **net, **widths)
        # The guide's module; ``self.guide`` is the Pyro program that samples from it.
        self.guide_net = build(GUIDES, guide, encoder=encoder, latent_dim=d, **cfg["guide_kwargs"])
        self.prior = build(PRIORS, prior, latent_dim=d, **cfg["prior_kwargs"])
        if getattr(self.prior, "latent_dim", d) != d:
            raise ValueError(
                f"prior has latent_dim={self.prior.latent_dim} but the VAE has {d}: "
                "construct them with the same latent_dim"
            )
        if hasattr(self.prior, "setup"):
            # The VampPrior runs the guide here: nothing may reach Pyro's global param store.
            with local_params():
                self.prior.setup(self)

    # ------------------------------------------------------------------ programs
    def _onehot(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.num_labels is None:
            return None
        if y is None:
            raise ValueError(
                "this is a conditional VAE (num_labels set): pass labels y with the data"
            )
        if y.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(y.shape)}")
        return F.one_hot(y.long(), self.num_labels).float()

    def _plate(self, x: torch.Tensor, num_data: int | None) -> pyro.plate:
        batch = x.shape[0]
        if num_data is None or num_data == batch:
            return pyro.plate("data", batch, dim=-1)
        # An explicit subsample (rather than ``subsample_size``) avoids a randperm over
        # the whole dataset every step; only its length matters for the scaling.
        index = torch.arange(batch, device=x.device)
        return pyro.plate("data", num_data, subsample=index, dim=-1)

    def _guide_dist(self, x: torch.Tensor, y1h: torch.Tensor | None) -> dist.Distribution:
        return self.guide_net(x) if y1h is None else self.guide_net(x, y1h)

    @program
    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """Generative program p(z) p(x | z); returns the latent sample."""
        y1h = self._onehot(y, x.shape[0])
        p_z = self.prior()
        with self._plate(x, num_data):
            z = pyro.sample("z", p_z)
            pyro.sample("x", self.likelihood(self.decoder(z, y1h)), obs=x)
        return z

    @program
    def guide(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """Variational program q(z | x) (and q of the prior's global sites, if any)."""
        y1h = self._onehot(y, x.shape[0])
        prior_guide = getattr(self.prior, "guide", None)
        if prior_guide is not None:
            prior_guide()
        with self._plate(x, num_data):
            return pyro.sample("z", self._guide_dist(x, y1h))

    # ------------------------------------------------------------------ tools
    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Raise ``ValueError`` when ``x`` (or ``y``) does not fit this model."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"data has datapoint shape {tuple(x.shape[1:])} but the VAE expects "
                f"{self.event_shape}: build the VAE with event_shape=dataset.event_shape"
            )
        if hasattr(self.likelihood, "check_support"):
            self.likelihood.check_support(x)
        if self.num_labels is not None:
            if y is None:
                raise ValueError("this is a conditional VAE: pass the labels y with the data")
            if y.numel() and (y.min() < 0 or y.max() >= self.num_labels):
                raise ValueError(
                    f"labels must lie in 0..{self.num_labels - 1}, got "
                    f"{int(y.min())}..{int(y.max())}: set num_labels to the number of classes"
                )

    def _labels_for(self, n: int, y: int | torch.Tensor | None) -> torch.Tensor | None:
        if self.num_labels is None:
            if y is not None:
                raise ValueError("labels were given but this VAE is not conditional")
            return None
        device = self._device()
        if y is None:
            y = torch.arange(n, device=device) % self.num_labels
        elif isinstance(y, int):
            y = torch.full((n,), y, device=device, dtype=torch.long)
        y = torch.as_tensor(y, device=device).long()
        if y.numel() and (y.min() < 0 or y.max() >= self.num_labels):
            raise ValueError(
                f"labels must lie in 0..{self.num_labels - 1}, got {int(y.min())}..{int(y.max())}"
            )
        return F.one_hot(y, self.num_labels).float()

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @torch.no_grad()
    @local_params_method
    def decode(self, z: torch.Tensor, y: int | torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x | z) for a batch of latents ``(..., latent_dim)``."""
        y1h = self._labels_for(z.shape[0], y)
        params = self.decoder(z, y1h)
        mean = getattr(self.likelihood, "mean", None)
        return mean(params) if mean is not None else self.likelihood(params).mean

    @torch.no_grad()
    @local_params_method
    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and marginal standard deviation of q(z | x)."""
        y1h = self._onehot(y, x.shape[0])
        if hasattr(self.guide_net, "mean_and_scale"):
            return self.guide_net.mean_and_scale(x, y1h)
        q = self._guide_dist(x, y1h)
        return q.mean, q.variance.sqrt()

    @torch.no_grad()
    @local_params_method
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x | z) at the posterior mean of q(z | x)."""
        z, _ = self.encode(x, y)
        return self.decode(z, y)

    @torch.no_grad()
    @local_params_method
    def sample(
        self, n: int, y: int | torch.Tensor | None = None, *, mean: bool = True
    ) -> torch.Tensor:
        """Draw ``n`` datapoints from the model (the likelihood's mean by default).

        For a conditional VAE, ``y`` picks the class (an int or a tensor of ``n``
        labels); without it the classes cycle.
        """
        z = self.prior().sample((n,))
        z = z.reshape(n, self.latent_dim)
        if mean:
            return self.decode(z, y)
        return self.likelihood(self.decoder(z, self._labels_for(n, y))).sample()
