"""β-weighting of the latent sites (β-VAE) and its linear warm-up schedule (KL annealing).

Multiplying the log-densities of every *latent* site by β, in the model and in the guide
alike, turns the single-sample ELBO

    E_q[log p(x | z)] + E_q[log p(z) − log q(z | x)] = E_q[log p(x | z)] − KL(q ‖ p)

into E_q[log p(x | z)] − β·KL(q ‖ p), whatever the objective (``Trace_ELBO`` or the analytic
KL of ``TraceMeanField_ELBO``) and whatever the latent structure (local sites inside the
data plate and global sites outside it are weighted alike).

References
----------
Higgins et al. (2017), "β-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework", ICLR.
Bowman et al. (2016), "Generating Sentences from a Continuous Space", CoNLL (KL annealing).
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message

__all__ = ["LatentScale", "kl_weight"]


class LatentScale(Messenger):
    """Multiply the ``scale`` of every non-observed sample site by ``beta``.

    Apply the same instance to the model and to the guide: then log p(z) and log q(z | x)
    are both weighted by β, so the ELBO's KL term is weighted by β while the
    reconstruction term E_q[log p(x | z)] is untouched: the objective is ELBO − (β − 1)·KL.
    For β > 1 it is still a lower bound on log p(x), looser by (β − 1)·KL; for β < 1 it
    exceeds the ELBO by (1 − β)·KL and is no bound at all (it can exceed log p(x)). Only
    β = 1 gives the ELBO itself, whose gap to log p(x) is KL(q(z | x) ‖ p(z | x)).

    ``beta`` may be changed between calls (as KL annealing does) without rebuilding the
    wrapped programs.

    Parameters
    ----------
    beta
        Non-negative weight of the latent sites.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"beta must be a non-negative number, got {value!r}")
        self._beta = float(value)

    def _process_message(self, msg: Message) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self._beta * msg["scale"]


def kl_weight(epoch: int, beta: float = 1.0, kl_anneal: int = 0) -> float:
    """The latent-site weight β used in ``epoch`` (numbered from 1).

    With ``kl_anneal = E > 0`` the weight rises linearly, β·e/E in epoch e, and stays at β
    from epoch E on; ``kl_anneal = 0`` uses β throughout. The first epoch thus starts at a
    small β/E rather than 0, which would leave the guide's spread unpenalised.

    References
    ----------
    Bowman et al. (2016), "Generating Sentences from a Continuous Space", CoNLL.
    """
    if epoch < 1:
        raise ValueError(f"epochs are numbered from 1, got {epoch}")
    if kl_anneal < 0:
        raise ValueError(f"kl_anneal must be a non-negative number of epochs, got {kl_anneal}")
    if kl_anneal == 0:
        return float(beta)
    return float(beta) * min(1.0, epoch / kl_anneal)
