"""A VAE with two stochastic layers, in the layout of Burda et al. (2015).

Model: z2 ~ N(0, I); z1 | z2 ~ N(μ(z2), diag σ(z2)²); x | z1 ~ likelihood(decoder(z1)).
Guide: z1 ~ q(z1 | x) (any registered guide on the data encoder, diagonal by
default); z2 ~ q(z2 | z1) = N(μ'(z1), diag σ'(z1)²). The sites ``"z1"``, ``"z2"``
and ``"x"`` all sit in the same ``pyro.plate("data", ...)`` as in :class:`VAE`, so
the estimators of :mod:`ppvae.inference` apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import torch
from torch import nn

from ppvae.models.guides import DiagonalNormalGuide
from ppvae.models.networks import MLPEncoder
from ppvae.models.priors import StandardNormal
from ppvae.models.programs import local_params_method, program
from ppvae.models.vae import VAE

__all__ = ["TwoLayerVAE"]


class TwoLayerVAE(VAE):
    """Two-stochastic-layer VAE p(z2) p(z1 | z2) p(x | z1) with guide q(z1 | x) q(z2 | z1).

    The data-level parts (likelihood, encoder, decoder, guide of z1, labels of a
    conditional model) are built exactly as in :class:`VAE` with ``latent_dim = d1``;
    the latent-level conditionals p(z1 | z2) and q(z2 | z1) are diagonal Gaussians whose
    parameters small MLPs compute. The inherited tools read as follows:
    ``encode(x)`` returns the mean and marginal scale of q(z1 | x), ``decode(z1)`` the
    likelihood's mean at ``z1``, ``reconstruct(x)`` decodes the mean of q(z1 | x), and
    ``prior()`` is p(z2). ``config`` holds the constructor arguments plus
    ``"class": "TwoLayerVAE"``, so a checkpoint loader can pick the class and call it
    with the remaining entries.

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    latent_dims
        ``(d1, d2)``: sizes of z1 (next to the data) and z2 (top).
    likelihood, guide, encoder, decoder, activation, num_labels, likelihood_kwargs, guide_kwargs
        As in :class:`VAE`; ``guide`` is the guide of z1.
    hidden
        Hidden widths of the data encoder and (reversed) decoder.
    latent_hidden
        Hidden widths of the MLPs of p(z1 | z2) and q(z2 | z1).

    References
    ----------
    Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders", ICLR 2016
    (two-layer architecture: 200-200 hidden units, 100 and 50 latent units, tanh).
    """

    #: The guide draws z2 given z1, so TraceMeanField_ELBO's closed-form KLs do not apply.
    mean_field = False

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dims: Sequence[int] = (100, 50),
        *,
        likelihood: str | nn.Module = "bernoulli",
        guide: str | nn.Module = "diagonal",
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        hidden: Sequence[int] = (200, 200),
        latent_hidden: Sequence[int] = (100, 100),
        activation: str = "tanh",
        num_labels: int | None = None,
        likelihood_kwargs: dict[str, Any] | None = None,
        guide_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if len(latent_dims) != 2 or min(latent_dims) < 1:
            raise ValueError(f"latent_dims must be two positive sizes (d1, d2), got {latent_dims}")
        d1, d2 = (int(d) for d in latent_dims)
        super().__init__(
            event_shape,
            d1,
            likelihood=likelihood,
            guide=guide,
            encoder=encoder,
            decoder=decoder,
            hidden=hidden,
            activation=activation,
            num_labels=num_labels,
            likelihood_kwargs=likelihood_kwargs,
            guide_kwargs=guide_kwargs,
        )
        self.latent_dims = (d1, d2)
        config = {k: v for k, v in self.config.items() if k not in ("prior", "prior_kwargs")}
        del config["latent_dim"]
        config.update(latent_dims=[d1, d2], latent_hidden=list(latent_hidden))
        self.config = {"class": "TwoLayerVAE", **config}
        # The top prior p(z2); the inherited prior over z1 is replaced.
        self.prior = StandardNormal(d2)
        # Conditional diagonal Gaussians with an MLP for their parameters: the same
        # module as the data-level diagonal guide, applied to a latent instead of x.
        self.p_z1 = DiagonalNormalGuide(MLPEncoder((d2,), tuple(latent_hidden), activation), d1)
        self.q_z2 = DiagonalNormalGuide(MLPEncoder((d1,), tuple(latent_hidden), activation), d2)

    @program
    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """Generative program p(z2) p(z1 | z2) p(x | z1); returns z1."""
        y1h = self._onehot(y, x.shape[0])
        p_z2 = self.prior()
        with self._plate(x, num_data):
            z2 = pyro.sample("z2", p_z2)
            z1 = pyro.sample("z1", self.p_z1(z2))
            pyro.sample("x", self.likelihood(self.decoder(z1, y1h)), obs=x)
        return z1

    @program
    def guide(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None
    ) -> torch.Tensor:
        """Variational program q(z1 | x) q(z2 | z1); returns z1."""
        y1h = self._onehot(y, x.shape[0])
        with self._plate(x, num_data):
            z1 = pyro.sample("z1", self._guide_dist(x, y1h))
            pyro.sample("z2", self.q_z2(z1))
        return z1

    @torch.no_grad()
    @local_params_method
    def sample(
        self, n: int, y: int | torch.Tensor | None = None, *, mean: bool = True
    ) -> torch.Tensor:
        """Draw ``n`` datapoints by ancestral sampling z2 → z1 → x (see :meth:`VAE.sample`)."""
        z2 = self.prior().sample((n,)).reshape(n, self.latent_dims[1])
        z1 = self.p_z1(z2).sample()
        if mean:
            return self.decode(z1, y)
        return self.likelihood(self.decoder(z1, self._labels_for(n, y))).sample()
