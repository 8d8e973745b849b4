"""The objectives ``fit`` trains with, by name: Pyro's ELBOs and the importance-weighted bound.

``"trace"`` is Pyro's ``Trace_ELBO`` and ``"meanfield"`` its ``TraceMeanField_ELBO`` (the KL
in closed form where Pyro has it); ``"iwae"`` is :class:`~ppvae.inference.iwae.IWAE_ELBO`,
the importance-weighted bound with a log-sum-exp per datapoint. Any object with Pyro's
``differentiable_loss(model, guide, *args, **kwargs)`` works as well: an objective is an
object, so ``pyro.infer.SVI(model, guide, optim, ppvae.IWAE_ELBO(8))`` works as Pyro users
expect, and ``ppvae.fit`` is a convenience over the same objects.

References
----------
Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR.
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
"""

from __future__ import annotations

from typing import Any

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppvae.inference.iwae import IWAE_ELBO

__all__ = ["make_elbo", "check_objective"]

_JIT_REFUSAL = (
    "elbo={!r} cannot train ppvae models: Pyro's JIT objectives compile with "
    "pyro.ops.jit.trace, which fetches every parameter by name from Pyro's global param store, "
    "but ppvae keeps parameters in their modules (module_local_params=True) and trains them "
    "with torch.optim, so the lookup fails (and parameters of plain torch submodules would be "
    "frozen into the trace as constants); use elbo='trace' or elbo='meanfield'"
)


def make_elbo(elbo: str | Any, num_particles: int = 1) -> Any:
    """The objective for ``elbo``: ``"trace"``, ``"meanfield"``, ``"iwae"`` or an ELBO object.

    ``"trace"`` and ``"meanfield"`` average ``num_particles`` vectorised particles;
    ``"iwae"`` is the importance-weighted bound with ``num_particles`` samples per datapoint.
    An object is returned as it is, provided it has ``differentiable_loss``.

    Raises
    ------
    ValueError
        An unknown name, one of Pyro's JIT objectives (with the reason), or an object
        without ``differentiable_loss``.
    """
    if not isinstance(elbo, str):
        if not hasattr(elbo, "differentiable_loss"):
            raise ValueError(f"elbo must be a name or have differentiable_loss(), got {elbo!r}")
        return elbo
    kw = {"num_particles": num_particles, "vectorize_particles": True, "max_plate_nesting": 1}
    if elbo == "trace":
        return Trace_ELBO(**kw)
    if elbo == "meanfield":
        return TraceMeanField_ELBO(**kw)
    if elbo == "iwae":
        return IWAE_ELBO(num_particles)
    if elbo in ("jit_trace", "jit_meanfield"):
        raise ValueError(_JIT_REFUSAL.format(elbo))
    raise ValueError(f"unknown elbo {elbo!r}: use 'trace', 'meanfield' or 'iwae'")


def check_objective(vae: Any, elbo: str | Any) -> None:
    """Refuse an objective that cannot train ``vae``, saying why and what to use instead.

    ``TraceMeanField_ELBO`` takes the KL of each latent site in closed form, which is valid
    only for a guide whose latent sites are independent of each other; a model that
    declares ``mean_field = False`` (:class:`~ppvae.models.hierarchical.TwoLayerVAE`,
    whose guide draws z2 given z1) cannot be trained with it.

    Raises
    ------
    ValueError
        One line naming the model, the reason and the objectives that work.
    """
    meanfield = elbo == "meanfield" or isinstance(elbo, TraceMeanField_ELBO)
    if meanfield and not getattr(vae, "mean_field", True):
        raise ValueError(
            f"elbo='meanfield' cannot train a {type(vae).__name__}: TraceMeanField_ELBO needs "
            "a guide whose latent sites are independent, and this guide draws z2 given z1; "
            "use elbo='trace' or elbo='iwae'"
        )
