"""The importance-weighted ELBO, per datapoint, with an optional DReG gradient.

For a model with local latents z_n (inside ``pyro.plate("data")``) and optional global
latents θ (outside it), :class:`IWAE_ELBO` maximises

    L_K = E[ log p(θ)/q(θ) + Σ_n s · log (1/K) Σ_k p(x_n, z_nk | θ) / q(z_nk | x_n, θ) ],

with θ ~ q(θ) drawn ONCE per outer particle and shared by the K inner particles
z_nk ~ q(z | x_n, θ), and s = N/B the data plate's scale (so a minibatch of B points
estimates the full-data bound, as with Pyro's ``Trace_ELBO``). By Jensen's inequality,
twice, L_K ≤ E_θ[log p(θ)/q(θ) + Σ_n log p(x_n | θ)] ≤ log p(x_1, ..., x_N); without
global sites L_K = Σ_n IWAE_K(x_n), which increases with K towards Σ_n log p(x_n), and
L_1 is the ELBO; with global sites L_K tends, as K grows, to the first bound above (an
ELBO in θ alone). The log-sum-exp runs over the particles of each datapoint separately
and the scale s multiplies its result. Pyro's ``RenyiELBO(alpha=0)`` differs in two
cases. When any site lies outside the data plate it sums each particle's log-weights
over the batch before its log-sum-exp: the IWAE bound of the batch's joint, with K
joint draws of (θ, z_1, ..., z_B). Neither bound is uniformly tighter. The pooled one
tends to log p(x_1, ..., x_B) as K grows, beyond the ELBO in θ that L_K reaches, so it
is tighter when q(θ) is what the guide gets wrong; but each of its weights multiplies B
datapoints' local weights, so when the local guide errs its variance grows with B and
it stays near the ELBO for any practical K, where L_K is tighter. Under a subsampling
plate it applies s inside the log-sum-exp, which is no longer an estimate of the
full-data bound.

References
----------
Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
Tucker, Lawson, Gu & Maddison (2019), "Doubly Reparameterized Gradient Estimators for
Monte Carlo Objectives", ICLR (arXiv 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.poutine.util import site_is_subsample

from ppvae.inference.iwae_terms import IWAEModule, IWAETerms, local_latents
from ppvae.inference.traces import checked_traces, replay, trace_guide
from ppvae.inference.weights import SiteLogProbs, site_log_probs

__all__ = ["IWAE_ELBO", "IWAETerms", "IWAEModule"]


class IWAE_ELBO(ELBO):
    """Importance-weighted bound with a per-datapoint log-sum-exp (see the module doc).

    A ``pyro.infer.ELBO``: ``pyro.infer.SVI(model, guide, optim, IWAE_ELBO(8))`` trains
    with it (``loss_and_grads``), ``differentiable_loss`` serves ``torch.optim`` loops such
    as ``ppvae.fit``, and ``IWAE_ELBO(8)(model, guide)`` fixes the pair as a module
    (:class:`~ppvae.inference.iwae_terms.IWAEModule`, Pyro's ``ELBOModule`` that also
    lists the parameters of the modules owning ``model`` and ``guide``).

    Parameters
    ----------
    num_particles
        K, inner particles per datapoint (vectorised).
    dreg
        Use the doubly reparameterised gradient (DReG) of Tucker et al. for the guide:
        the guide's parameters φ get Σ_k w̃_k² (∂ log w_k / ∂z_k)(∂z_k / ∂φ), with
        w̃ the normalised weights and log q differentiated in z only, while the model's
        parameters get the usual IWAE gradient Σ_k w̃_k ∂ log p(x, z_k) / ∂θ. Both are
        unbiased for the bound's gradient; DReG's guide gradient does not lose its
        signal-to-noise ratio as K grows. Global sites get the ordinary reparameterised
        gradient. The loss's value is the same either way.
    max_plate_nesting
        Plates nested in the model; the particle plate goes at ``dim=-(max_plate_nesting+1)``.
    num_outer
        Independent draws of (θ, K particles) averaged.
    data_plate
        Name of the plate over datapoints.

    Notes
    -----
    Guide sites must be reparameterisable (``has_rsample``): the gradient is the
    pathwise one.
    """

    def __init__(
        self,
        num_particles: int = 5,
        *,
        dreg: bool = False,
        max_plate_nesting: int = 1,
        num_outer: int = 1,
        data_plate: str = "data",
    ) -> None:
        if int(num_particles) < 1 or int(num_outer) < 1:
            raise ValueError(
                f"num_particles and num_outer must be at least 1, got {num_particles}, {num_outer}"
            )
        # The particles are vectorised by this class's own tracing (inference/traces.py),
        # not by ELBO._get_traces, so the base class must not add a particle dimension to
        # max_plate_nesting (it does when vectorize_particles=True).
        super().__init__(
            num_particles=int(num_particles),
            max_plate_nesting=int(max_plate_nesting),
            vectorize_particles=False,
        )
        self.num_outer, self.dreg, self.data_plate = int(num_outer), bool(dreg), data_plate

    # ------------------------------------------------------------------ terms
    def _split(self, trace: poutine.Trace, latent_only: bool) -> SiteLogProbs:
        return site_log_probs(
            trace,
            data_plate=self.data_plate,
            max_plate_nesting=self.max_plate_nesting,
            latent_only=latent_only,
            scale_globals=True,
        )

    def _terms(self, model_trace: poutine.Trace, guide_trace: poutine.Trace) -> IWAETerms:
        model_trace, guide_trace = checked_traces(model_trace, guide_trace, self.data_plate)
        p, q = self._split(model_trace, False), self._split(guide_trace, True)
        scales = p.local_scales | q.local_scales
        if len(scales) > 1:
            raise ValueError(
                f"sites in pyro.plate({self.data_plate!r}) have different scales "
                f"{sorted(scales)}: the importance-weighted bound needs one scale per datapoint"
            )
        assert p.local is not None  # checked_traces found a site in the data plate
        shape = (self.num_particles, p.local.shape[-1])
        guide_local = q.local if q.local is not None else p.local.new_zeros(())
        glob = p.local.new_zeros(())
        # Globals are shared by the particles, so their terms are equal across them.
        if p.glob is not None:
            glob = glob + p.glob.mean()
        if q.glob is not None:
            glob = glob - q.glob.mean()
        return IWAETerms(
            model_local=p.local.expand(shape),
            guide_local=guide_local.expand(shape),
            global_term=glob,
            scale=next(iter(scales), 1.0),
            model_trace=model_trace,
            guide_trace=guide_trace,
        )

    def _guide_trace(self, guide: Callable, args: tuple, kwargs: dict) -> poutine.Trace:
        trace = trace_guide(
            guide,
            args,
            kwargs,
            self.num_particles,
            data_plate=self.data_plate,
            max_plate_nesting=self.max_plate_nesting,
            share_globals=True,
        )
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site {name!r} ({type(site['fn']).__name__}) is not "
                    "reparameterisable: IWAE_ELBO uses pathwise gradients and needs guide "
                    "distributions with rsample"
                )
        return trace

    def particle_terms(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> IWAETerms:
        """Draw one outer particle (θ and K particles per datapoint) and score it."""
        guide_trace = self._guide_trace(guide, args, kwargs)
        model_trace = replay(
            model,
            guide_trace,
            args,
            kwargs,
            self.num_particles,
            max_plate_nesting=self.max_plate_nesting,
        )
        return self._terms(model_trace, guide_trace)

    def _get_trace(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[poutine.Trace, poutine.Trace]:
        """Model and guide traces of one outer particle (``ELBO``'s abstract hook)."""
        terms = self.particle_terms(model, guide, *args, **kwargs)
        return terms.model_trace, terms.guide_trace

    # ------------------------------------------------------------------ DReG
    def _dreg_surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        # The guide's local draws z(φ, ε) are copied into leaf tensors ζ. The model and
        # the guide are re-evaluated at ζ (global θ stays on the graph), so that
        #   * Σ_k w̃_k log p(x, ζ_k) carries the direct gradient of the model's
        #     parameters (and of θ) weighted by w̃, the IWAE gradient, and
        #   * g = ∂/∂ζ Σ_k w̃_k² (log p − log q)(ζ_k) holds the partial derivatives in z
        #     at fixed parameters; ⟨g, z(φ, ε)⟩ then sends g through the reparameterised
        #     path to φ (and to θ, hierarchical guides included).
        # log q's direct dependence on the guide's parameters (the score term) is dropped:
        # this is DReG. No parameter needs detaching, so model and guide may share
        # parameters (ppvae's VAE is one module with both programs).
        opts = {"max_plate_nesting": self.max_plate_nesting}
        guide_trace = self._guide_trace(guide, args, kwargs)
        live = local_latents(guide_trace, self.data_plate)
        leaf_trace = guide_trace.copy()
        leaves = {}
        for name, site in live.items():
            leaves[name] = site["value"].detach().requires_grad_(True)
            leaf_trace.nodes[name] = {**site, "value": leaves[name]}
        model_trace = replay(model, leaf_trace, args, kwargs, self.num_particles, **opts)
        guide_leaf = replay(guide, leaf_trace, args, kwargs, self.num_particles, **opts)
        terms = self._terms(model_trace, guide_leaf)
        lw = terms.log_weights
        with torch.no_grad():
            w = torch.softmax(lw, dim=0)
        value = terms.bound().detach()
        surrogate = terms.global_term + terms.scale * (w * terms.model_local).sum()
        if leaves:
            inner = terms.scale * (w.square() * lw).sum()
            grads = torch.autograd.grad(
                inner, list(leaves.values()), retain_graph=True, allow_unused=True
            )
            for name, g in zip(leaves, grads, strict=True):
                if g is not None:
                    surrogate = surrogate + (g.detach() * live[name]["value"]).sum()
        return value + surrogate - surrogate.detach()

    # ------------------------------------------------------------------ interface
    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The negative bound (a scalar to minimise), averaged over ``num_outer`` draws."""
        total = 0.0
        for _ in range(self.num_outer):
            if self.dreg and torch.is_grad_enabled():
                bound = self._dreg_surrogate(model, guide, args, kwargs)
            else:
                bound = self.particle_terms(model, guide, *args, **kwargs).bound()
            total = total + bound
        return -total / self.num_outer

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative bound as a float, without gradients."""
        return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Backpropagate the loss (Pyro's ``SVI`` interface) and return its value."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())

    def __call__(self, model: Callable, guide: Callable) -> IWAEModule:
        """The pair as a module whose ``forward`` is the differentiable loss (see above)."""
        return IWAEModule(model, guide, self)

    def __repr__(self) -> str:
        return (
            f"IWAE_ELBO(num_particles={self.num_particles}, dreg={self.dreg}, "
            f"num_outer={self.num_outer})"
        )
