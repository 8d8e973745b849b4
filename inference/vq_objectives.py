"""Objectives of vector-quantised VAEs, as ``pyro.infer.ELBO`` subclasses.

Both objectives trace the guide once, replay the model on its codes and compute

    ELBO = E_q[log p(x | e[k])] − KL(q(k | x) ‖ p(k)),

with the KL in closed form per grid position (categorical against categorical). They
differ in how a gradient reaches the encoder through the discrete codes:

* :class:`VQ_ELBO` (hard posterior, van den Oord et al. 2017): the decoder sees
  z_e + sg(e[k] − z_e), the straight-through estimator, and the objective adds the
  codebook term ‖sg(z_e) − e[k]‖² (left out when the codebook is updated by moving
  averages) and β·‖z_e − sg(e[k])‖², the commitment term. For the hard posterior the KL
  is −log p(k*) (log K per position under the uniform prior).
* :class:`SoftVQ_ELBO` (soft posterior, SQ-VAE-like, Takida et al. 2022): the codes are
  drawn through Pyro's ``RelaxedOneHotCategoricalStraightThrough``, whose forward value is
  the one-hot code and whose gradient is that of the relaxed sample (Jang et al. 2017),
  and the decoder sees one-hot · codebook.

The value of :meth:`loss` is the negative ELBO alone (a bound on −log p(x)); that of
:meth:`differentiable_loss` adds the codebook and commitment terms. While training (grad
enabled) they count how often each code is used, and a codebook not yet initialised
from data is set to encoder outputs of the first training batch (``init_from_data``,
applied before the second step); :meth:`end_epoch` (which
:func:`ppvae.fit` calls after every epoch) returns the epoch's codebook usage and
perplexity and re-initialises the codes no datapoint used from encoder outputs.

Both read the ``"vq_encoding"`` and ``"vq_codebook"`` entries of the guide's code site's
``infer`` dict (see :class:`ppvae.models.vq.VQVAE`), so any model written that way works.

References
----------
van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning",
NeurIPS.
Takida et al. (2022), "SQ-VAE: Variational Bayes on Discrete Representation with
Self-annealed Stochastic Quantization", ICML.
Jang, Gu & Poole (2017), "Categorical Reparameterization with Gumbel-Softmax", ICLR.
Dhariwal et al. (2020), "Jukebox: A Generative Model for Music", arXiv:2005.00341.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import kl_divergence

__all__ = ["VQ_ELBO", "SoftVQ_ELBO", "vq_elbo"]


class _StraightThrough(Messenger):
    """Replace the value of the model's quantised site by ``replace(e)``, keeping ``e``."""

    def __init__(self, site: str, replace: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.site, self.replace = site, replace

    def _pyro_sample(self, msg: Any) -> None:
        if msg["name"] == self.site:
            msg["infer"] = {**msg["infer"], "vq_vectors": msg["value"]}
            msg["value"] = self.replace(msg["value"])


class _Relaxed(Messenger):
    """Draw the guide's code site through a straight-through relaxed one-hot categorical."""

    def __init__(self, site: str, temperature: float) -> None:
        super().__init__()
        self.site, self.temperature = site, temperature

    def _pyro_sample(self, msg: Any) -> None:
        if msg["name"] != self.site or msg["value"] is not None:
            return
        t = torch.tensor(self.temperature, dtype=msg["fn"].logits.dtype)
        relaxed = dist.RelaxedOneHotCategoricalStraightThrough(t, logits=msg["fn"].logits)
        onehot = relaxed.rsample()
        msg["infer"] = {**msg["infer"], "vq_onehot": onehot}
        msg["value"] = onehot.argmax(-1)


class _VQBase(ELBO):
    """Shared machinery: traces, the closed-form KL, codebook statistics and upkeep."""

    # The codebook upkeep moves parameters outside gradients: distributed training then
    # shares rank 0's state after each step (see ppvae.inference.train).
    updates_outside_gradients = True

    def __init__(
        self,
        *,
        reinit_dead: bool = True,
        init_from_data: bool = True,
        codes_site: str = "codes",
        quantized_site: str = "z_q",
    ) -> None:
        super().__init__(num_particles=1, max_plate_nesting=2)
        self.reinit_dead, self.init_from_data = reinit_dead, init_from_data
        self._pending_init: Any = None
        self.codes_site, self.quantized_site = codes_site, quantized_site
        self._counts: torch.Tensor | None = None
        self._pool: torch.Tensor | None = None
        self._pending: tuple[Any, torch.Tensor, torch.Tensor] | None = None
        self._codebook: Any = None

    # subclasses: how the guide is traced and what the decoder sees
    def _guide_fn(self, guide: Callable) -> Callable:
        return guide

    def _replacement(self, site: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def _aux(self, z_e: torch.Tensor, e: torch.Tensor, codebook: Any) -> torch.Tensor:
        return z_e.new_zeros(())

    def _get_trace(self, model: Callable, guide: Callable, args: Any, kwargs: Any) -> Any:
        guide_trace = poutine.trace(self._guide_fn(guide)).get_trace(*args, **kwargs)
        site = guide_trace.nodes[self.codes_site]
        st = _StraightThrough(self.quantized_site, self._replacement(site))
        replayed = poutine.replay(st(model), trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _terms(self, model: Callable, guide: Callable, args: Any, kwargs: Any):
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        elbo, data_scale = 0.0, 1.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            if site["is_observed"]:
                elbo = elbo + (site["fn"].log_prob(site["value"]) * site["scale"]).sum()
                data_scale = site["scale"]
            else:
                q = guide_trace.nodes[name]
                elbo = elbo - (kl_divergence(q["fn"], site["fn"]) * q["scale"]).sum()
        g = guide_trace.nodes[self.codes_site]
        z_e, codebook = g["infer"]["vq_encoding"], g["infer"]["vq_codebook"]
        e = model_trace.nodes[self.quantized_site]["infer"]["vq_vectors"]
        aux = self._aux(z_e, e, codebook).sum() * data_scale
        return elbo, aux, (codebook, z_e, g["value"])

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO (no codebook or commitment terms), without gradients."""
        with torch.no_grad():
            elbo, _, _ = self._terms(model, guide, args, kwargs)
        return -float(elbo)

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The negative ELBO plus the codebook and commitment terms, differentiable."""
        self._apply_pending()
        elbo, aux, (codebook, z_e, codes) = self._terms(model, guide, args, kwargs)
        if torch.is_grad_enabled():
            self._record(codebook, z_e.detach(), codes.detach())
        return -elbo + aux

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Backpropagate the loss (Pyro's ``SVI`` interface) and return its value."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())

    # --------------------------------------------------------------- codebook upkeep
    def _record(self, codebook: Any, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes.reshape(-1), minlength=codebook.num_codes)
        if self._counts is None or self._codebook is not codebook:
            self._counts, self._codebook = torch.zeros_like(counts), codebook
        self._counts += counts
        self._pool = z_e.reshape(-1, z_e.shape[-1])
        if self.init_from_data and not bool(codebook.initialised):
            self._pending_init = codebook
        if codebook.ema:
            # Applied before the next step: the codebook must not change in place while
            # this step's graph (which may hold it) is still to be differentiated.
            self._pending = (codebook, z_e, codes)

    def _apply_pending(self) -> None:
        if self._pending_init is not None and self._pool is not None:
            self._pending_init.initialise(self._pool)
            self._pending_init = None
        if self._pending is not None:
            codebook, z_e, codes = self._pending
            codebook.ema_update(z_e, codes)
            self._pending = None

    def end_epoch(self) -> dict[str, float]:
        """Codebook statistics of the epoch's training steps, then dead-code upkeep.

        Returns ``codebook_usage`` (the share of codes used at least once),
        ``perplexity`` (exp of the entropy of the codes' frequencies: K when all are used
        equally, 1 when one code takes everything) and ``dead_codes_reinitialised``.
        """
        self._apply_pending()
        if self._counts is None:
            return {}
        counts = self._counts.double()
        freq = counts / counts.sum()
        entropy = -(freq * freq.clamp_min(1e-300).log()).sum()
        dead = self._counts == 0
        reinit = 0
        if self.reinit_dead and self._pool is not None:
            reinit = self._codebook.reinitialise(dead, self._pool)
        stats = {
            "codebook_usage": float((~dead).double().mean()),
            "perplexity": math.exp(float(entropy)),
            "dead_codes_reinitialised": float(reinit),
        }
        self._counts, self._pool = None, None
        return stats


class VQ_ELBO(_VQBase):
    """The classic VQ-VAE objective for the hard posterior, as a Pyro ELBO.

    Parameters
    ----------
    beta
        Weight of the commitment term (0.25 in van den Oord et al. 2017).
    reinit_dead
        Re-initialise codes unused during an epoch from encoder outputs.
    init_from_data
        Set a fresh codebook to encoder outputs of the first training batch.
    codes_site, quantized_site
        The names of the code site and of the deterministic site of the codebook vectors.
    """

    def __init__(self, beta: float = 0.25, *, reinit_dead: bool = True, **kwargs: Any) -> None:
        super().__init__(reinit_dead=reinit_dead, **kwargs)
        self.beta = float(beta)

    def _replacement(self, site: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        z_e = site["infer"]["vq_encoding"]
        return lambda e: z_e + (e - z_e).detach()

    def _aux(self, z_e: torch.Tensor, e: torch.Tensor, codebook: Any) -> torch.Tensor:
        commitment = self.beta * (z_e - e.detach()).pow(2).sum(-1)
        if codebook.ema:
            return commitment
        return commitment + (z_e.detach() - e).pow(2).sum(-1)

    def __repr__(self) -> str:
        return f"VQ_ELBO(beta={self.beta}, reinit_dead={self.reinit_dead})"


class SoftVQ_ELBO(_VQBase):
    """The ELBO of the soft posterior with relaxed straight-through categorical codes.

    Parameters
    ----------
    temperature
        Temperature of the relaxed categorical (its gradient's bias and variance trade).
    reinit_dead, init_from_data, codes_site, quantized_site
        As in :class:`VQ_ELBO`.
    """

    def __init__(
        self, temperature: float = 0.5, *, reinit_dead: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(reinit_dead=reinit_dead, **kwargs)
        self.temperature = float(temperature)

    def _guide_fn(self, guide: Callable) -> Callable:
        return _Relaxed(self.codes_site, self.temperature)(guide)

    def _replacement(self, site: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        onehot = site["infer"]["vq_onehot"]
        weight = site["infer"]["vq_codebook"].weight
        return lambda e: onehot.to(weight.dtype) @ weight

    def __repr__(self) -> str:
        return f"SoftVQ_ELBO(temperature={self.temperature}, reinit_dead={self.reinit_dead})"


def vq_elbo(vq: Any, **kwargs: Any) -> _VQBase:
    """The objective that fits ``vq``'s posterior: :class:`VQ_ELBO` for ``"hard"``,
    :class:`SoftVQ_ELBO` for ``"soft"`` (keyword arguments go to its constructor)."""
    return (VQ_ELBO if vq.posterior == "hard" else SoftVQ_ELBO)(**kwargs)
