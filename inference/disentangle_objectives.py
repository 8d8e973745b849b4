"""Objectives for disentangled representations: β-TCVAE and the annealed-capacity VAE.

Both are ``pyro.infer.ELBO`` subclasses, so ``ppvae.fit(vae, ds, elbo=TCVAE_ELBO(beta=6))``
and ``pyro.infer.SVI(model, guide, optim, TCVAE_ELBO(beta=6))`` both work. They need one
local latent site inside the data plate (``pyro.plate("data", N, subsample=...)``), drawn by
the guide from a distribution that factorises over its dimensions (``Independent`` of a
per-dimension family, e.g. ppvae's ``guide="diagonal"``). The global dataset size N is read
from the data plate, so minibatches of a plate with ``num_data=N`` are weighted correctly.

**β-TCVAE** (Chen et al. 2018). With α = γ = 1 the objective is

    ELBO − (β − 1) · TC,   TC = E_q(z)[log q(z) − Σ_d log q(z_d)],

the ELBO with its total-correlation part weighted by β. q(z) = (1/N) Σ_n q(z | x_n) is the
aggregate posterior; for each datapoint i of a batch of B, log q(z_i) and log q(z_id) are
estimated from the batch's B posteriors: ``estimator="mss"`` (minibatch stratified
sampling, the default) weights q(z_i | x_j) so that the weights of each row sum to one
(own term 1/N, see :func:`mss_log_weights`); with the whole set as the batch (B = N) every
weight is 1/N and the estimate is the exact mixture density. ``"mws"`` (minibatch-weighted
sampling) uses 1/(N B) for every term as in the paper's equation: its value exceeds that of
the plain batch average (weights 1/B) by the constant (D − 1) log N, which leaves its
gradient unchanged but its value far from TC; it is the paper's default. The single-sample
TC estimate of each datapoint is scaled like the ELBO's terms (N/B), so the loss estimates
the whole-set objective.

**Annealed capacity** (Burgess et al. 2018). The loss is
−E_q[log p(x | z)] + γ · |KL − C|, with KL(q(z | x) ‖ p(z)) in closed form where torch has
it (else one Monte Carlo draw), averaged over the batch before the absolute value as in
disentanglement_lib, and C rising linearly from 0 to ``capacity`` over
``capacity_steps`` gradient steps (counted by the object; a resumed run restarts the ramp).

Neither objective is a bound on log p(x) for β ≠ 1 or γ ≠ 1: compare models by
:func:`ppvae.log_likelihood`, not by these losses.

References
----------
Chen, Li, Grosse & Duvenaud (2018), "Isolating Sources of Disentanglement in Variational
Autoencoders", NeurIPS.
Burgess et al. (2018), "Understanding disentangling in β-VAE", arXiv:1804.03599.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

__all__ = ["AnnealedCapacityELBO", "TCVAE_ELBO", "mss_log_weights", "total_correlation"]


def mss_log_weights(batch: int, num_data: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Log-weights ``(B, B)`` of minibatch stratified sampling (Chen et al. 2018, App. C.2).

    Row i weights q(z_i | x_j): 1/N for its own datapoint, (N − M)/(N M) for one other and
    1/M for the rest (M = B − 1), so that each row sums to one; with B = N all are 1/N.
    The one other datapoint of row i is i + 1 (cyclically); the reference code's strided
    indexing does not give normalised rows, this does.
    """
    if batch >= num_data:
        return torch.full((batch, batch), -math.log(num_data), dtype=dtype)
    m = batch - 1
    w = torch.full((batch, batch), 1 / m, dtype=dtype)
    rows = torch.arange(batch)
    w[rows, rows] = 1 / num_data
    w[rows, (rows + 1) % batch] = (num_data - m) / (num_data * m)
    return w.log()


def total_correlation(
    z: torch.Tensor, posterior: dist.Distribution, num_data: int, estimator: str = "mss"
) -> torch.Tensor:
    """Per-datapoint estimate log q(z_i) − Σ_d log q(z_id) of the total correlation.

    Parameters
    ----------
    z
        One draw per datapoint, ``(B, D)``.
    posterior
        The batch's posteriors factorised over dimensions: batch shape ``(B, D)``, so that
        ``posterior.log_prob(z[:, None])[i, j, d]`` = log q(z_id | x_j).
    num_data
        N, the size of the dataset the batch was drawn from.
    estimator
        ``"mss"`` or ``"mws"`` (see the module doc).
    """
    batch = z.shape[0]
    if batch < 2 or num_data < batch:
        raise ValueError(
            f"TC needs a batch of ≥ 2 out of num_data ≥ batch, got {batch}, {num_data}"
        )
    log_q = posterior.log_prob(z[:, None, :])  # (B, B, D)
    if estimator == "mss":
        log_w = mss_log_weights(batch, num_data, log_q.dtype).to(log_q.device)
    elif estimator == "mws":
        log_w = torch.full((batch, batch), -math.log(num_data * batch), dtype=log_q.dtype)
        log_w = log_w.to(log_q.device)
    else:
        raise ValueError(f"unknown estimator {estimator!r}: use 'mss' or 'mws'")
    log_qz = torch.logsumexp(log_w + log_q.sum(-1), dim=1)
    log_marginals = torch.logsumexp(log_w[..., None] + log_q, dim=1).sum(-1)
    return log_qz - log_marginals


class _LocalLatentELBO(ELBO):
    """The shared machinery: traces, the one local latent site, Pyro's ELBO protocol."""

    def __init__(self, data_plate: str = "data") -> None:
        super().__init__(num_particles=1, max_plate_nesting=1)
        self.data_plate = data_plate

    def _traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        latents = [
            name
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        ]
        if len(latents) != 1:
            raise ValueError(
                f"{type(self).__name__} needs exactly one latent site (inside the data plate), "
                f"found {latents}"
            )
        site = guide_trace.nodes[latents[0]]
        frame = next((f for f in site["cond_indep_stack"] if f.name == self.data_plate), None)
        if frame is None:
            raise ValueError(f"latent site {latents[0]!r} is not inside plate {self.data_plate!r}")
        return model_trace, guide_trace, latents[0], frame.full_size or frame.size

    def _get_trace(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[poutine.Trace, poutine.Trace]:
        """Pyro's hook: the model and guide traces of one particle, log-densities computed."""
        model_trace, guide_trace, _, _ = self._traces(model, guide, args, kwargs)
        return model_trace, guide_trace

    def _loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The loss (the negative objective for the whole dataset), differentiable."""
        loss = self._loss(model, guide, *args, **kwargs)
        if torch.is_grad_enabled():
            self._stepped()
        return loss

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss as a float, without gradients (and without advancing any schedule)."""
        with torch.no_grad():
            return float(self._loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """For ``pyro.infer.SVI``: backpropagate the loss and return its value."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()

    def _stepped(self) -> None:
        """Called once per differentiable loss computed with gradients on."""


def _elbo_sum(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> torch.Tensor:
    """log p(x, z) − log q(z | x) of the traces, sites' scales (N/B) applied."""
    return model_trace.log_prob_sum() - guide_trace.log_prob_sum()


def _factorised(fn: dist.Distribution, name: str) -> dist.Distribution:
    if isinstance(fn, dist.Independent) and fn.reinterpreted_batch_ndims == 1:
        return fn.base_dist
    raise ValueError(
        f"the guide's site {name!r} must be an Independent distribution over a per-dimension "
        f"family (e.g. Normal(loc, scale).to_event(1), guide='diagonal'), got {type(fn).__name__}"
    )


class TCVAE_ELBO(_LocalLatentELBO):
    """β-TCVAE: the ELBO with its total correlation weighted by β (see the module doc).

    Parameters
    ----------
    beta
        Weight of the total correlation; β = 1 is the ELBO.
    estimator
        ``"mss"`` (minibatch stratified sampling) or ``"mws"`` (minibatch-weighted).
    data_plate
        Name of the plate over datapoints.
    """

    def __init__(self, beta: float = 6.0, *, estimator: str = "mss", data_plate: str = "data"):
        super().__init__(data_plate)
        if not beta >= 0 or estimator not in ("mss", "mws"):
            raise ValueError(
                f"beta must be ≥ 0 and estimator 'mss' or 'mws', got {beta!r}, {estimator!r}"
            )
        self.beta, self.estimator = float(beta), estimator

    def _loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        model_trace, guide_trace, name, num_data = self._traces(model, guide, args, kwargs)
        elbo = _elbo_sum(model_trace, guide_trace)
        site = guide_trace.nodes[name]
        if self.beta == 1 or site["value"].shape[0] < 2:
            return -elbo  # a lone datapoint (a last batch of one) has no TC estimate
        tc = total_correlation(
            site["value"], _factorised(site["fn"], name), int(num_data), self.estimator
        )
        return -(elbo - (self.beta - 1) * site["scale"] * tc.sum())


class AnnealedCapacityELBO(_LocalLatentELBO):
    """−E_q[log p(x | z)] + γ |KL − C| with C rising to ``capacity`` (Burgess et al. 2018).

    Parameters
    ----------
    capacity
        Final capacity C_max in nats (Burgess et al.: 25 on dSprites).
    capacity_steps
        Gradient steps over which C rises linearly from 0 (theirs: 100,000).
    gamma
        Weight γ of the deviation (theirs: 1000).
    data_plate
        Name of the plate over datapoints.

    Attributes
    ----------
    num_steps
        Gradient steps taken so far; C = capacity · min(1, num_steps / capacity_steps).
    """

    def __init__(
        self,
        capacity: float = 25.0,
        capacity_steps: int = 100_000,
        gamma: float = 1000.0,
        *,
        data_plate: str = "data",
    ) -> None:
        super().__init__(data_plate)
        if not (capacity >= 0 and capacity_steps >= 1 and gamma >= 0):
            raise ValueError(
                "capacity and gamma must be ≥ 0 and capacity_steps ≥ 1, got "
                f"{capacity!r}, {capacity_steps!r}, {gamma!r}"
            )
        self.capacity, self.capacity_steps, self.gamma = (
            float(capacity),
            int(capacity_steps),
            float(gamma),
        )
        self.num_steps = 0

    @property
    def current_capacity(self) -> float:
        """C at the current step."""
        return self.capacity * min(1.0, self.num_steps / self.capacity_steps)

    def _stepped(self) -> None:
        self.num_steps += 1

    def _loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        model_trace, guide_trace, name, num_data = self._traces(model, guide, args, kwargs)
        q_site, p_site = guide_trace.nodes[name], model_trace.nodes[name]
        try:
            kl = kl_divergence(q_site["fn"], p_site["fn"])
        except NotImplementedError:  # one Monte Carlo draw where torch has no closed form
            kl = q_site["log_prob"] - p_site["log_prob"]
        latent_sum = p_site["log_prob_sum"] - q_site["log_prob_sum"]
        # log p(x | z) (and any other model site), scaled N/B like the rest
        recon = _elbo_sum(model_trace, guide_trace) - latent_sum
        batch = kl.shape[0] if kl.dim() else 1
        scale = q_site["scale"] * batch  # N: the batch mean stands for the dataset's
        return -recon + self.gamma * scale * (kl.mean() - self.current_capacity).abs()
