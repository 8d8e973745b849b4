"""Likelihoods for 8-bit images: integer intensity levels ``0..num_values-1`` per pixel."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch

from ppvae.models.distributions import DiscretizedLogistic
from ppvae.models.likelihoods import Likelihood

__all__ = ["CategoricalLikelihood", "DiscretizedLogisticLikelihood"]

_8BIT_FIX = (
    "multiply images in [0, 1] by 255 and round (x.mul(255).round()), "
    "or use likelihood='continuous_bernoulli'"
)


class _IntegerLevels(Likelihood):
    """Shared support of the 8-bit image likelihoods: integers ``0..num_values-1``."""

    def __init__(self, event_shape: Sequence[int], num_values: int = 256) -> None:
        super().__init__(event_shape)
        if num_values < 2:
            raise ValueError(f"num_values must be at least 2, got {num_values}")
        self.num_values = int(num_values)

    def value_range(self) -> tuple[float, float]:
        return (0.0, float(self.num_values - 1))

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        top = self.num_values - 1
        if not ((x >= 0) & (x <= top) & (x == x.round())).all():
            self._fail(f"values are not integers in 0..{top}", x, _8BIT_FIX)


class CategoricalLikelihood(_IntegerLevels):
    """A free categorical distribution over the ``num_values`` intensity levels per pixel.

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    num_values
        Number of intensity levels (256 for 8-bit images).

    References
    ----------
    van den Oord, Kalchbrenner & Kavukcuoglu (2016), "Pixel Recurrent Neural
    Networks", ICML (the 256-way softmax per pixel).
    """

    name = "categorical"

    def __init__(self, event_shape: Sequence[int], num_values: int = 256) -> None:
        super().__init__(event_shape, num_values)
        self.params_per_feature = self.num_values

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Categorical(logits=params, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """Expected intensity Σ_k k p_k (a categorical has no mean of its own)."""
        levels = torch.arange(self.num_values, dtype=params.dtype, device=params.device)
        return params.softmax(-1) @ levels


class DiscretizedLogisticLikelihood(_IntegerLevels):
    """A logistic per pixel discretised onto the intensity levels (PixelCNN++, one component).

    The decoder outputs a location on the rescaled axis [-1, 1] and a log-scale per
    pixel; the log-scale is clamped below at ``min_log_scale`` as in PixelCNN++,
    which keeps the density finite once a pixel's mass sits in a single bin. (A clamp
    of a network output, not a constrained parameter: below the clamp the gradient is
    zero, which is the published recipe.)

    Parameters
    ----------
    event_shape
        Shape of one datapoint.
    num_values
        Number of intensity levels (256 for 8-bit images).
    min_log_scale
        Lower clamp of the log-scale.

    References
    ----------
    Salimans, Karpathy, Chen & Kingma (2017), "PixelCNN++: Improving the PixelCNN with
    Discretized Logistic Mixture Likelihood and Other Modifications", ICLR.
    """

    name = "discretized_logistic"
    params_per_feature = 2

    def __init__(
        self, event_shape: Sequence[int], num_values: int = 256, min_log_scale: float = -7.0
    ) -> None:
        super().__init__(event_shape, num_values)
        self.min_log_scale = float(min_log_scale)

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        loc, log_scale = params.unbind(-1)
        scale = log_scale.clamp(min=self.min_log_scale).exp()
        return DiscretizedLogistic(loc, scale, self.num_values, validate_args=False)
