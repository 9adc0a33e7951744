r"""Figures of a sweep that draw what exists and say so where nothing does.

Chapter 7 draws the rows and curves of a possibly unfinished sweep, through
:mod:`lsutils.plotting`:

* :func:`plot_curve` draws one cell's :math:`\Delta_k` (a
  :class:`lsutils.results.Curve`) with its closed form and bound;
* :func:`plot_series` draws one column against another, one line per group;
* :func:`plot_pivot` draws a :class:`lsutils.tables.Pivot` as a heat map.

A missing curve or an empty selection gives a panel that says "not computed
yet" or "no finished cells" instead of an error.

Used by chapter 7 (``notebooks/07_experiments.ipynb``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator
from numpy.typing import NDArray

from lsutils.plotting import plot_delta, plot_heatmap
from lsutils.results import Curve
from lsutils.tables import Pivot, pivot

__all__ = [
    # figures
    "plot_curve",
    "plot_pivot",
    "plot_series",
]


def _empty(ax: Axes, text: str) -> Axes:
    """Write ``text`` in the middle of an empty panel.

    Tick marks are hidden with ``tick_params`` (not by removing the ticks),
    so that panels sharing an axis with this one keep theirs.
    """
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.tick_params(bottom=False, left=False, labelbottom=False, labelleft=False)
    ax.grid(False)
    return ax


#: Marker and line style per series of :func:`plot_series`, so that series
#: lying on top of each other stay distinguishable.
_SERIES_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"))


def plot_curve(
    curve: Curve | None,
    ax: Axes | None = None,
    threshold: float | None = None,
    k_star: float | None = None,
    title: str | None = None,
) -> Axes:
    r"""Draw one cell's :math:`\Delta_k` with closed form and bound, log-log.

    Calls :func:`lsutils.plotting.plot_delta`, leaving out the closed form and
    the bound where the cell has none (full-space sampler). ``None`` draws a
    "not computed yet" panel instead.

    Parameters
    ----------
    curve
        One entry of :attr:`lsutils.results.SweepRun.curves`, or ``None``.
    ax
        Axes to draw on; a new figure when ``None``.
    threshold, k_star
        Drawn as a horizontal and a vertical line.
    title
        Axes title.
    """
    if ax is None:
        _, ax = plt.subplots()
    if title is not None:
        ax.set_title(title)
    if curve is None:
        return _empty(ax, "not computed yet")

    def finite(values: NDArray[np.float64]) -> NDArray[np.float64] | None:
        return values if np.all(np.isfinite(values)) else None

    return plot_delta(
        curve.k,
        curve.delta_mc,
        mc_se=curve.delta_mc_se,
        taylor=finite(curve.delta_taylor),
        bound=finite(curve.bound),
        threshold=threshold,
        k_star=k_star,
        ax=ax,
    )


def plot_series(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    by: str,
    ax: Axes | None = None,
    band: tuple[str, str] | None = None,
    logx: bool = True,
    logy: bool = True,
    ylabel: str | None = None,
) -> Axes:
    """One line of ``y`` against ``x`` per value of ``by`` (e.g. per sampler).

    Points with a missing or non-finite ``y`` are left out, so a partial sweep
    draws what exists; an empty selection gives a "no finished cells" panel.

    Parameters
    ----------
    rows
        Rows with at most one entry per (``by``, ``x``).
    x, y, by
        Column names.
    ax
        Axes to draw on; a new figure when ``None``.
    band
        Columns of a lower and upper value drawn as error bars, e.g.
        ``("k_star_lo", "k_star_hi")`` (missing ends are not drawn).
    logx, logy
        Logarithmic axes.
    ylabel
        Label of the y axis (default: ``y``).
    """
    if ax is None:
        _, ax = plt.subplots()
    table = pivot(rows, by, x, lambda r: r) if rows else None
    drawn = 0
    seen: set[float] = set()
    for i, label in enumerate([] if table is None else table.row_labels):
        pts = [
            r
            for r in table.cells[i]
            if r is not None
            and isinstance(r.get(y), int | float)
            and math.isfinite(r[y])
        ]
        if not pts:
            continue
        xs = np.array([float(r[x]) for r in pts])
        ys = np.array([float(r[y]) for r in pts])
        marker, style = _SERIES_STYLES[drawn % len(_SERIES_STYLES)]
        (line,) = ax.plot(
            xs, ys, marker=marker, ls=style, ms=6 - drawn % 3, mfc="none",
            label=str(label[0]),
        )  # fmt: skip
        drawn += 1
        seen.update(xs.tolist())
        if band is not None:
            lo = np.array([ys[j] if r.get(band[0]) is None else r[band[0]]
                           for j, r in enumerate(pts)], dtype=float)  # fmt: skip
            hi = np.array([ys[j] if r.get(band[1]) is None else r[band[1]]
                           for j, r in enumerate(pts)], dtype=float)  # fmt: skip
            err = np.vstack([ys - lo, hi - ys]).clip(min=0)
            ax.errorbar(xs, ys, yerr=err, fmt="none", color=line.get_color(), lw=0.8)
    if not drawn:
        return _empty(ax, "no finished cells")
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    if len(seen) <= 12:  # few settings: label each one, e.g. d = 1, 2, 5, ...
        ticks = sorted(seen)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.legend(title=by, fontsize=7)
    return ax


def plot_pivot(
    table: Pivot,
    ax: Axes | None = None,
    title: str | None = None,
    value_label: str = "",
    log: bool = True,
    fmt: str = "{:.3g}",
) -> Axes:
    """Heat map of a numeric :class:`Pivot` via :func:`lsutils.plotting.plot_heatmap`.

    Missing cells are blank; a table with no finite entry gives a
    "no finished cells" panel instead of an error.

    Parameters
    ----------
    table
        Output of :func:`pivot` with numeric values.
    ax
        Axes to draw on; a new figure when ``None``.
    title
        Axes title.
    value_label
        Label of the colour bar.
    log
        Logarithmic colour scale (entries must be positive).
    fmt
        Format of the annotations, e.g. ``"{:.0f}"`` for ``k*``.
    """
    if ax is None:
        _, ax = plt.subplots()
    if title is not None:
        ax.set_title(title)
    arr = table.array() if table.row_labels else np.empty((0, 0))
    if arr.size == 0 or not np.isfinite(arr).any():
        return _empty(ax, "no finished cells")
    rows = ["/".join(map(str, r)) for r in table.row_labels]
    return plot_heatmap(
        arr,
        "/".join(table.index),
        table.columns,
        ax=ax,
        row_ticks=rows,
        col_ticks=table.col_labels,
        value_label=value_label,
        log=log,
        fmt=fmt,
    )
