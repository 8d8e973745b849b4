"""The vector-quantised VAE as a pair of Pyro programs with discrete latent sites.

``VQVAE.model(x)`` draws a code index per grid position, ``k_i ~ Categorical(π_i)``
(site ``"codes"``, inside ``pyro.plate("data", dim=-1)`` and ``pyro.plate("grid",
dim=-2)``, so its value has shape ``(G, B)``), looks up the codebook vectors e[k]
(recorded as the deterministic site ``"z_q"``) and draws x from the likelihood of the
decoder applied to them. ``VQVAE.guide(x)`` draws the codes from a categorical over the
codebook with logits −‖z_e(x)_i − e_k‖² / (2σ²), σ learned (``posterior="soft"``, as in
SQ-VAE), or puts all its mass on the nearest code (``posterior="hard"``, the classic
VQ-VAE, whose KL to a uniform prior is log K per position). The model nests two plates:
estimators take ``max_plate_nesting=2`` (the model's :attr:`VQVAE.max_plate_nesting`).

The guide's ``"codes"`` site carries the encoder output ``z_e`` and the codebook in its
``infer`` dict (keys ``"vq_encoding"``, ``"vq_codebook"``), which the VQ objectives of
:mod:`ppvae.inference.vq_objectives` read for their straight-through gradients and
codebook terms; Pyro's own objectives ignore them.

References
----------
van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning",
NeurIPS.
Takida et al. (2022), "SQ-VAE: Variational Bayes on Discrete Representation with
Self-annealed Stochastic Quantization", ICML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import nn

from ppvae.models.programs import ProgramModule, local_params_method, program
from ppvae.models.registry import LIKELIHOODS, build
from ppvae.models.vae import _input_scale
from ppvae.models.vq_codebook import Codebook
from ppvae.models.vq_networks import (
    GridConvDecoder,
    GridConvEncoder,
    GridMLPDecoder,
    GridMLPEncoder,
)
from ppvae.models.vq_prior import PixelCNNPrior

__all__ = ["VQVAE", "POSTERIORS", "CODE_PRIORS"]

POSTERIORS = ("hard", "soft")
CODE_PRIORS = ("uniform", "learned")
# Logit of the codes the hard posterior excludes: exp(-1e4) is 0 in every float type, so
# log q(k*) is exactly 0 and no other code is ever drawn.
_EXCLUDED = -1.0e4


class _NearestCode(dist.Categorical):
    """The hard posterior: a categorical whose logits put all mass on one code.

    Sampling it is taking that code (the argmax), which skips a multinomial draw per
    position; every density is the categorical's.
    """

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        return self.logits.argmax(-1).expand(shape)


def _grid(grid: int | Sequence[int]) -> tuple[int, ...]:
    shape = (int(grid),) if isinstance(grid, int) else tuple(int(g) for g in grid)
    if not shape or min(shape) < 1:
        raise ValueError(f"grid must be a positive int or a tuple of them, got {grid!r}")
    return shape


class VQVAE(ProgramModule):
    """Vector-quantised VAE p(k) p(x | e[k]) with guide q(k | x) over a grid of codes.

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    num_codes, code_dim
        Codebook size K and vector size D.
    grid
        Shape of the code grid (G = its product positions), e.g. ``(7, 7)`` for the
        convolutional networks, or an int for the MLP path.
    likelihood
        A registered likelihood name or a :class:`~ppvae.models.likelihoods.Likelihood`.
    encoder, decoder
        ``"mlp"``, ``"conv"`` (28×28 images, 7×7 grid) or modules mapping data to
        ``(..., G, D)`` and ``(..., G, D)`` to the likelihood's parameters.
    hidden, activation
        Widths and activation of the MLP networks.
    posterior
        ``"hard"`` (nearest code) or ``"soft"`` (categorical with learned σ).
    prior
        ``"uniform"`` over codes, or ``"learned"``: the model's p(k) is a categorical per
        grid position, set from training codes by :meth:`fit_code_prior` (uniform until
        then), and :attr:`code_prior`, a :class:`~ppvae.models.vq_prior.PixelCNNPrior`
        trained afterwards on the same codes (``ppvae.fit(vq.code_prior, codes)``), is
        what :meth:`sample` draws codes from.
    prior_channels
        Width of the autoregressive prior's layers (``prior="learned"``).
    ema, decay
        Codebook updated by moving averages instead of gradients (:class:`Codebook`).
    init_sigma
        Initial σ of the soft posterior.
    likelihood_kwargs
        Extra constructor arguments of a named likelihood.
    """

    max_plate_nesting = 2
    num_labels = None  # not conditional

    def __init__(
        self,
        event_shape: Sequence[int],
        *,
        num_codes: int = 64,
        code_dim: int = 16,
        grid: int | Sequence[int] = 4,
        likelihood: str | nn.Module = "bernoulli",
        encoder: str | nn.Module = "mlp",
        decoder: str | nn.Module = "mlp",
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        posterior: str = "hard",
        prior: str = "uniform",
        ema: bool = False,
        decay: float = 0.99,
        init_sigma: float = 1.0,
        prior_channels: int = 64,
        likelihood_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {list(POSTERIORS)}, got {posterior!r}")
        if prior not in CODE_PRIORS:
            raise ValueError(f"prior must be one of {list(CODE_PRIORS)}, got {prior!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.grid = _grid(grid)
        self.num_positions = math.prod(self.grid)
        self.posterior, self.prior_kind = posterior, prior
        self.config: dict[str, Any] = dict(
            event_shape=list(self.event_shape),
            num_codes=int(num_codes),
            code_dim=int(code_dim),
            grid=list(self.grid),
            likelihood=likelihood,
            encoder=encoder,
            decoder=decoder,
            hidden=list(hidden),
            activation=activation,
            posterior=posterior,
            prior=prior,
            ema=bool(ema),
            decay=float(decay),
            init_sigma=float(init_sigma),
            prior_channels=int(prior_channels),
            likelihood_kwargs=dict(likelihood_kwargs or {}),
        )
        self.likelihood = build(
            LIKELIHOODS, likelihood, event_shape=self.event_shape, **(likelihood_kwargs or {})
        )
        self.codebook = Codebook(num_codes, code_dim, ema=ema, decay=decay)
        self.encoder = self._encoder(encoder, hidden, activation)
        self.decoder = self._decoder(decoder, hidden, activation)
        if posterior == "soft":
            self.sigma = PyroParam(torch.tensor(float(init_sigma)), constraints.positive)
        # log π: per grid position; zeros (uniform) until fit_code_prior sets it.
        self.register_buffer("prior_logits", torch.zeros(self.num_positions, num_codes))
        if prior == "learned":
            self.code_prior = PixelCNNPrior(self.grid, num_codes, channels=prior_channels)

    def _encoder(self, spec: str | nn.Module, hidden: Sequence[int], act: str) -> nn.Module:
        d, g = self.config["code_dim"], self.num_positions
        scale = _input_scale(self.likelihood)
        if spec == "mlp":
            return GridMLPEncoder(self.event_shape, g, d, hidden, act, scale)
        if spec == "conv":
            self._need_conv_grid()
            return GridConvEncoder(self.event_shape, d, activation=act, input_scale=scale)
        if isinstance(spec, nn.Module):
            return spec
        raise ValueError(f"unknown encoder {spec!r}: use 'mlp', 'conv' or a module")

    def _decoder(self, spec: str | nn.Module, hidden: Sequence[int], act: str) -> nn.Module:
        d, g, out = self.config["code_dim"], self.num_positions, self.likelihood.param_shape()
        if spec == "mlp":
            return GridMLPDecoder(g, d, out, tuple(reversed(hidden)), act)
        if spec == "conv":
            self._need_conv_grid()
            return GridConvDecoder(d, out, activation=act)
        if isinstance(spec, nn.Module):
            return spec
        raise ValueError(f"unknown decoder {spec!r}: use 'mlp', 'conv' or a module")

    def _need_conv_grid(self) -> None:
        if self.grid not in ((7, 7), (49,)):
            raise ValueError(
                f"the convolutional networks use a 7×7 code grid, got grid={self.grid}: "
                "pass grid=(7, 7) or use the MLP networks"
            )

    @property
    def num_codes(self) -> int:
        return self.codebook.num_codes

    # ------------------------------------------------------------------ programs
    def _plates(self, x: torch.Tensor, num_data: int | None) -> tuple[pyro.plate, pyro.plate]:
        batch = x.shape[0]
        if num_data is None or num_data == batch:
            data = pyro.plate("data", batch, dim=-1)
        else:
            index = torch.arange(batch, device=x.device)
            data = pyro.plate("data", num_data, subsample=index, dim=-1)
        return data, pyro.plate("grid", self.num_positions, dim=-2)

    @program
    def model(self, x: torch.Tensor, *, num_data: int | None = None) -> torch.Tensor:
        """Generative program p(k) p(x | e[k]); returns the codes, shape ``(G, B)``."""
        data, grid = self._plates(x, num_data)
        with data:
            with grid:
                codes = pyro.sample("codes", dist.Categorical(logits=self.prior_logits[:, None]))
                z_q = pyro.deterministic("z_q", self.codebook(codes), event_dim=1)
            # (..., G, B, D) -> (..., 1, B, G, D): the decoder reads a datapoint's whole grid,
            # and x keeps a size-1 slot at the grid plate's dim so enumerated dims align.
            params = self.decoder(z_q.transpose(-2, -3).unsqueeze(-4))
            pyro.sample("x", self.likelihood(params), obs=x)
        return codes

    @program
    def guide(self, x: torch.Tensor, *, num_data: int | None = None) -> torch.Tensor:
        """Variational program q(k | x); returns the codes, shape ``(G, B)``."""
        z_e = self.encoder(x).transpose(0, 1)  # (G, B, D), the layout of the plates
        data, grid = self._plates(x, num_data)
        with data, grid:
            infer = {"vq_encoding": z_e, "vq_codebook": self.codebook}
            family = _NearestCode if self.posterior == "hard" else dist.Categorical
            return pyro.sample("codes", family(logits=self._logits(z_e)), infer=infer)

    def _logits(self, z_e: torch.Tensor) -> torch.Tensor:
        d2 = self.codebook.distances(z_e)
        if self.posterior == "soft":
            return -d2 / (2.0 * self.sigma**2)
        nearest = nn.functional.one_hot(d2.argmin(-1), self.num_codes).bool()
        return torch.where(nearest, d2.new_zeros(()), d2.new_full((), _EXCLUDED))

    # ------------------------------------------------------------------ tools
    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Raise ``ValueError`` when ``x`` does not fit this model (labels are refused)."""
        if y is not None:
            raise ValueError("the VQ-VAE is not conditional: pass no labels")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"data has datapoint shape {tuple(x.shape[1:])} but the VQ-VAE expects "
                f"{self.event_shape}: build it with event_shape=dataset.event_shape"
            )
        if hasattr(self.likelihood, "check_support"):
            self.likelihood.check_support(x)

    @local_params_method
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable code of each grid position under q(k | x), shape ``(B, G)``."""
        return self.codebook.distances(self.encoder(x)).argmin(-1)

    @local_params_method
    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | e[k]) for codes of shape ``(n, G)``."""
        params = self.decoder(self.codebook(codes))
        mean = getattr(self.likelihood, "mean", None)
        return mean(params) if mean is not None else self.likelihood(params).mean

    @local_params_method
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | e[k]) at the most probable codes of q(k | x)."""
        return self.decode(self.encode(x))

    @local_params_method
    @torch.no_grad()
    def sample_codes(self, n: int, *, autoregressive: bool | None = None) -> torch.Tensor:
        """``n`` code grids ``(n, G)``: from :attr:`code_prior` (``prior="learned"``, by
        default) or from the model's per-position p(k)."""
        if autoregressive is None:
            autoregressive = self.prior_kind == "learned"
        if autoregressive:
            return self.code_prior.sample(n)
        return dist.Categorical(logits=self.prior_logits).sample((n,))

    @local_params_method
    @torch.no_grad()
    def sample(self, n: int, y: None = None, *, autoregressive: bool | None = None) -> torch.Tensor:
        """``n`` datapoints (the likelihood's mean) decoded from :meth:`sample_codes`."""
        if y is not None:
            raise ValueError("labels were given but this VQ-VAE is not conditional")
        return self.decode(self.sample_codes(n, autoregressive=autoregressive))

    @local_params_method
    @torch.no_grad()
    def log_joint_at_codes(
        self,
        x: torch.Tensor,
        codes: torch.Tensor | None = None,
        code_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """log p(x | e[k]) + log p(k) per datapoint, at ``codes`` (default: the nearest).

        At the nearest codes this is the hard posterior's ELBO, a lower bound on log p(x).
        ``code_log_prob`` replaces the model's per-position prior by another prior over
        whole grids (e.g. :meth:`ppvae.models.vq_prior.PixelCNNPrior.log_prob`), giving
        the bound under that prior.
        """
        codes = self.encode(x) if codes is None else codes
        params = self.decoder(self.codebook(codes))
        log_px = self.likelihood(params).log_prob(x)
        if code_log_prob is not None:
            return log_px + code_log_prob(codes)
        prior = dist.Categorical(logits=self.prior_logits)
        return log_px + prior.log_prob(codes).sum(-1)

    @local_params_method
    @torch.no_grad()
    def fit_code_prior(self, codes: torch.Tensor, pseudo_count: float = 1.0) -> None:
        """Set the per-position prior to the codes' frequencies (``prior="learned"``).

        ``codes`` has shape ``(N, G)``; ``pseudo_count`` is added to every count so that
        unseen codes keep a positive probability (log p(x) stays finite).
        """
        if self.prior_kind != "learned":
            raise ValueError("fit_code_prior needs a VQVAE built with prior='learned'")
        onehot = nn.functional.one_hot(codes.long(), self.num_codes).to(self.prior_logits)
        counts = onehot.sum(0) + pseudo_count
        self.prior_logits.copy_(counts.log() - counts.sum(-1, keepdim=True).log())
