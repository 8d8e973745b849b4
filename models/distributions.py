"""Distributions that neither Pyro nor PyTorch provides.

:class:`DiscretizedLogistic` is the per-pixel observation model of PixelCNN++
with a single mixture component: a logistic density on the rescaled intensity
axis, integrated over the bin of each integer value, with the two edge bins
absorbing the tails.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all
from torch.nn import functional as F

__all__ = ["DiscretizedLogistic"]


class DiscretizedLogistic(TorchDistribution):
    """Logistic distribution discretised onto the integers ``0..num_values-1``.

    An integer ``k`` is mapped to ``c_k = 2k / (num_values - 1) - 1`` in [-1, 1]; its
    probability is the logistic mass of ``[c_k - h, c_k + h]`` with half-width
    ``h = 1 / (num_values - 1)``, except that the mass below the first edge goes to
    ``0`` and the mass above the last edge to ``num_values - 1``. The probabilities
    therefore sum to one exactly.

    Parameters
    ----------
    loc
        Location of the logistic on the rescaled axis [-1, 1].
    scale
        Positive scale of the logistic on the rescaled axis.
    num_values
        Number of integer values (256 for 8-bit images).

    References
    ----------
    Salimans, Karpathy, Chen & Kingma (2017), "PixelCNN++: Improving the PixelCNN with
    Discretized Logistic Mixture Likelihood and Other Modifications", ICLR.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_enumerate_support = True

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        num_values: int = 256,
        validate_args: bool | None = None,
    ) -> None:
        if num_values < 2:
            raise ValueError(f"num_values must be at least 2, got {num_values}")
        self.loc, self.scale = broadcast_all(loc, scale)
        self.num_values = int(num_values)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.num_values - 1)

    def expand(self, batch_shape, _instance=None) -> DiscretizedLogistic:
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.num_values = self.num_values
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _half_width(self) -> float:
        return 1.0 / (self.num_values - 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k = value.to(self.loc.dtype)
        centred = (2.0 * self._half_width()) * k - 1.0 - self.loc
        upper = (centred + self._half_width()) / self.scale
        lower = (centred - self._half_width()) / self.scale
        # log(σ(u) − σ(l)) = log σ(u) + log σ(−l) + log(1 − e^{l−u}): no cancellation
        # in either tail, so no branch on the size of the bin mass is needed.
        log_upper = F.logsigmoid(upper)
        log_above_lower = F.logsigmoid(-lower)
        inner = log_upper + log_above_lower + torch.log(-torch.expm1(lower - upper))
        first = k <= 0
        last = k >= self.num_values - 1
        return torch.where(first, log_upper, torch.where(last, log_above_lower, inner))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            tiny = torch.finfo(self.loc.dtype).tiny
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(tiny, 1.0 - torch.finfo(self.loc.dtype).eps)
            x = self.loc.expand(shape) + self.scale.expand(shape) * (u.log() - (-u).log1p())
            k = torch.round((x + 1.0) / (2.0 * self._half_width()))
            return k.clamp(0, self.num_values - 1)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        values = torch.arange(self.num_values, dtype=self.loc.dtype, device=self.loc.device)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        if expand:
            values = values.expand((-1,) + tuple(self.batch_shape))
        return values

    def _probs(self) -> torch.Tensor:
        """Probabilities of all values, stacked on a trailing dimension."""
        values = torch.arange(self.num_values, dtype=self.loc.dtype, device=self.loc.device)
        lp = DiscretizedLogistic(
            self.loc.unsqueeze(-1), self.scale.unsqueeze(-1), self.num_values, False
        ).log_prob(values)
        return lp.exp()

    @property
    def mean(self) -> torch.Tensor:
        values = torch.arange(self.num_values, dtype=self.loc.dtype, device=self.loc.device)
        return self._probs() @ values

    @property
    def variance(self) -> torch.Tensor:
        values = torch.arange(self.num_values, dtype=self.loc.dtype, device=self.loc.device)
        probs = self._probs()
        mean = probs @ values
        return probs @ values.square() - mean.square()
