r"""The log-log slope of ``Delta_k`` and the sufficient dataset size ``k*``.

Book chapters 1 and 6. For a curve :class:`lsutils.delta.DeltaCurve` (Monte
Carlo or closed form):

* :func:`fit_slope` fits the power law ``Delta_k ~ a k^slope`` by least
  squares in log-log (the quadratic theory predicts ``slope = -2``);
* :func:`sufficient_size` applies the practical rule for ``k*``, the first
  ``k`` after which ``Delta_k`` stays below a threshold over a window, with its
  uncertainty over ``theta`` and over orderings, and extrapolates with the
  power-law fit when the threshold is not reached;
* :func:`window_complete` says whether that window fits inside the ``m``
  samples of the curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lsutils._checks import check_int_range, check_positive_float
from lsutils.delta import DeltaCurve

__all__ = [
    # slope
    "SlopeFit",
    "fit_slope",
    "ordering_slopes",
    # sufficient size
    "KStar",
    "sufficient_size",
    "window_complete",
]


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit ``log Delta_k = intercept + slope * log k``.

    Attributes
    ----------
    slope, intercept
        The fitted line in natural logarithms.
    slope_se
        Ordinary least-squares standard error of the slope.
    k_min
        Smallest ``k`` used.
    n_points
        Number of points fitted.
    """

    slope: float
    intercept: float
    slope_se: float
    k_min: int
    n_points: int

    def predict(self, k: ArrayLike) -> NDArray[np.float64]:
        """``exp(intercept) * k ** slope``."""
        return np.exp(self.intercept) * np.asarray(k, dtype=np.float64) ** self.slope


def fit_slope(k: ArrayLike, value: ArrayLike, k_min: int = 100) -> SlopeFit:
    """Fit the power law ``Delta_k ~ a k^slope`` by least squares in log-log.

    Only points with ``k >= k_min`` and ``value > 0`` are used. The quadratic
    theory predicts ``slope = -2`` (:func:`lsutils.bounds.curvature_bound`).

    Parameters
    ----------
    k
        Dataset sizes.
    value
        ``Delta_k`` at those sizes.
    k_min
        Smallest ``k`` in the fit (small ``k`` are off the asymptotic regime).

    Returns
    -------
    SlopeFit

    Raises
    ------
    ValueError
        If fewer than 3 usable points remain.

    Notes
    -----
    ``slope_se`` is the textbook value for independent residuals. Neighbouring
    ``Delta_k`` share almost all their samples, so residuals are strongly
    correlated and this value is no reliable uncertainty on its own;
    :func:`ordering_slopes` gives the spread of the slope over orderings (on
    the quick MNIST run of the README both give about 0.04).

    Examples
    --------
    >>> kk = np.arange(100, 1000)
    >>> fit = fit_slope(kk, 3.0 / kk**2)
    >>> round(fit.slope, 6), round(float(np.exp(fit.intercept)), 6)
    (-2.0, 3.0)
    """
    k_min = check_int_range("k_min", k_min, 1)
    kk = np.asarray(k, dtype=np.float64)
    vv = np.asarray(value, dtype=np.float64)
    if kk.shape != vv.shape or kk.ndim != 1:
        raise ValueError(
            f"k and value must be 1-D of the same length, got {kk.shape} and {vv.shape}"
        )
    use = (kk >= k_min) & (vv > 0) & np.isfinite(vv)
    n = int(use.sum())
    if n < 3 or np.unique(kk[use]).size < 2:
        raise ValueError(
            f"fit_slope needs at least 3 points with k >= k_min={k_min} and "
            f"value > 0, got {n}"
            + (f" (k runs from {kk.min():g} to {kk.max():g})" if kk.size else "")
            + "; lower k_min or pass a longer curve"
        )
    x, yv = np.log(kk[use]), np.log(vv[use])
    xm, ym = x.mean(), yv.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (yv - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    resid = yv - intercept - slope * x
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx) if n > 2 else math.nan
    return SlopeFit(slope, intercept, se, k_min, n)


def _check_curve(curve: object, made_by: str, need_orderings: bool) -> DeltaCurve:
    """Return ``curve`` if it is a valid ``Delta_k`` curve, else raise.

    Valid: a :class:`DeltaCurve` with strictly increasing ``k >= 1``, finite
    and non-negative ``value``, ``se`` and ``per_ordering`` (a NaN would
    otherwise count as "above the threshold" and move ``k*``), and, when
    ``need_orderings``, at least one ordering.
    """
    if not isinstance(curve, DeltaCurve):
        raise ValueError(
            f"curve must be a DeltaCurve (from {made_by}), got {type(curve)}"
        )
    k = curve.k
    bad_k = np.flatnonzero(np.diff(k) <= 0)
    if k[0] < 1 or bad_k.size:
        where = (
            f"k[0] = {k[0]}"
            if k[0] < 1
            else f"k[{bad_k[0] + 1}] = {k[bad_k[0] + 1]} after k[{bad_k[0]}] = "
            f"{k[bad_k[0]]}"
        )
        raise ValueError(
            "curve.k must be strictly increasing dataset sizes >= 1 (k = 2..m, as "
            f"delta_mc and delta_taylor give), got {where}; sort the curve by k "
            "and drop repeated sizes"
        )
    if need_orderings and curve.per_ordering.shape[0] == 0:
        raise ValueError(
            f"curve has no orderings (per_ordering of shape "
            f"{curve.per_ordering.shape}): the spread of k* over orderings needs "
            "at least one; build the curve with delta_mc or delta_taylor from "
            "orderings(m, R, seed) with R >= 1, or pass value[None] as per_ordering"
        )
    for name in ("value", "se", "per_ordering"):
        arr = getattr(curve, name)
        for bad, what in (
            (~np.isfinite(arr), "NaN or infinite"),
            (arr < 0, "negative"),
        ):
            if not bad.any():
                continue
            first = np.argwhere(bad)[0]
            raise ValueError(
                f"curve.{name} holds {int(bad.sum())} {what} entr"
                f"{'y' if bad.sum() == 1 else 'ies'} (first: {arr[tuple(first)]} "
                f"at k = {k[first[-1]]}): expected finite values >= 0 (Delta_k is "
                "a mean of squares, se its standard error); rebuild the curve with "
                "delta_mc or delta_taylor (they refuse non-finite losses) or drop "
                "those k"
            )
    return curve


def ordering_slopes(curve: DeltaCurve, k_min: int = 100) -> NDArray[np.float64]:
    """Log-log slope of each ordering's ``Delta_k`` curve.

    The orderings are independent draws of the order in which samples arrive,
    so the spread of their slopes is an honest measure of how much the slope
    depends on that order, unlike the least-squares ``slope_se`` of
    :func:`fit_slope`, whose residuals along one curve are correlated. The
    standard error of the mean slope is ``std(ddof=1) / sqrt(R)``; it leaves
    out the Monte Carlo error over ``theta``, which the orderings share.

    Parameters
    ----------
    curve
        Output of :func:`lsutils.delta.delta_mc` (``per_ordering`` of shape
        ``(R, K)``).
    k_min
        As in :func:`fit_slope`.

    Returns
    -------
    numpy.ndarray
        ``(R,)`` slopes; ``nan`` for an ordering whose fit fails (fewer than 3
        positive points with ``k >= k_min``); empty for a curve without
        orderings (``R = 0``).

    Raises
    ------
    ValueError
        If ``curve`` is not a :class:`~lsutils.delta.DeltaCurve`, its ``k`` is
        not strictly increasing from ``>= 1``, or ``value``, ``se`` or
        ``per_ordering`` hold a NaN, infinite or negative entry; or if ``k_min``
        is below 1.

    Examples
    --------
    >>> kk = np.arange(2, 1001)
    >>> per = np.stack([1.0 / kk**2, 5.0 / kk**2.5])
    >>> curve = DeltaCurve(kk, per.mean(0), np.zeros(kk.size), per)
    >>> np.round(ordering_slopes(curve), 6)
    array([-2. , -2.5])
    """
    curve = _check_curve(curve, "delta_mc", need_orderings=False)
    k_min = check_int_range("k_min", k_min, 1)
    out = np.full(curve.per_ordering.shape[0], np.nan)
    for r, row in enumerate(curve.per_ordering):
        try:
            out[r] = fit_slope(curve.k, row, k_min=k_min).slope
        except ValueError:
            pass  # too few positive points: this ordering has no slope
    return out


@dataclass(frozen=True, eq=False)
class KStar:
    """The sufficient dataset size for one threshold, with its uncertainty.

    Attributes
    ----------
    threshold
        ``Delta`` in "first ``k`` with ``Delta_k <= Delta``".
    k_star
        The rule applied to ``curve.value`` (``None`` if never reached).
    reached
        Whether ``k_star`` exists.
    k_lo, k_hi
        The rule applied to ``value - z se`` and ``value + z se`` (``None``
        if not reached).
    per_ordering
        ``(R,)`` ``k*`` of each ordering's curve, ``inf`` where not reached.
    ordering_median, ordering_p10, ordering_p90
        Median and 10th/90th percentiles of ``per_ordering`` (``inf`` when
        that share of orderings never reaches the threshold).
    window
        The ``window`` argument (``None``: until ``2 k``, at least 10 more).
    window_complete
        Whether the whole window after ``k_star`` lies on the curve
        (``k_star + window <= m``); ``False`` means the check was cut at ``m``
        and ``k_star`` says that ``m`` is too small to decide. ``None`` when
        not reached. See :func:`window_complete`.
    k_extrapolated
        When not reached: where the power-law fit of the tail crosses the
        threshold, always beyond ``m`` (``None`` if the fit fails, rises, or
        already crosses within the curve, where noise rather than the trend
        keeps ``Delta_k`` above the threshold).
    fit
        The :class:`SlopeFit` used for the extrapolation.
    reason
        One sentence saying how ``k_star`` was decided.
    """

    threshold: float
    k_star: int | None
    reached: bool
    k_lo: int | None
    k_hi: int | None
    per_ordering: NDArray[np.float64]
    ordering_median: float
    ordering_p10: float
    ordering_p90: float
    window: int | None
    window_complete: bool | None
    k_extrapolated: float | None
    fit: SlopeFit | None
    reason: str


def window_complete(k_star: int, m: int, window: int | None = None) -> bool:
    """Whether the stability window after ``k_star`` fits inside ``m`` samples.

    :func:`sufficient_size` checks ``Delta_k`` on ``[k*, min(m, k* + w)]``,
    with ``w = max(10, k*)`` by default or a fixed ``window``. When
    ``k* + w > m`` the check was cut short and ``k*`` is only a lower limit
    of what a larger data set would show.

    Parameters
    ----------
    k_star
        The sufficient size found (``>= 1``).
    m
        The number of samples of the curve (its last ``k``).
    window
        The ``window`` given to :func:`sufficient_size`.

    Returns
    -------
    bool

    Examples
    --------
    >>> window_complete(100, 1000), window_complete(600, 1000)
    (True, False)
    >>> window_complete(600, 1000, window=50)
    True
    """
    k_star = check_int_range("k_star", k_star, 1)
    m = check_int_range("m", m, 1)
    if window is not None:
        window = check_int_range("window", window, 0, hint="or None for k -> 2k")
    w = max(10, k_star) if window is None else window
    return k_star + w <= m


def _first_stable(
    k: NDArray[np.int64], v: NDArray[np.float64], threshold: float, window: int | None
) -> int | None:
    """First ``k_j`` with ``v <= threshold`` on every point of its window."""
    below = v <= threshold
    K = k.shape[0]
    idx = np.arange(K)
    # next_fail[j]: first index >= j where the curve is above the threshold
    fails = np.where(below, K, idx)
    next_fail = np.minimum.accumulate(fails[::-1])[::-1]
    w = np.maximum(10, k) if window is None else np.full(K, window)
    end = np.minimum(k[-1], k + w)
    fail_k = np.where(
        next_fail < K, k[np.minimum(next_fail, K - 1)], np.iinfo(np.int64).max
    )
    ok = below & (fail_k > end)
    hit = np.flatnonzero(ok)
    return int(k[hit[0]]) if hit.size else None


def sufficient_size(
    curve: DeltaCurve,
    threshold: float,
    window: int | None = None,
    z: float = 2.0,
    k_min: int | None = None,
) -> KStar:
    """Find the practical sufficient size ``k*`` of a ``Delta_k`` curve.

    Rule: ``k*`` is the first ``k`` on the curve such that
    ``Delta_{k'} <= threshold`` for every ``k'`` in
    ``[k, min(m, k + window(k))]``, with ``window(k) = max(10, k)`` by default
    (the estimate must stay below until the dataset has doubled, and for at
    least 10 more samples) or a fixed number of samples. Near the end of the
    curve the window is cut at ``m``, so a ``k*`` close to ``m`` rests on fewer
    points; ``KStar.window_complete`` says whether that happened.

    Uncertainty: ``k_lo`` and ``k_hi`` apply the same rule to the band
    ``value -+ z se`` (Monte Carlo error over ``theta``), and the rule applied
    to each ordering's curve gives the spread over orderings (median and
    10th/90th percentiles).

    Parameters
    ----------
    curve
        Output of :func:`lsutils.delta.delta_mc` or
        :func:`lsutils.delta.delta_taylor`.
    threshold
        ``Delta > 0``.
    window
        Fixed window in samples (``>= 0``), or ``None`` for the doubling rule.
    z
        Width of the band in standard errors (``>= 0``).
    k_min
        First ``k`` of the power-law fit used to extrapolate when the threshold
        is not reached; default the last decade, ``max(2, m // 10)``.

    Returns
    -------
    KStar

    Raises
    ------
    ValueError
        If ``curve`` is not a :class:`~lsutils.delta.DeltaCurve`, its ``k`` is
        not strictly increasing from ``>= 1``, it has no orderings, or
        ``value``, ``se`` or ``per_ordering`` hold a NaN, infinite or negative
        entry (a NaN would silently count as above the threshold); or if an
        argument is out of range.

    Examples
    --------
    >>> kk = np.arange(2, 1001)
    >>> value = 100.0 / kk**2
    >>> curve = DeltaCurve(kk, value, np.zeros_like(value), value[None])
    >>> sufficient_size(curve, 1e-2).k_star
    100
    >>> res = sufficient_size(curve, 1e-5)
    >>> res.reached, round(res.k_extrapolated)
    (False, 3162)
    """
    curve = _check_curve(curve, "delta_mc or delta_taylor", need_orderings=True)
    threshold = check_positive_float("threshold", threshold)
    if window is not None:
        window = check_int_range("window", window, 0, hint="or None for k -> 2k")
    z = check_positive_float("z", z, allow_zero=True)
    if k_min is not None:
        k_min = check_int_range("k_min", k_min, 1, hint="or None for the last decade")
    k, v = curve.k, curve.value
    k_star = _first_stable(k, v, threshold, window)
    k_lo = _first_stable(k, v - z * curve.se, threshold, window)
    k_hi = _first_stable(k, v + z * curve.se, threshold, window)
    per = np.array(
        [_first_stable(k, row, threshold, window) for row in curve.per_ordering],
        dtype=object,
    )
    per_ordering = np.array([np.inf if x is None else float(x) for x in per])
    p10, median, p90 = np.percentile(per_ordering, [10, 50, 90], method="lower")
    rule = (
        "doubling window (k to 2k, at least 10)"
        if window is None
        else f"window of {window}"
    )
    fit = None
    k_ext = None
    complete = None
    if k_star is not None:
        complete = window_complete(k_star, int(k[-1]), window)
        reason = (
            f"Delta_k <= {threshold:.3g} for every k in [k*, k* + window] "
            f"({rule}) first at k* = {k_star}"
        )
        if not complete:
            reason += (
                f"; the window is cut at m = {k[-1]}, so m is too small to confirm it"
            )
    else:
        below = np.flatnonzero(v <= threshold)
        reason = (
            f"Delta_k stays above {threshold:.3g} up to m = {k[-1]} "
            f"(smallest value {v.min():.3g})"
            if below.size == 0
            else f"Delta_k dips below {threshold:.3g} at k = {k[below[0]]} but "
            f"does not stay below over the {rule} before m = {k[-1]}"
        )
        fit_k_min = max(2, int(k[-1]) // 10) if k_min is None else k_min
        try:
            fit = fit_slope(k, v, k_min=fit_k_min)
        except ValueError as err:
            reason += f"; no extrapolation: {err}"
        else:
            crossing = (
                math.exp((math.log(threshold) - fit.intercept) / fit.slope)
                if fit.slope < 0
                else None
            )
            if crossing is not None and crossing > k[-1]:
                k_ext = crossing
                reason += (
                    f"; the power-law fit (slope {fit.slope:.2f} for "
                    f"k >= {fit_k_min}) crosses it near k = {k_ext:.3g}"
                )
            elif crossing is not None:
                reason += (
                    f"; no extrapolation: the power-law fit (slope "
                    f"{fit.slope:.2f} for k >= {fit_k_min}) is already below it "
                    f"from k = {crossing:.3g}, so the noise around the trend, not "
                    "the trend, keeps Delta_k above it within m"
                )
            else:
                reason += (
                    f"; no extrapolation: the fitted slope {fit.slope:.2f} for "
                    f"k >= {fit_k_min} is not negative"
                )
    return KStar(
        threshold=threshold,
        k_star=k_star,
        reached=k_star is not None,
        k_lo=k_lo,
        k_hi=k_hi,
        per_ordering=per_ordering,
        ordering_median=float(median),
        ordering_p10=float(p10),
        ordering_p90=float(p90),
        window=window,
        window_complete=complete,
        k_extrapolated=k_ext,
        fit=fit,
        reason=reason,
    )
