r"""Figures of the book: spectra, landscape slices and contours, Delta_k curves.

Every function draws on the Axes it is given (or on a new figure when ``ax`` is
``None``), labels its axes, and returns the Axes (or, for several panels, the
Figure); nothing calls ``plt.show``. Inputs may be NumPy arrays, sequences or CPU
torch tensors. Importing this module changes no matplotlib setting: call
:func:`use_book_style` (or use ``matplotlib.rc_context(BOOK_STYLE)``) to get the
book's look.

Rates are drawn on log-log axes: a curve :math:`\Delta_k \approx C k^{p}` is the
straight line :math:`\log \Delta_k = \log C + p \log k`, so its slope ``p``
can be read off and compared with the :math:`-2` of the bound.

Chapters: :func:`plot_spectrum` (3), :func:`plot_slices` and
:func:`plot_contours` (4), :func:`plot_taylor_error` (2),
:func:`plot_variance_comparison` (5), :func:`plot_delta` (6, 7),
:func:`plot_heatmap` (7).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from lsutils._checks import check_int_range, check_positive_float

__all__ = [
    # style
    "BOOK_STYLE",
    "use_book_style",
    # chapter figures
    "plot_contours",
    "plot_delta",
    "plot_heatmap",
    "plot_slices",
    "plot_spectrum",
    "plot_taylor_error",
    "plot_variance_comparison",
]

logger = logging.getLogger(__name__)

#: rcParams of the book's figures: small fonts, 110 dpi, constrained layout.
BOOK_STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.figsize": (6.0, 3.6),
    "figure.constrained_layout.use": True,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "image.cmap": "viridis",
}


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib's global ``rcParams``.

    Call it once at the top of a notebook. It is the only function of this module
    that changes global state; for a local change use
    ``matplotlib.rc_context(BOOK_STYLE)`` instead.

    Examples
    --------
    >>> import matplotlib as mpl
    >>> with mpl.rc_context():
    ...     use_book_style()
    ...     mpl.rcParams["figure.dpi"]
    110.0
    """
    mpl.rcParams.update(BOOK_STYLE)


# ---------------------------------------------------------------------------
# input handling


def _as_array(name: str, values: Any, ndim: int | None = None) -> np.ndarray:
    """Return ``values`` as a finite float64 array with ``ndim`` dimensions."""
    if hasattr(values, "detach"):  # torch.Tensor, possibly with grad or on GPU
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be numeric array-like, got {type(values).__name__}"
        ) from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: pass at least one value")
    if not np.all(np.isfinite(arr)):
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"{name} has {n_bad} non-finite value(s) out of {arr.size}; "
            "drop or fix them before plotting"
        )
    return arr


def _same_length(name: str, arr: np.ndarray, ref_name: str, n: int) -> None:
    """Raise ``ValueError`` unless the last axis of ``arr`` has length ``n``."""
    if arr.shape[-1] != n:
        raise ValueError(
            f"{name} has {arr.shape[-1]} values along its last axis but {ref_name} "
            f"has {n}: pass one value per entry of {ref_name}"
        )


def _positive_mask(name: str, arr: np.ndarray) -> np.ndarray:
    """Mask of positive entries; warn once when some are dropped for log axes."""
    mask = arr > 0
    if not mask.all():
        warnings.warn(
            f"{name}: {int((~mask).sum())} non-positive value(s) cannot be shown "
            "on a log axis and were left out",
            stacklevel=3,
        )
    return mask


def _get_ax(ax: Axes | None) -> Axes:
    """Return ``ax`` or the Axes of a new figure."""
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _check_k_mapping(name: str, mapping: Mapping[int, Any]) -> list[int]:
    """Validate a ``{k: values}`` mapping and return its keys in order."""
    if not isinstance(mapping, Mapping) or len(mapping) == 0:
        raise ValueError(
            f"{name} must be a non-empty mapping {{k: values}}, got {mapping!r:.60}"
        )
    return [check_int_range(f"key of {name}", k, 1) for k in mapping]


# ---------------------------------------------------------------------------
# chapter 3: spectrum


def plot_spectrum(
    eigenvalues: Any,
    ax: Axes | None = None,
    bulk: Any | None = None,
    title: str | None = None,
) -> Axes:
    r"""Stem plot of the top Hessian eigenvalues, optionally with the bulk.

    The magnitudes :math:`|\lambda_i|` are drawn against their rank ``i`` on a
    log axis; negative eigenvalues get a hollow red marker so that the sign is
    not lost. The Hessian spectrum of a trained network has a few large outliers
    and a bulk near zero (Sagun et al. 2018; Ghorbani et al. 2019); ``bulk`` (for
    example the eigenvalues of a small Hessian, or a sample from a spectral
    density estimate) is shown as a histogram in an inset with the top
    eigenvalues marked as vertical lines.

    Parameters
    ----------
    eigenvalues
        Top eigenvalues, shape ``(d,)``, any order (they are sorted by
        magnitude, largest first).
    ax
        Axes to draw on; a new figure when ``None``.
    bulk
        Optional sample of the rest of the spectrum, shape ``(n,)``.
    title
        Optional Axes title.

    Returns
    -------
    matplotlib.axes.Axes
        The main Axes; the inset (if any) is ``ax.child_axes[0]``.

    Raises
    ------
    ValueError
        If an input is not one-dimensional, empty or not finite, or if every
        eigenvalue is zero.
    """
    lam = _as_array("eigenvalues", eigenvalues, ndim=1)
    lam = lam[np.argsort(-np.abs(lam), kind="stable")]
    if not np.any(lam != 0):
        raise ValueError(
            "eigenvalues are all zero: nothing to show on a log axis; check that "
            "the Hessian was evaluated at a trained minimum"
        )
    ax = _get_ax(ax)
    rank = np.arange(1, lam.size + 1)
    nonzero = _positive_mask("|eigenvalues|", np.abs(lam))
    pos, neg = nonzero & (lam > 0), nonzero & (lam < 0)
    ax.vlines(rank[nonzero], 0, np.abs(lam[nonzero]), color="0.6", lw=0.8)
    ax.plot(rank[pos], lam[pos], "o", color="C0", ms=4, label=r"$\lambda_i > 0$")
    if neg.any():
        ax.plot(
            rank[neg],
            -lam[neg],
            "o",
            mfc="none",
            color="C3",
            ms=4,
            label=r"$\lambda_i < 0$ (shown as $|\lambda_i|$)",
        )
    ax.set_yscale("log")
    ax.set_xlabel("rank $i$")
    ax.set_ylabel(r"$|\lambda_i|$")
    if lam.size <= 20:
        ax.set_xticks(rank)
    ax.legend(loc="lower left")
    if title is not None:
        ax.set_title(title)
    if bulk is not None:
        sample = _as_array("bulk", bulk, ndim=1)
        inset = ax.inset_axes((0.55, 0.55, 0.42, 0.4))
        inset.hist(sample, bins=min(50, max(5, sample.size // 5)), color="0.5")
        for value in lam:
            inset.axvline(value, color="C0", lw=0.6)
        inset.set_yscale("log")
        inset.set_xlabel(r"$\lambda$", fontsize=7)
        inset.set_ylabel("count", fontsize=7)
        inset.tick_params(labelsize=6)
        inset.set_title("bulk and top eigenvalues", fontsize=7)
    return ax


# ---------------------------------------------------------------------------
# chapter 4: landscape pictures


def plot_slices(
    alphas: Any,
    losses_by_k: Mapping[int, Any],
    ax: Axes | None = None,
    direction_label: str = "v",
) -> Axes:
    r"""One-dimensional slices :math:`\alpha \mapsto L_k(w^* + \alpha v)`.

    One colour per ``k``: thin lines are the individual directions, the thick
    line their mean. As ``k`` grows the curves should stop moving.

    Parameters
    ----------
    alphas
        Step sizes along the direction(s), shape ``(n_alpha,)``.
    losses_by_k
        ``{k: losses}`` with ``losses`` of shape ``(n_alpha,)`` (one direction)
        or ``(n_dirs, n_alpha)``.
    ax
        Axes to draw on; a new figure when ``None``.
    direction_label
        Symbol of the direction in the axis labels, e.g. ``"v_1"``.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If ``losses_by_k`` is empty, has a key that is not a positive integer,
        or an entry whose last axis does not match ``alphas``.
    """
    alpha = _as_array("alphas", alphas, ndim=1)
    ks = _check_k_mapping("losses_by_k", losses_by_k)
    curves = {}
    for k in ks:
        values = _as_array(f"losses_by_k[{k}]", losses_by_k[k])
        if values.ndim not in (1, 2):
            raise ValueError(
                f"losses_by_k[{k}] must have shape (n_alpha,) or (n_dirs, n_alpha), "
                f"got {values.shape}"
            )
        _same_length(f"losses_by_k[{k}]", values, "alphas", alpha.size)
        curves[k] = np.atleast_2d(values)
    ax = _get_ax(ax)
    for i, k in enumerate(sorted(curves)):
        color = f"C{i % 10}"
        values = curves[k]
        if values.shape[0] > 1:
            ax.plot(alpha, values.T, color=color, lw=0.6, alpha=0.35)
        ax.plot(alpha, values.mean(axis=0), color=color, lw=1.8, label=f"$k={k}$")
    ax.axvline(0.0, color="0.4", lw=0.6, ls=":")
    ax.set_xlabel(rf"step $\alpha$ along ${direction_label}$")
    ax.set_ylabel(rf"$L_k(w^* + \alpha {direction_label})$")
    ax.legend(title="samples")
    return ax


def plot_contours(
    grid_x: Any,
    grid_y: Any,
    values_by_k: Mapping[int, Any],
    axes: Sequence[Axes] | None = None,
    levels: int = 15,
    log_levels: bool = False,
    labels: tuple[str, str] = (r"$\theta_1$", r"$\theta_2$"),
) -> Figure:
    """Contour panels of :math:`L_k` on a 2-D grid, one panel per ``k``.

    All panels share one colour scale (and one colour bar), so a change of the
    landscape with ``k`` is a change of colour, not of normalisation. The origin,
    :math:`w^*`, is marked with a cross.

    Parameters
    ----------
    grid_x, grid_y
        Grid coordinates, shapes ``(nx,)`` and ``(ny,)``.
    values_by_k
        ``{k: values}`` with ``values`` of shape ``(ny, nx)`` (row ``j`` is
        ``grid_y[j]``, as ``numpy.meshgrid`` with the default ``indexing="xy"``).
    axes
        One Axes per entry of ``values_by_k``; a new row of panels when ``None``.
    levels
        Number of contour levels.
    log_levels
        Space the levels geometrically (needs positive values), which resolves
        the basin around a minimum better than linear levels.
    labels
        Axis labels of the two coordinates.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        On an empty mapping, a grid whose shape does not match the values,
        ``levels < 2``, the wrong number of ``axes``, or non-positive values with
        ``log_levels=True``.
    """
    x = _as_array("grid_x", grid_x, ndim=1)
    y = _as_array("grid_y", grid_y, ndim=1)
    ks = _check_k_mapping("values_by_k", values_by_k)
    n_levels = check_int_range("levels", levels, 2)
    fields = {}
    for k in ks:
        z = _as_array(f"values_by_k[{k}]", values_by_k[k], ndim=2)
        if z.shape != (y.size, x.size):
            raise ValueError(
                f"values_by_k[{k}] has shape {z.shape} but the grid needs "
                f"(len(grid_y), len(grid_x)) = {(y.size, x.size)}"
            )
        fields[k] = z
    if axes is None:
        fig, axes_arr = plt.subplots(
            1, len(fields), figsize=(2.6 * len(fields) + 0.8, 2.8), squeeze=False
        )
        panels = list(axes_arr[0])
    else:
        panels = list(axes)
        if len(panels) != len(fields):
            raise ValueError(
                f"got {len(panels)} axes for {len(fields)} panels: pass one Axes "
                "per entry of values_by_k, or axes=None"
            )
        fig = panels[0].figure
    lo = min(float(z.min()) for z in fields.values())
    hi = max(float(z.max()) for z in fields.values())
    if hi <= lo:  # a constant landscape: widen so that contourf has a range
        hi = lo + max(abs(lo), 1.0) * 1e-6
    if log_levels:
        if lo <= 0:
            raise ValueError(
                f"log_levels=True needs positive values, the minimum is {lo:.3g}; "
                "plot the loss (not a difference) or use log_levels=False"
            )
        bounds = np.geomspace(lo, hi, n_levels)
        norm: Normalize = LogNorm(vmin=lo, vmax=hi)
    else:
        bounds = np.linspace(lo, hi, n_levels)
        norm = Normalize(vmin=lo, vmax=hi)
    mappable = None
    for panel, k in zip(panels, sorted(fields), strict=True):
        mappable = panel.contourf(x, y, fields[k], levels=bounds, norm=norm)
        panel.contour(x, y, fields[k], levels=bounds, colors="k", linewidths=0.3)
        panel.plot(0.0, 0.0, "x", color="w", ms=6, mew=1.5)
        panel.set_title(f"$k={k}$")
        panel.set_xlabel(labels[0])
        panel.set_ylabel(labels[1])
        panel.set_aspect("equal", adjustable="box")
    fig.colorbar(mappable, ax=panels, label=r"$L_k$", shrink=0.9)
    return fig


# ---------------------------------------------------------------------------
# chapter 2: Taylor model


def plot_taylor_error(
    radii: Any,
    rel_errors_by_label: Mapping[str, Any],
    ax: Axes | None = None,
    reference_slope: float | None = 1.0,
) -> Axes:
    r"""Relative error of the quadratic model against the radius, log-log.

    If the loss has a third derivative, the error of the second-order Taylor
    model is :math:`O(r^3)` and the quadratic part is :math:`O(r^2)`, so the
    relative error grows like :math:`r`: a dashed reference line of slope
    ``reference_slope`` is drawn through the first point of the first curve.

    Parameters
    ----------
    radii
        Radii :math:`r = \|\theta\|`, shape ``(n,)``, positive.
    rel_errors_by_label
        ``{label: errors}``, each of shape ``(n,)``; for example one entry per
        direction type and ``k``.
    ax
        Axes to draw on; a new figure when ``None``.
    reference_slope
        Slope of the reference line; ``None`` draws none.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        On an empty mapping, non-positive radii, or an entry whose length does
        not match ``radii``.
    """
    r = _as_array("radii", radii, ndim=1)
    if np.any(r <= 0):
        raise ValueError(
            f"radii must be positive for a log axis, the smallest is {r.min():.3g}"
        )
    if not isinstance(rel_errors_by_label, Mapping) or not rel_errors_by_label:
        raise ValueError(
            "rel_errors_by_label must be a non-empty mapping {label: errors}"
        )
    ax = _get_ax(ax)
    first: tuple[float, float] | None = None
    for label, errors in rel_errors_by_label.items():
        err = np.abs(_as_array(f"rel_errors_by_label[{label!r}]", errors, ndim=1))
        _same_length(f"rel_errors_by_label[{label!r}]", err, "radii", r.size)
        keep = _positive_mask(f"rel_errors_by_label[{label!r}]", err)
        ax.plot(r[keep], err[keep], "o-", ms=3, label=str(label))
        if first is None and keep.any():
            first = (float(r[keep][0]), float(err[keep][0]))
    if reference_slope is not None and first is not None:
        r0, e0 = first
        ax.plot(
            r,
            e0 * (r / r0) ** reference_slope,
            "--",
            color="0.4",
            lw=0.9,
            label=f"slope {reference_slope:g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"radius $r = \|\theta\|$")
    ax.set_ylabel("relative error of the quadratic model")
    ax.legend()
    return ax


# ---------------------------------------------------------------------------
# chapter 5: sampling


def plot_variance_comparison(
    names: Sequence[str],
    variances: Any,
    ax: Axes | None = None,
    errors: Any | None = None,
) -> Axes:
    """Bar chart of estimator variances on a log axis, one bar per strategy.

    Parameters
    ----------
    names
        Strategy names, length ``n``.
    variances
        Variance of each estimator at equal budget, shape ``(n,)``, positive.
    ax
        Axes to draw on; a new figure when ``None``.
    errors
        Optional symmetric error bars (e.g. bootstrap standard errors),
        shape ``(n,)``.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If lengths differ or a variance is not positive.
    """
    labels = [str(name) for name in names]
    var = _as_array("variances", variances, ndim=1)
    _same_length("variances", var, "names", len(labels))
    if np.any(var <= 0):
        raise ValueError(
            "variances must be positive for a log axis, got "
            f"{var.min():.3g} for {labels[int(var.argmin())]!r}"
        )
    err = None
    if errors is not None:
        err = _as_array("errors", errors, ndim=1)
        _same_length("errors", err, "names", len(labels))
    ax = _get_ax(ax)
    pos = np.arange(len(labels))
    ax.bar(pos, var, yerr=err, color=[f"C{i % 10}" for i in pos], capsize=3)
    ax.set_xticks(pos, labels, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_xlabel("sampling strategy")
    ax.set_ylabel("variance of the estimator")
    ax.grid(axis="x", visible=False)
    return ax


# ---------------------------------------------------------------------------
# chapters 6 and 7: Delta_k


def _slope_line(slope_fit: Any) -> tuple[float, float, float | None]:
    """Return ``(slope, intercept, k_min)`` from a tuple or a fit object."""
    if isinstance(slope_fit, tuple | list):
        if len(slope_fit) != 2:
            raise ValueError(
                "slope_fit as a sequence must be (slope, intercept), "
                f"got {len(slope_fit)} values"
            )
        slope, intercept = slope_fit
        k_min = None
    elif hasattr(slope_fit, "slope") and hasattr(slope_fit, "intercept"):
        slope, intercept = slope_fit.slope, slope_fit.intercept
        k_min = getattr(slope_fit, "k_min", None)
    else:
        raise ValueError(
            "slope_fit must be (slope, intercept) or an object with .slope and "
            f".intercept attributes, got {type(slope_fit).__name__}"
        )
    slope, intercept = float(slope), float(intercept)
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"slope_fit is not finite: ({slope}, {intercept})")
    return slope, intercept, None if k_min is None else float(k_min)


def plot_delta(
    k: Any,
    mc: Any,
    mc_se: Any | None = None,
    taylor: Any | None = None,
    bound: Any | None = None,
    slope_fit: Any | None = None,
    threshold: float | None = None,
    k_star: float | None = None,
    ax: Axes | None = None,
    label: str = "Monte Carlo",
) -> Axes:
    r"""Log-log plot of :math:`\Delta_k` with closed form, bound, fit and ``k*``.

    Draws the Monte Carlo estimate with a band of two standard errors, the
    closed form of the quadratic model, the bound :math:`C/k^2`, the fitted
    power law :math:`\exp(b)\,k^{p}` (labelled with ``p``), the threshold
    :math:`\Delta` and the sufficient size :math:`k^*`.

    Parameters
    ----------
    k
        Sample sizes, shape ``(n,)``, positive.
    mc
        Monte Carlo estimate of :math:`\Delta_k`, shape ``(n,)``.
    mc_se
        Its standard error, shape ``(n,)``. Where ``mc - 2 se`` is not positive
        the band is cut at ``mc / 10`` (a log axis cannot reach zero).
    taylor
        Closed form under the quadratic model, shape ``(n,)``.
    bound
        Upper bound, shape ``(n,)``, e.g. ``C / k**2``.
    slope_fit
        Either ``(slope, intercept)`` or an object with ``slope`` and
        ``intercept`` attributes (and optionally ``k_min``), in natural logs:
        :math:`\ln \Delta_k \approx \text{intercept} + \text{slope}\,\ln k`.
        The line is drawn from ``k_min`` (or the smallest ``k``) on.
    threshold
        Threshold :math:`\Delta`, drawn as a horizontal line.
    k_star
        Sufficient size, drawn as a vertical line.
    ax
        Axes to draw on; a new figure when ``None``.
    label
        Legend label of the Monte Carlo curve.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If a curve's length differs from ``k``, ``k`` is not positive, or
        ``threshold`` / ``k_star`` is not a positive number.
    """
    ks = _as_array("k", k, ndim=1)
    if np.any(ks <= 0):
        raise ValueError(f"k must be positive for a log axis, got min {ks.min():g}")
    value = _as_array("mc", mc, ndim=1)
    _same_length("mc", value, "k", ks.size)
    ax = _get_ax(ax)
    keep = _positive_mask("mc", value)
    (line,) = ax.plot(ks[keep], value[keep], color="C0", lw=1.2, label=label)
    if mc_se is not None:
        se = _as_array("mc_se", mc_se, ndim=1)
        _same_length("mc_se", se, "k", ks.size)
        lower = np.where(value - 2 * se > 0, value - 2 * se, value / 10)
        ax.fill_between(
            ks[keep],
            lower[keep],
            (value + 2 * se)[keep],
            color=line.get_color(),
            alpha=0.25,
            lw=0,
            label=r"$\pm 2$ s.e.",
        )
    for name, curve, style in (
        ("taylor", taylor, dict(color="C1", ls="--", label="closed form (quadratic)")),
        ("bound", bound, dict(color="C3", ls="-.", label=r"bound $C/k^2$")),
    ):
        if curve is None:
            continue
        arr = _as_array(name, curve, ndim=1)
        _same_length(name, arr, "k", ks.size)
        ok = _positive_mask(name, arr)
        ax.plot(ks[ok], arr[ok], lw=1.2, **style)
    if slope_fit is not None:
        slope, intercept, k_min = _slope_line(slope_fit)
        k_fit = ks[ks >= k_min] if k_min is not None else ks
        if k_fit.size:
            ax.plot(
                k_fit,
                np.exp(intercept) * k_fit**slope,
                color="k",
                ls=":",
                lw=1.2,
                label=f"fit: slope {slope:.2f}",
            )
    if threshold is not None:
        thr = check_positive_float("threshold", threshold)
        ax.axhline(thr, color="0.3", lw=0.8, label=rf"threshold $\Delta={thr:.1e}$")
    if k_star is not None:
        kst = check_positive_float("k_star", k_star)
        ax.axvline(kst, color="C2", lw=1.0, label=f"$k^*={kst:g}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of samples $k$")
    ax.set_ylabel(r"$\Delta_k$")
    ax.legend()
    return ax


def plot_heatmap(
    table: Any,
    row_label: str,
    col_label: str,
    ax: Axes | None = None,
    row_ticks: Sequence[Any] | None = None,
    col_ticks: Sequence[Any] | None = None,
    value_label: str = "",
    log: bool = False,
    fmt: str = "{:.3g}",
) -> Axes:
    """Annotated heat map of a table, e.g. ``k*`` over ``d`` and thresholds.

    NaN entries (for example a threshold that is never reached) are left blank
    and annotated with an en dash.

    Parameters
    ----------
    table
        Values, shape ``(n_rows, n_cols)``; NaN allowed.
    row_label, col_label
        Axis labels (what the rows and the columns vary).
    ax
        Axes to draw on; a new figure when ``None``.
    row_ticks, col_ticks
        Tick labels, one per row / column; indices when ``None``.
    value_label
        Label of the colour bar.
    log
        Logarithmic colour scale (needs positive finite entries).
    fmt
        Format of the annotations.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        If the table is not 2-D, has no finite entry, tick labels do not match
        its shape, or ``log=True`` with a non-positive entry.
    """
    if hasattr(table, "detach"):
        table = table.detach().cpu().numpy()
    arr = np.asarray(table, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"table must be a non-empty 2-D array (rows x columns), got shape "
            f"{arr.shape}"
        )
    finite = np.isfinite(arr)
    if not finite.any():
        raise ValueError("table has no finite entry: nothing to colour")
    rows = list(range(arr.shape[0])) if row_ticks is None else list(row_ticks)
    cols = list(range(arr.shape[1])) if col_ticks is None else list(col_ticks)
    if len(rows) != arr.shape[0] or len(cols) != arr.shape[1]:
        raise ValueError(
            f"tick labels ({len(rows)} rows, {len(cols)} columns) do not match "
            f"the table shape {arr.shape}"
        )
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if log:
        if lo <= 0:
            raise ValueError(
                f"log=True needs positive entries, the smallest is {lo:.3g}"
            )
        norm: Normalize = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
    else:
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    ax = _get_ax(ax)
    image = ax.imshow(np.ma.masked_invalid(arr), norm=norm, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.grid(False)
    for (i, j), v in np.ndenumerate(arr):
        text = fmt.format(v) if np.isfinite(v) else "\u2013"
        # the lower half of viridis is dark: white text there (also when every
        # entry is equal and sits at the bottom of the scale)
        dark = np.isfinite(v) and float(norm(v)) < 0.5
        ax.text(
            j, i, text, ha="center", va="center", fontsize=7, color="w" if dark else "k"
        )
    ax.figure.colorbar(image, ax=ax, label=value_label)
    return ax
