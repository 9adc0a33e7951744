r"""Trends across a sweep: rank correlations and log-binned means.

Chapter 7 asks whether a quantity rises or falls along a grid of settings, for
instance whether wider networks settle earlier
(:math:`\rho(\text{width}, \Delta_{100}) < 0`):

* :func:`trend` measures the monotone association of two columns of
  ``results.csv`` in each group of rows (Spearman's :math:`\rho`, with an exact
  p-value for few pairs) and returns one :class:`Trend` per group;
* :func:`log_bin_means` averages a curve over logarithmic bins of ``k``, so
  that the trend of a noisy :math:`\hat\Delta_k` shows on log-log axes.

Used by chapter 7 (``notebooks/07_experiments.ipynb``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lsutils._checks import check_choice, check_int_range
from lsutils.sweep import RESULT_COLUMNS
from lsutils.tables import _check_one_threshold, _sort_key

__all__ = [
    # rank correlation
    "EXACT_MAX_N",
    "Trend",
    "trend",
    # binned means
    "log_bin_means",
]


#: Largest number of pairs for which :func:`trend` enumerates all ``n!``
#: pairings to get an exact p-value (the t approximation is poor for few pairs:
#: it gives ``p ~ 1e-24`` to a perfect ordering of five points).
EXACT_MAX_N = 8


def _exact_spearman_pvalue(
    xs: NDArray[np.float64], ys: NDArray[np.float64], rho: float
) -> float:
    """Two-sided permutation p-value of Spearman's rho over all pairings."""
    from scipy.stats import rankdata

    rx = rankdata(xs) - (xs.size + 1) / 2
    perms = np.array(list(itertools.permutations(range(xs.size))))
    ry = rankdata(ys)[perms]
    ry = ry - ry.mean(axis=1, keepdims=True)
    r = (ry @ rx) / (np.linalg.norm(rx) * np.linalg.norm(ry, axis=1))
    return float(np.mean(np.abs(r) >= abs(rho) - 1e-12))


@dataclass(frozen=True)
class Trend:
    r"""Spearman rank correlation of ``y`` against ``x`` within one group.

    Attributes
    ----------
    group
        Values of the grouping columns, e.g. ``("mnist",)``.
    x, y
        Column names.
    xs, ys
        The pairs used (rows with a missing ``y`` are left out).
    rho, pvalue
        Spearman's :math:`\rho` and its two-sided p-value; ``nan`` when fewer
        than three pairs remain or one variable is constant. For at most
        :data:`EXACT_MAX_N` pairs the p-value is exact (share of all ``n!``
        pairings with :math:`|\rho|` at least as large); for more, scipy's
        t approximation. With ``n = 4`` no ordering reaches ``p < 0.05``
        (a perfect one gives ``1/12``); with ``n = 5`` only a perfect one
        does (``1/60``).
    """

    group: tuple[Any, ...]
    x: str
    y: str
    xs: NDArray[np.float64]
    ys: NDArray[np.float64]
    rho: float
    pvalue: float

    @property
    def n(self) -> int:
        """Number of pairs."""
        return int(self.xs.size)

    def verdict(self, expected_sign: int, alpha: float = 0.05) -> str:
        """Compare the sign of ``rho`` with a predicted sign.

        Parameters
        ----------
        expected_sign
            ``+1`` if ``y`` is predicted to grow with ``x``, ``-1`` if to fall.
        alpha
            Significance level of the two-sided test.

        Returns
        -------
        str
            ``"agrees"`` or ``"contradicts"`` (significant at ``alpha``),
            ``"same sign, not significant"``, ``"opposite sign, not
            significant"``, or ``"not enough data"``.

        Raises
        ------
        ValueError
            If ``expected_sign`` is not ``+1`` or ``-1``.
        """
        if expected_sign not in (1, -1):
            raise ValueError(
                f"expected_sign must be +1 or -1 (the predicted direction), got "
                f"{expected_sign!r}"
            )
        if math.isnan(self.rho) or self.rho == 0:
            return "not enough data" if math.isnan(self.rho) else "no association"
        same = (self.rho > 0) == (expected_sign > 0)
        if self.pvalue < alpha:
            return "agrees" if same else "contradicts"
        return ("same" if same else "opposite") + " sign, not significant"

    def describe(self) -> str:
        """One line, e.g. ``mnist: rho(width, delta_at_100) = -0.90 (p=0.04, n=5)``."""
        name = "/".join(map(str, self.group)) or "all"
        if math.isnan(self.rho):
            return f"{name}: {self.y} vs {self.x}: not enough data (n={self.n})"
        return (
            f"{name}: Spearman rho({self.x}, {self.y}) = {self.rho:+.2f} "
            f"(p = {self.pvalue:.2g}, n = {self.n})"
        )


def trend(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    by: Sequence[str] = ("dataset",),
) -> list[Trend]:
    r"""Spearman correlation of ``y`` with ``x`` in each group of ``rows``.

    A positive :math:`\rho` means ``y`` grows with ``x``. Used to test whether
    wider networks settle earlier (:math:`\rho(\text{width}, \Delta_{100}) < 0`)
    and deeper ones later (:math:`\rho(\text{depth}, \Delta_{100}) > 0`).

    Parameters
    ----------
    rows
        Rows of one grid and one threshold, e.g.
        ``tables.select(rows, grid="width", threshold=1e-6)``: each cell must
        count once, or ``n`` and the significance would be inflated.
    x, y
        Column names of numeric columns; rows where either is missing or not
        finite are left out.
    by
        Grouping columns.

    Returns
    -------
    list of Trend
        One per group, sorted by group.

    Raises
    ------
    ValueError
        If a column name is not a column of ``results.csv``, or the rows hold
        more than one threshold or a cell (column ``cell``) twice.
    """
    from scipy.stats import spearmanr

    for name in (x, y, *by):
        check_choice("column", name, RESULT_COLUMNS)
    _check_one_threshold(rows, "trend")
    groups: dict[tuple[Any, ...], list[tuple[float, float]]] = {}
    for row in rows:
        key = tuple(row.get(b) for b in by)
        pair = (row.get(x), row.get(y))
        if all(
            isinstance(v, int | float) and math.isfinite(v) and not isinstance(v, bool)
            for v in pair
        ):
            groups.setdefault(key, []).append((float(pair[0]), float(pair[1])))
        else:
            groups.setdefault(key, [])
    out = []
    for key in sorted(groups, key=lambda t: [_sort_key(v) for v in t]):
        pairs = np.asarray(sorted(groups[key]), dtype=np.float64).reshape(-1, 2)
        xs, ys = pairs[:, 0], pairs[:, 1]
        rho = pval = math.nan
        if xs.size >= 3 and np.ptp(xs) > 0 and np.ptp(ys) > 0:
            res = spearmanr(xs, ys)
            rho, pval = float(res.statistic), float(res.pvalue)
            if xs.size <= EXACT_MAX_N:
                pval = _exact_spearman_pvalue(xs, ys, rho)
        out.append(Trend(key, x, y, xs, ys, rho, pval))
    return out


def log_bin_means(
    k: NDArray[Any], values: NDArray[Any], n_bins: int = 40
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    r"""Average ``values`` over logarithmically spaced bins of ``k``.

    A raw :math:`\hat\Delta_k` jumps by an order of magnitude from one ``k``
    to the next (it depends on which sample arrives); bin means over
    :math:`[k_j, k_{j+1})` with geometric edges show the trend on log-log axes.

    Parameters
    ----------
    k
        Increasing sample sizes, shape ``(n,)``.
    values
        Values at ``k``, shape ``(..., n)``.
    n_bins
        Number of geometric edges between ``k[0]`` and ``k[-1] + 1`` (fewer
        bins remain where edges coincide at small ``k``).

    Returns
    -------
    k_bins
        First ``k`` of each non-empty bin.
    means
        Bin means, shape ``(..., n_bins_kept)``.

    Raises
    ------
    ValueError
        If ``k`` and ``values`` do not match or ``k`` is not increasing.

    Examples
    --------
    >>> kb, m = log_bin_means(np.arange(1, 9), np.arange(1.0, 9.0), n_bins=4)
    >>> kb.tolist(), m.tolist()
    ([1, 2, 4], [1.0, 2.5, 6.0])
    """
    k = np.asarray(k)
    values = np.asarray(values, dtype=np.float64)
    n_bins = check_int_range("n_bins", n_bins, 2)
    if k.ndim != 1 or values.shape[-1] != k.size or np.any(np.diff(k) <= 0):
        raise ValueError(
            f"k must be increasing with one entry per value: got k of shape "
            f"{k.shape} and values of shape {values.shape}"
        )
    edges = np.unique(np.geomspace(k[0], k[-1] + 1, n_bins).astype(np.int64))
    start = np.unique(np.searchsorted(k, edges[:-1]))
    counts = np.diff(np.append(start, k.size))
    return k[start].astype(np.int64), np.add.reduceat(values, start, axis=-1) / counts
