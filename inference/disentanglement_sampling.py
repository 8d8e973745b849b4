"""The sampling and information pieces the disentanglement scores share (numpy, scikit-learn).

Every score works on a table of codes (a representation of each datapoint, e.g. the guide's
mean) and the integer factor indices of the same rows. The reference implementation
(disentanglement_lib, Locatello et al. 2019) draws fresh observations from the ground-truth
simulator; here the table plays the simulator: a datapoint drawn "with factor k fixed to v"
is a row drawn uniformly from the rows whose factor k equals v (:class:`FactorIndex`). When
the table holds every combination of factor values once, as dsprites-lite does, this is
exactly the reference's sampling (the other factors uniform and independent); on a subset
of combinations it is the same sampling restricted to the rows at hand.

References
----------
Locatello et al. (2019), "Challenging Common Assumptions in the Unsupervised Learning of
Disentangled Representations", ICML (google-research/disentanglement_lib).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mutual_info_score

__all__ = ["FactorIndex", "discretize", "factor_entropies", "mutual_information", "split_rows"]


def split_rows(
    n: int, num_train: int, num_test: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test rows: the requested sizes when the table has enough
    rows, otherwise all rows split in the proportion num_train : num_test."""
    perm = rng.permutation(n)
    if n < num_train + num_test:
        num_train = max(1, round(n * num_train / (num_train + num_test)))
        num_test = n - num_train
    return perm[:num_train], perm[num_train : num_train + num_test]


def discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Each column binned into ``num_bins`` equal-width bins over its range (the reference's
    ``_histogram_discretize``); a constant column falls into one bin."""
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], num_bins)[1][:-1]
        out[:, d] = np.digitize(codes[:, d], edges)
    return out


def mutual_information(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Plug-in mutual information (nats) between each binned code and each factor, ``(D, K)``.

    The estimator of the reference's MIG: codes binned by :func:`discretize`, then the
    empirical joint histogram (scikit-learn's ``mutual_info_score``). It is biased upwards
    by roughly (bins − 1)(values − 1) / (2 N) nats for independent pairs.
    """
    binned = discretize(codes, num_bins)
    return np.array(
        [
            [mutual_info_score(factors[:, k], binned[:, d]) for k in range(factors.shape[1])]
            for d in range(binned.shape[1])
        ]
    )


def factor_entropies(factors: np.ndarray) -> np.ndarray:
    """Empirical entropy (nats) of each factor, ``(K,)``."""
    return np.array([mutual_info_score(f, f) for f in factors.T])


class FactorIndex:
    """Rows grouped by the value of each factor, to draw rows with one factor fixed.

    Parameters
    ----------
    factors
        Integer factor indices ``(N, K)``.
    """

    def __init__(self, factors: np.ndarray) -> None:
        self.factors = factors
        self.num_factors = factors.shape[1]
        orders, starts, counts = [], [], []
        offset = 0
        for k in range(self.num_factors):
            order = np.argsort(factors[:, k], kind="stable")
            values, first, count = np.unique(
                factors[order, k], return_index=True, return_counts=True
            )
            lookup_start = np.zeros(values.max() + 1, np.int64)
            lookup_count = np.zeros(values.max() + 1, np.int64)
            lookup_start[values], lookup_count[values] = first + offset, count
            orders.append(order)
            starts.append(lookup_start)
            counts.append(lookup_count)
            offset += len(order)
        self._order = np.concatenate(orders)
        width = max(len(s) for s in starts)
        self._start = np.stack([np.pad(s, (0, width - len(s))) for s in starts])
        self._count = np.stack([np.pad(c, (0, width - len(c))) for c in counts])

    def matching(
        self, rows: np.ndarray, factor: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """For each ``rows[i, j]``, a uniformly drawn row sharing its value of ``factor[i]``.

        ``rows`` is ``(n, m)`` and ``factor`` ``(n,)``; returns ``(n, m)`` row indices.
        """
        k = np.broadcast_to(factor[:, None], rows.shape)
        value = self.factors[rows, k]
        start, count = self._start[k, value], self._count[k, value]
        pick = np.floor(rng.random(rows.shape) * count).astype(np.int64)
        return self._order[start + pick]
