"""Priors p(z): modules whose ``forward()`` returns the distribution of one latent vector.

The model calls ``prior()`` *outside* the data plate, so a prior may draw global
latent variables (hyperpriors) with ``pyro.sample`` there; such a prior also
implements :meth:`Prior.guide`, which the VAE's guide calls at the same place to
draw those global sites from a variational distribution. The distribution it
returns has event shape ``(latent_dim,)`` and a batch shape that broadcasts
against the data plate (usually ``()``).

A prior that needs the rest of the model (the VampPrior pushes pseudo-inputs
through the guide) receives it in :meth:`Prior.setup`, called once by the VAE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

if TYPE_CHECKING:  # pragma: no cover
    from ppvae.models.vae import VAE

__all__ = ["Prior", "StandardNormal", "PRIORS", "make_prior"]


class Prior(PyroModule):
    """Base class for priors over a ``latent_dim``-vector.

    Parameters
    ----------
    latent_dim
        Size of the latent vector.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)

    def forward(self) -> dist.Distribution:
        raise NotImplementedError

    def guide(self) -> None:
        """Draw the prior's global latent sites in the guide (none by default)."""

    def setup(self, vae: VAE) -> None:
        """Receive the VAE that owns this prior (no-op by default)."""


class StandardNormal(Prior):
    """The isotropic standard normal N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, 1.0, validate_args=False).to_event(1)


PRIORS: dict[str, type[Prior]] = {"normal": StandardNormal}


def make_prior(prior: str | torch.nn.Module, latent_dim: int, **kwargs) -> torch.nn.Module:
    """Build a prior from its registered name, or pass a module instance through.

    Any ``torch.nn.Module`` whose ``forward()`` returns a distribution over one
    latent vector is accepted; :class:`Prior` adds the optional hooks.
    """
    if isinstance(prior, torch.nn.Module):
        if getattr(prior, "latent_dim", latent_dim) != latent_dim:
            raise ValueError(
                f"prior has latent_dim={prior.latent_dim} but the VAE has {latent_dim}: "
                "construct them with the same latent_dim"
            )
        return prior
    try:
        cls = PRIORS[prior]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown prior {prior!r}: choose one of {sorted(PRIORS)} "
            "or pass a ppvae.models.Prior instance"
        ) from None
    return cls(latent_dim, **kwargs)
