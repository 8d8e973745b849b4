"""The linear-Gaussian latent variable model (probabilistic PCA) with its exact answers.

z ~ N(0, I_k), x | z ~ N(W z + b, σ² I_d). Its marginal likelihood, posterior and
maximum-likelihood fit are all in closed form, which makes it the reference against
which ppvae's estimators are tested:

* log p(x) = log N(x; b, W Wᵀ + σ² I)                      (:meth:`exact_log_likelihood`)
* p(z | x) = N(M⁻¹ Wᵀ (x − b), σ² M⁻¹) with M = Wᵀ W + σ² I     (:meth:`posterior`)
* the maximum-likelihood W, b, σ² from the eigen-decomposition of the sample covariance
  (:func:`ppca_max_log_likelihood`).

References
----------
Tipping & Bishop (1999), "Probabilistic Principal Component Analysis", JRSS B 61(3).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch import nn
from torch.distributions import constraints

from ppvae.models.programs import ProgramModule, program

__all__ = ["LinearGaussianModel", "PosteriorGuide", "LinearGuide", "ppca_max_log_likelihood"]


def _plate(x: torch.Tensor, num_data: int | None) -> pyro.plate:
    batch = x.shape[0]
    if num_data is None or num_data == batch:
        return pyro.plate("data", batch, dim=-1)
    return pyro.plate("data", num_data, subsample=torch.arange(batch, device=x.device), dim=-1)


class LinearGaussianModel(ProgramModule):
    """Probabilistic PCA as a Pyro program with site names ``"z"`` and ``"x"``.

    Parameters
    ----------
    data_dim, latent_dim
        Sizes of x and z.
    weight, bias, noise_scale
        Initial values of W (d×k), b (d,) and σ; random W and zero b by default.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        *,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.data_dim, self.latent_dim = int(data_dim), int(latent_dim)
        # The sizes rebuild the model from a checkpoint; the initial values do not matter
        # there (the saved state replaces them).
        self.config = {"data_dim": self.data_dim, "latent_dim": self.latent_dim}
        if weight is None:
            weight = torch.randn(data_dim, latent_dim) / latent_dim**0.5
        self.weight = nn.Parameter(torch.as_tensor(weight).clone())
        self.bias = nn.Parameter(
            torch.zeros(data_dim) if bias is None else torch.as_tensor(bias).clone()
        )
        # σ, stored as log σ (the exp transform of constraints.positive).
        self.noise_scale = PyroParam(
            torch.tensor(float(noise_scale)), constraint=constraints.positive
        )

    @program
    def model(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        zeros = self.weight.new_zeros(self.latent_dim)
        with _plate(x, num_data):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            loc = z @ self.weight.T + self.bias
            pyro.sample("x", dist.Normal(loc, self.noise_scale).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        """The exact marginal N(b, W Wᵀ + σ² I) of x."""
        eye = torch.eye(self.data_dim, dtype=self.weight.dtype, device=self.weight.device)
        cov = self.weight @ self.weight.T + self.noise_scale**2 * eye
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per datapoint, in closed form."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """The exact posterior p(z | x) per datapoint."""
        w, s2 = self.weight, self.noise_scale**2
        eye = torch.eye(self.latent_dim, dtype=w.dtype, device=w.device)
        m = w.T @ w + s2 * eye
        loc = torch.linalg.solve(m, w.T @ (x - self.bias).T).T
        return dist.MultivariateNormal(loc, covariance_matrix=s2 * torch.linalg.inv(m))


class PosteriorGuide(ProgramModule):
    """The exact posterior of a :class:`LinearGaussianModel`, optionally distorted.

    Parameters
    ----------
    model
        The model whose posterior is used (read at every call, so it tracks training).
    scale_factor
        Multiplies the posterior's Cholesky factor: 1 is exact, < 1 under-dispersed
        (heavy importance weights), > 1 over-dispersed.
    shift
        Added to the posterior mean.
    """

    def __init__(
        self, model: LinearGaussianModel, scale_factor: float = 1.0, shift: float = 0.0
    ) -> None:
        super().__init__()
        self.__dict__["target"] = model  # a reference, not a submodule: no double parameters
        self.scale_factor, self.shift = float(scale_factor), float(shift)

    def forward(self, x: torch.Tensor) -> dist.MultivariateNormal:
        post = self.target.posterior(x)
        return dist.MultivariateNormal(
            post.loc + self.shift, scale_tril=post.scale_tril * self.scale_factor
        )

    @program
    def guide(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        with _plate(x, num_data):
            pyro.sample("z", self(x))


class LinearGuide(ProgramModule):
    """Amortised guide N(A x + c, L Lᵀ): the family that contains pPCA's exact posterior.

    L is a ``PyroParam`` constrained to lower-Cholesky factors (exp on the diagonal),
    initialised at the identity.
    """

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.config = {"data_dim": int(data_dim), "latent_dim": int(latent_dim)}
        self.linear = nn.Linear(data_dim, latent_dim)
        self.scale_tril = PyroParam(torch.eye(latent_dim), constraint=constraints.lower_cholesky)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> dist.MultivariateNormal:
        return dist.MultivariateNormal(self.linear(x), scale_tril=self.scale_tril)

    @program
    def guide(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        with _plate(x, num_data):
            pyro.sample("z", self(x))


def ppca_max_log_likelihood(x: torch.Tensor, latent_dim: int) -> dict[str, torch.Tensor]:
    """Closed-form maximum-likelihood pPCA fit of data ``x`` (N, d).

    Returns ``weight``, ``bias``, ``noise_scale`` and ``log_likelihood``: the maximised
    total log-likelihood divided by N (nats per datapoint).
    """
    n, d = x.shape
    if not 0 < latent_dim < d:
        raise ValueError(f"latent_dim must lie in 1..{d - 1}, got {latent_dim}")
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / n
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    s2 = evals[latent_dim:].mean()
    weight = evecs[:, :latent_dim] * (evals[:latent_dim] - s2).clamp_min(0).sqrt()
    marginal = dist.MultivariateNormal(
        mean, covariance_matrix=weight @ weight.T + s2 * torch.eye(d, dtype=x.dtype)
    )
    return {
        "weight": weight,
        "bias": mean,
        "noise_scale": s2.sqrt(),
        "log_likelihood": marginal.log_prob(x).mean(),
    }
