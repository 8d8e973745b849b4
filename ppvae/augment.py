"""Data augmentation with a trained VAE: class-conditional or posterior-neighbourhood samples.

:func:`augment` turns a trained model into extra training examples for another model, in
one of two ways:

``mode="prior"``
    z from the model's own prior program (``vae.model``), decoded with the requested
    labels; for a conditional VAE (``num_labels`` set) these are class-conditional samples
    p(x | z, y) with z ~ p(z) (Sohn et al., 2015).
``mode="posterior"``
    each source example x is encoded, z is drawn from the guide q(z | x) (optionally at a
    lower temperature, see :func:`posterior_latents`) and decoded: new examples that stay
    close to real ones, each carrying its source example's label. Works for any ppvae
    model, conditional or not.

Samples are returned on the data's own scale and in its support, so that they can be
concatenated with the real training set (see ``output`` in :func:`augment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch.nn import functional as F

from ppvae.inference.rng import seeded
from ppvae.models.likelihoods import BinomialLikelihood, PoissonLikelihood
from ppvae.models.pixel_likelihoods import CategoricalLikelihood, DiscretizedLogisticLikelihood
from ppvae.models.programs import local_params_method

__all__ = ["augment", "posterior_latents", "MODES", "OUTPUTS"]

MODES = ("prior", "posterior")
OUTPUTS = ("sample", "mean")
# Likelihoods over integers: their mean is rounded onto the integer levels for output="mean".
_INTEGER_LIKELIHOODS = (
    BinomialLikelihood,
    PoissonLikelihood,
    CategoricalLikelihood,
    DiscretizedLogisticLikelihood,
)
_CHUNK = 1024  # datapoints decoded at once: bounds memory for large requests


# Like every ppvae entry point, augment reads the modules' own parameters and leaves Pyro's
# global param store alone.
@local_params_method
def augment(
    vae: Any,
    *,
    n_per_class: int | None = None,
    n: int | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    mode: str = "prior",
    source: Any = None,
    temperature: float = 1.0,
    output: str = "sample",
    seed: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generate an augmented dataset ``(x, y)`` from a trained VAE.

    Parameters
    ----------
    vae
        A trained :class:`~ppvae.VAE` or :class:`~ppvae.TwoLayerVAE` (conditional or not).
    n_per_class
        Number of examples per class, classes in order; needs labels (a conditional model
        in prior mode, a labelled source in posterior mode).
    n
        Total number of examples (instead of ``n_per_class``). Prior mode: classes cycle
        ``0, 1, ...`` for a conditional model. Posterior mode: source rows are used in
        order and cycled, so ``n = k * len(source)`` gives ``k`` neighbours of each row.
        Posterior mode defaults to one neighbour per source row.
    labels
        The classes to generate (default: all ``vae.num_labels`` classes in prior mode,
        every class of the source in posterior mode).
    mode
        ``"prior"`` (class-conditional samples of a conditional VAE, or plain samples of
        an unconditional one with ``n``) or ``"posterior"`` (neighbours of ``source``).
    source
        Posterior mode only: a tensor ``(N, *event_shape)``, a pair ``(x, y)`` of data and
        labels, or a :class:`~ppvae.Dataset` (its training split and labels). A
        conditional VAE needs the labels; they are carried over to the output.
    temperature
        Posterior mode only: how far from the guide's centre the latents are drawn
        (1: exactly q(z | x); 0: the centre itself); see :func:`posterior_latents`.
    output
        ``"sample"``: x ~ p(x | z), in the data's support ({0, 1} for Bernoulli, counts
        for Binomial and Poisson, integer levels 0..255 for the 8-bit likelihoods).
        ``"mean"``: E[x | z], rounded to the nearest level for the integer-valued
        likelihoods (Binomial, Poisson, 8-bit), and left as probabilities in [0, 1] for
        Bernoulli (smooth images, outside the {0, 1} support of the data).
    seed
        Seed of the draws, run on its own stream through
        :func:`~ppvae.inference.rng.seeded` (the caller's random state is left as it
        was); ``None`` draws from the caller's stream.

    Returns
    -------
    x, y
        ``x``: float tensor ``(M, *event_shape)`` in the model's dtype and device (integer
        levels are held as whole-numbered floats, as :func:`~ppvae.load_dataset` holds
        them); ``y``: ``int64`` labels ``(M,)``, or ``None`` when nothing is labelled.

    Raises
    ------
    ValueError
        For an unknown mode or output, ``n``/``n_per_class`` not positive or both given,
        labels out of range, class-conditional samples asked of an unconditional model, a
        temperature other than 1 in prior mode, or a missing or ill-shaped source.

    References
    ----------
    Sohn, Lee & Yan (2015), "Learning Structured Output Representation using Deep
    Conditional Generative Models", NeurIPS (conditional VAE).
    Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions",
    NeurIPS (temperature of a flow's base distribution).
    """
    _check_request(mode, output, n, n_per_class, temperature)
    with seeded(seed), torch.no_grad():
        if mode == "prior":
            if source is not None or temperature != 1:
                raise ValueError(
                    "source and temperature apply to mode='posterior' only; prior mode draws "
                    "z from the model's prior as it is"
                )
            z, y = _prior_draws(vae, n, n_per_class, labels)
        else:
            z, y = _posterior_draws(vae, source, n, n_per_class, labels, temperature)
        x = torch.cat([_decode(vae, zc, yc, output) for zc, yc in _pairs(z, y)])
    return x, y


def posterior_latents(
    vae: Any, x: torch.Tensor, y: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """One draw of the decoder's latent from the guide q(z | x), at a temperature.

    Gaussian guides (diagonal, low-rank, full-rank): z = μ + T (z₁ − μ) with z₁ ~ q(z | x),
    that is a draw from N(μ, T² Σ): the covariance is scaled by T² exactly.
    Flow guides (IAF, spline; any ``TransformedDistribution``): the temperature scales
    the deviation of the base Gaussian draw from its mean, u = m + T (u₁ − m), and u is
    pushed through the flow, as Glow samples at reduced temperature. T = 1 draws exactly
    from q(z | x) and T = 0 gives the image of the base mean under the flow (the centre of
    the flow, not necessarily the mean of q); since the flow is nonlinear the spread of z
    does not scale exactly by T in between. Other guides: the Gaussian rule around
    ``q.mean``. For a :class:`~ppvae.TwoLayerVAE` the latent is z1, next to the data.
    """
    num_labels = getattr(vae, "num_labels", None)
    y1h = None if num_labels is None else F.one_hot(y.long(), num_labels).to(x.dtype)
    q = vae.guide_net(x, y1h)
    if temperature == 1:
        return q.sample()
    if isinstance(q, dist.TransformedDistribution):
        base = q.base_dist
        u = base.mean + temperature * (base.sample() - base.mean)
        for transform in q.transforms:
            u = transform(u)
        return u
    return q.mean + temperature * (q.sample() - q.mean)


def _check_request(
    mode: str, output: str, n: int | None, n_per_class: int | None, temperature: float
) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use 'prior' or 'posterior'")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}: use 'sample' or 'mean'")
    for name, value in (("n", n), ("n_per_class", n_per_class)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if n is not None and n_per_class is not None:
        raise ValueError("give n or n_per_class, not both")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def _prior_draws(
    vae: Any, n: int | None, n_per_class: int | None, labels: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents from the prior and their labels, in chunks of at most ``_CHUNK``."""
    y = _prior_labels(vae, n, n_per_class, labels)
    y = None if y is None else y.to(next(vae.parameters()).device)
    size = len(y) if y is not None else int(n)  # n is set: checked by _prior_labels
    sizes = [len(part) for part in torch.arange(size).split(_CHUNK)]
    ys = [None] * len(sizes) if y is None else y.split(_CHUNK)
    z = torch.cat([_prior_latents(vae, m, yc) for m, yc in zip(sizes, ys, strict=True)])
    return z, y


def _posterior_draws(
    vae: Any,
    source: Any,
    n: int | None,
    n_per_class: int | None,
    labels: Any,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents from q(z | x) of the chosen source rows, and the rows' labels."""
    x_src, y_src = _source(vae, source)
    rows = _source_rows(y_src, n, n_per_class, labels, len(x_src))
    parts = [
        posterior_latents(vae, x_src[r], None if y_src is None else y_src[r], temperature)
        for r in rows.split(_CHUNK)
    ]
    return torch.cat(parts), None if y_src is None else y_src[rows]


def _prior_latents(vae: Any, m: int, y: torch.Tensor | None) -> torch.Tensor:
    """``m`` latents the decoder takes, drawn by the model's own program from its prior.

    The model program returns the latent it feeds the decoder (z, or z1 of a two-layer
    VAE), drawn through every prior site, global ones included. Its observed site gets
    placeholder data, which only sets the plate's size: outside inference an observed
    sample statement returns the observation and scores nothing.
    """
    param = next(vae.parameters())
    placeholder = torch.zeros(m, *vae.event_shape, dtype=param.dtype, device=param.device)
    return vae.model(placeholder, y)


def _pairs(
    z: torch.Tensor, y: torch.Tensor | None
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    zs = z.split(_CHUNK)
    ys = [None] * len(zs) if y is None else y.split(_CHUNK)
    return list(zip(zs, ys, strict=True))


def _decode(vae: Any, z: torch.Tensor, y: torch.Tensor | None, output: str) -> torch.Tensor:
    """p(x | z, y) as a sample or as its mean on the data's levels."""
    num_labels = getattr(vae, "num_labels", None)
    y1h = None if num_labels is None else F.one_hot(y.long(), num_labels).to(z.dtype)
    params = vae.decoder(z, y1h)
    lik = vae.likelihood
    if output == "sample":
        # in the model's float dtype, as data are held (a categorical draws integer indices)
        return lik(params).sample().to(z.dtype)
    mean = lik.mean(params) if hasattr(lik, "mean") else lik(params).mean
    if isinstance(lik, _INTEGER_LIKELIHOODS):
        low, high = lik.value_range()
        mean = mean.round().clamp(low, high)
    return mean


def _prior_labels(
    vae: Any, n: int | None, n_per_class: int | None, labels: Any
) -> torch.Tensor | None:
    num_labels = getattr(vae, "num_labels", None)
    if num_labels is None:
        if n_per_class is not None or labels is not None:
            raise ValueError(
                "this model is not conditional (num_labels is None), so it cannot draw "
                "class-conditional samples: ask for n samples without labels, or use "
                "mode='posterior' with a labelled source"
            )
        if n is None:
            raise ValueError("give n, the number of samples to draw")
        return None
    classes = _classes(labels, num_labels)
    if n_per_class is not None:
        return classes.repeat_interleave(int(n_per_class))
    if n is None:
        raise ValueError("give n_per_class (or n) for class-conditional samples")
    return classes[torch.arange(int(n)) % len(classes)]


def _classes(labels: Any, num_labels: int | None) -> torch.Tensor:
    if labels is None:
        return torch.arange(num_labels)
    classes = torch.as_tensor(labels, dtype=torch.long).flatten()
    if classes.numel() == 0:
        raise ValueError("labels is empty: name at least one class")
    if num_labels is not None and (classes.min() < 0 or classes.max() >= num_labels):
        raise ValueError(
            f"labels must lie in 0..{num_labels - 1}, got {classes.tolist()}: the model "
            f"has {num_labels} classes"
        )
    return classes


def _source(vae: Any, source: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The source data and labels, checked against the model."""
    if source is None:
        raise ValueError("mode='posterior' needs source data to encode (source=...)")
    if hasattr(source, "train") and hasattr(source, "train_labels"):
        x, y = source.train, source.train_labels
    elif isinstance(source, tuple | list):
        x, y = source
    else:
        x, y = source, None
    param = next(vae.parameters())
    x = torch.as_tensor(x).to(dtype=param.dtype, device=param.device)
    y = None if y is None else torch.as_tensor(y).long().to(param.device)
    if len(x) == 0:
        raise ValueError("source is empty: give at least one example")
    if y is not None and y.shape != (len(x),):
        raise ValueError(f"source labels must have shape ({len(x)},), got {tuple(y.shape)}")
    vae.check_data(x, y)  # shape, support, and labels of a conditional model
    return x, y


def _source_rows(
    y: torch.Tensor | None, n: int | None, n_per_class: int | None, labels: Any, size: int
) -> torch.Tensor:
    """Indices of the source rows to encode, one per output example."""
    if n_per_class is None and labels is None:
        return torch.arange(size if n is None else int(n), device=_dev(y)) % size
    if y is None:
        raise ValueError(
            "n_per_class and labels need a labelled source: pass source=(x, y) or a dataset"
        )
    classes = _classes(labels, None) if labels is not None else y.unique().cpu()
    rows = []
    for c in classes.tolist():
        idx = (y == c).nonzero().flatten()
        if len(idx) == 0:
            raise ValueError(f"the source has no example of class {c}: drop it from labels")
        count = int(n_per_class) if n_per_class is not None else len(idx)
        rows.append(idx[torch.arange(count, device=idx.device) % len(idx)])
    out = torch.cat(rows)
    if n is not None:
        out = out[torch.arange(int(n), device=out.device) % len(out)]
    return out


def _dev(y: torch.Tensor | None) -> torch.device:
    return torch.device("cpu") if y is None else y.device
