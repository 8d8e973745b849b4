"""A lower-bounded constraint reached through a softplus, for scales and rates.

``softplus_greater_than(lower)`` is the interval ``(lower, ∞)``; ``transform_to`` maps an
unconstrained value ``u`` onto it as ``lower + softplus(u)``. Components use it in two
ways: learned parameters are declared as ``PyroParam(init, constraint=...)`` (the
unconstrained value is stored, the constrained one read), and network outputs go
through ``transform_to(constraint)``.

Softplus rather than the exp of ``constraints.greater_than``: the value then grows
linearly, not exponentially, with its unconstrained coordinate, so one large network
output early in training does not produce an enormous scale or gradient. The lower
bound keeps densities finite where the softplus underflows (a constant feature under a
Gaussian likelihood, a count under a Poisson rate that rounds to zero).
"""

from __future__ import annotations

from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    SoftplusTransform,
    Transform,
)

__all__ = ["softplus_greater_than"]


class _SoftplusGreaterThan(constraints.greater_than):
    """The interval ``(lower_bound, ∞)``, bijected to the reals by ``lower_bound + softplus``."""


def softplus_greater_than(lower_bound: float) -> constraints.Constraint:
    """The constraint ``x > lower_bound``, reached from the reals by ``lower_bound + softplus(u)``.

    Parameters
    ----------
    lower_bound
        The (excluded) lower bound.

    Returns
    -------
    torch.distributions.constraints.Constraint
        A constraint that ``transform_to`` and ``biject_to`` (hence ``PyroParam``) map with
        ``softplus`` followed by a shift.
    """
    return _SoftplusGreaterThan(float(lower_bound))


# Registered for our own constraint class only: no existing mapping of torch or Pyro changes.
@biject_to.register(_SoftplusGreaterThan)
@transform_to.register(_SoftplusGreaterThan)
def _softplus_above(constraint: _SoftplusGreaterThan) -> Transform:
    return ComposeTransform([SoftplusTransform(), AffineTransform(constraint.lower_bound, 1.0)])
