"""The codebook of a vector-quantised VAE: K vectors e_k, distances to them, and their upkeep.

The codebook is trained either by gradient (the codebook term of the VQ-VAE objective) or,
with ``ema=True``, by exponential moving averages of the encoder outputs assigned to each
code (van den Oord et al. 2017, appendix; Razavi et al. 2019), in which case its vectors
take no gradient. Codes that no encoder output chose for a while ("dead" codes) can be
re-initialised from encoder outputs (:meth:`Codebook.reinitialise`), as in Dhariwal et al.
(2020, Jukebox).

References
----------
van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning",
NeurIPS.
Roy, Vaswani, Neelakantan & Parmar (2018), "Theory and Experiments on Vector Quantized
Autoencoders", arXiv:1805.11063.
Razavi, van den Oord & Vinyals (2019), "Generating Diverse High-Fidelity Images with
VQ-VAE-2", NeurIPS.
Dhariwal et al. (2020), "Jukebox: A Generative Model for Music", arXiv:2005.00341.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Codebook"]


class Codebook(nn.Module):
    """``num_codes`` vectors of size ``code_dim``.

    Parameters
    ----------
    num_codes, code_dim
        K and D.
    ema
        Update the vectors by exponential moving averages (no gradient) instead of by the
        codebook term of the objective.
    decay
        The moving averages' decay.
    """

    def __init__(self, num_codes: int, code_dim: int, *, ema: bool = False, decay: float = 0.99):
        super().__init__()
        if num_codes < 2 or code_dim < 1:
            raise ValueError(
                f"a codebook needs num_codes >= 2 and code_dim >= 1, got {num_codes}, {code_dim}"
            )
        self.num_codes, self.code_dim = int(num_codes), int(code_dim)
        self.ema, self.decay = bool(ema), float(decay)
        init = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if self.ema:
            # Moving averages set the vectors, not gradients: a buffer, so that neither an
            # optimizer nor Pyro's param store (under pyro.infer.SVI) takes it for a parameter.
            self.register_buffer("weight", init.clone())
        else:
            self.weight = nn.Parameter(init)
        # Whether the vectors were set from encoder outputs yet (see ``initialise``).
        self.register_buffer("initialised", torch.tensor(False))
        if self.ema:
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", init.clone())

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances ‖z − e_k‖², shape ``(..., K)`` for ``z`` of shape ``(..., D)``."""
        w = self.weight
        return (z * z).sum(-1, keepdim=True) - 2.0 * z @ w.T + (w * w).sum(-1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """The vectors e_k of integer ``codes``, shape ``(*codes.shape, D)``."""
        return self.weight[codes]

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """Move the vectors towards the mean of the encoder outputs ``z`` assigned to them.

        Laplace smoothing of the counts keeps codes without assignments finite.
        """
        z = z.reshape(-1, self.code_dim).to(self.weight.dtype)
        onehot = nn.functional.one_hot(codes.reshape(-1), self.num_codes).to(z.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.T @ z, alpha=1 - self.decay)
        n, eps = self.cluster_size.sum(), 1e-5
        size = (self.cluster_size + eps) / (n + self.num_codes * eps) * n
        self.weight.copy_(self.embed_sum / size.unsqueeze(-1))

    @torch.no_grad()
    def initialise(self, candidates: torch.Tensor) -> None:
        """Set every vector to a random encoder output (data-dependent initialisation).

        Vectors drawn from a small box around 0 leave most codes unused while the encoder's
        outputs are elsewhere; starting them at encoder outputs puts every code in use.
        """
        self.reinitialise(torch.ones(self.num_codes, dtype=torch.bool), candidates)
        self.initialised.fill_(True)

    @torch.no_grad()
    def reinitialise(self, dead: torch.Tensor, candidates: torch.Tensor) -> int:
        """Set the ``dead`` codes (a boolean mask) to randomly chosen rows of ``candidates``.

        Returns the number of codes re-initialised.
        """
        idx = dead.nonzero().squeeze(-1)
        pool = candidates.reshape(-1, self.code_dim).to(self.weight.dtype)
        if len(idx) == 0 or len(pool) == 0:
            return 0
        pick = torch.randint(len(pool), (len(idx),), device=pool.device)
        self.weight[idx] = pool[pick]
        if self.ema:
            self.cluster_size[idx] = 1.0
            self.embed_sum[idx] = pool[pick]
        return int(len(idx))
