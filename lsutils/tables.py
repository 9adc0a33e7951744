"""Tables of sweep rows: filter, reshape and render ``results.csv``.

Everything here works on the rows of :func:`lsutils.results.read_results`
(plain dictionaries, one per cell and threshold), without pandas:

* :func:`select` filters rows by column values;
* :func:`pivot` arranges one value over two keys as a :class:`Pivot`, and
  :func:`ratio` divides a column between two samplers per setting;
* :func:`markdown_table` renders Markdown for ``IPython.display.Markdown``;
  :func:`cell_table` (one line per cell) and :func:`summary_table` (ranges
  per group) build on it, with :func:`format_k_star` for the ``k*`` entries.

Used by chapter 7 (``notebooks/07_experiments.ipynb``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lsutils._checks import check_choice
from lsutils.sweep import RESULT_COLUMNS

__all__ = [
    # selection and pivots
    "Pivot",
    "pivot",
    "ratio",
    "select",
    # Markdown
    "cell_table",
    "format_k_star",
    "markdown_table",
    "summary_table",
]


#: Shown for a value that is missing or not a finite number (an en dash).
_DASH = "\u2013"

#: Columns of ``results.csv`` that differ between the rows of one cell (one
#: row per threshold); the other columns are the same in every row of a cell.
_PER_THRESHOLD = frozenset(
    {"threshold", "k_star", "k_star_lo", "k_star_hi", "k_star_reached"}
    | {"k_star_window_complete", "k_star_extrapolated", "k_star_bound"}
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or an en dash if missing or not finite."""
    if _is_number(value) and math.isfinite(value):
        return format(value, spec)
    return _DASH


def _check_one_threshold(rows: Sequence[Mapping[str, Any]], what: str) -> float | None:
    """Refuse rows of several thresholds or a cell given twice.

    Rows of ``results.csv`` hold one row per cell and threshold, so a cell
    passed with all its thresholds would count once per threshold.

    Parameters
    ----------
    rows
        Rows of :func:`lsutils.results.read_results` (rows without a
        ``threshold`` or ``cell`` entry are not checked for it).
    what
        The caller, for the message (``"trend"``).

    Returns
    -------
    float or None
        The one threshold of the rows, ``None`` if they hold none.

    Raises
    ------
    ValueError
        If the rows hold more than one threshold, or a ``cell`` value in more
        than one row.
    """
    thresholds: list[float] = []
    for row in rows:
        t = row.get("threshold")
        if _is_number(t) and not any(_matches(float(t), u) for u in thresholds):
            thresholds.append(float(t))
    if len(thresholds) > 1:
        thresholds.sort(reverse=True)
        raise ValueError(
            f"{what} got rows of {len(thresholds)} thresholds "
            f"({', '.join(f'{t:g}' for t in thresholds)}): results.csv has one row "
            "per cell and threshold, so each cell would count once per threshold; "
            "select one threshold first, e.g. tables.select(rows, "
            f"threshold={thresholds[-1]:g})"
        )
    counts = Counter(row.get("cell") for row in rows if row.get("cell") is not None)
    repeated = [(cid, n) for cid, n in counts.items() if n > 1]
    if repeated:
        cid, n = repeated[0]
        more = f" (and {len(repeated) - 1} more cells)" if len(repeated) > 1 else ""
        example = f"{thresholds[0]:g}" if thresholds else "1e-6"
        raise ValueError(
            f"{what} got cell {cid} in {n} rows{more}: each cell must occur once; "
            "select one threshold first, e.g. tables.select(rows, "
            f"threshold={example}), and do not pass the same rows twice"
        )
    return thresholds[0] if thresholds else None


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, float) and isinstance(value, float):
        return math.isclose(value, wanted, rel_tol=1e-9)
    return bool(value == wanted)


def select(rows: Iterable[Mapping[str, Any]], **where: Any) -> list[dict[str, Any]]:
    """Rows whose columns equal the given values (floats compared with isclose).

    A value may also be a tuple, list or set of accepted values.

    Parameters
    ----------
    rows
        Rows of :func:`lsutils.results.read_results`.
    **where
        ``column=value`` pairs, e.g. ``grid="main", threshold=1e-6``.

    Raises
    ------
    ValueError
        If a key is not a column of ``results.csv``.

    Examples
    --------
    >>> rows = [{"d": 1, "sampler": "gaussian"}, {"d": 2, "sampler": "random"}]
    >>> select(rows, d=(1, 2), sampler="random")
    [{'d': 2, 'sampler': 'random'}]
    """
    for key in where:
        check_choice("column", key, RESULT_COLUMNS)
    out = []
    for row in rows:
        keep = True
        for key, wanted in where.items():
            options = wanted if isinstance(wanted, tuple | list | set) else (wanted,)
            if not any(_matches(row.get(key), w) for w in options):
                keep = False
                break
        if keep:
            out.append(dict(row))
    return out


@dataclass(frozen=True)
class Pivot:
    """A table of one value over two keys, e.g. ``k*`` over sampler x ``d``.

    Attributes
    ----------
    index
        Names of the row keys.
    columns
        Name of the column key.
    row_labels, col_labels
        Sorted key values (row labels are tuples, one entry per index key).
    cells
        ``cells[i][j]``: the value for ``row_labels[i]``, ``col_labels[j]``, or
        ``None`` when no row has that combination.
    """

    index: tuple[str, ...]
    columns: str
    row_labels: list[tuple[Any, ...]]
    col_labels: list[Any]
    cells: list[list[Any]]

    def array(self) -> NDArray[np.float64]:
        """The cells as floats, ``nan`` where a value is missing or not numeric."""
        out = np.full((len(self.row_labels), len(self.col_labels)), np.nan)
        for (i, j), _ in np.ndenumerate(out):
            v = self.cells[i][j]
            if isinstance(v, int | float | np.number) and not isinstance(v, bool):
                out[i, j] = float(v)
        return out

    def to_markdown(self, fmt: Callable[[Any], str] = str, empty: str = "") -> str:
        """Render as a Markdown table; ``fmt`` formats each present cell."""
        header = [*self.index] + [
            f"{self.columns} = {c}" if j == 0 else str(c)
            for j, c in enumerate(self.col_labels)
        ]
        body = [
            [*label, *(empty if v is None else fmt(v) for v in row)]
            for label, row in zip(self.row_labels, self.cells, strict=True)
        ]
        return markdown_table(header, body)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def pivot(
    rows: Sequence[Mapping[str, Any]],
    index: str | Sequence[str],
    columns: str,
    value: str | Callable[[Mapping[str, Any]], Any],
) -> Pivot:
    """Arrange one value of ``rows`` as a table over ``index`` x ``columns``.

    Parameters
    ----------
    rows
        Rows of :func:`lsutils.results.read_results`, already filtered so
        that each combination of ``index`` and ``columns`` occurs at most once
        (for instance by ``grid`` and ``threshold``).
    index
        Column name(s) that label the table rows.
    columns
        Column name that labels the table columns.
    value
        Column name, or a function of the row (e.g. :func:`format_k_star`).

    Returns
    -------
    Pivot

    Raises
    ------
    ValueError
        If a combination occurs twice; the message names it and suggests the
        filter to add.

    Examples
    --------
    >>> rows = [{"sampler": "gaussian", "d": 1, "k_star": 10},
    ...         {"sampler": "gaussian", "d": 2, "k_star": 12}]
    >>> p = pivot(rows, "sampler", "d", "k_star")
    >>> p.row_labels, p.col_labels, p.cells
    ([('gaussian',)], [1, 2], [[10, 12]])
    """
    keys = (index,) if isinstance(index, str) else tuple(index)
    get = (lambda r: r.get(value)) if isinstance(value, str) else value
    found: dict[tuple[tuple[Any, ...], Any], Any] = {}
    for row in rows:
        key = (tuple(row.get(k) for k in keys), row.get(columns))
        if key in found:
            raise ValueError(
                f"{dict(zip(keys, key[0], strict=True))} with {columns}={key[1]!r} "
                "occurs more than once: filter the rows first (e.g. by grid, "
                "threshold or sigma) with select()"
            )
        found[key] = get(row)
    row_labels = sorted({k[0] for k in found}, key=lambda t: [_sort_key(x) for x in t])
    col_labels = sorted({k[1] for k in found}, key=_sort_key)
    cells = [[found.get((r, c)) for c in col_labels] for r in row_labels]
    return Pivot(keys, columns, row_labels, col_labels, cells)


def format_k_star(row: Mapping[str, Any], with_bound: bool = False) -> str:
    r"""``k*`` of a row with its band, or why it is missing.

    ``"249 [175, 249]"`` when reached (band from :math:`\pm 2` standard
    errors; ``"?"`` for an end of the band that is not reached; followed by
    ``" (window cut at m)"`` when the stability window after ``k*`` did not fit
    in ``m`` samples), ``"> 1000 (~3162)"`` when not reached within ``m`` but
    extrapolated by the power-law fit, ``"> 1000"`` otherwise, and
    ``"failed"`` for a failed cell. With ``with_bound=True`` the curvature
    bound :math:`\sqrt{C/\Delta}` is appended as ``"; bound 2270"`` where the
    cell has one.

    Examples
    --------
    >>> format_k_star({"status": "ok", "k_star_reached": True, "k_star": 249,
    ...                "k_star_lo": 175, "k_star_hi": None, "m": 1000})
    '249 [175, ?]'
    >>> format_k_star({"status": "ok", "k_star_reached": True, "k_star": 700,
    ...                "k_star_lo": 650, "k_star_hi": 800, "m": 1000,
    ...                "k_star_window_complete": False})
    '700 [650, 800] (window cut at m)'
    """
    if row.get("status") != "ok":
        return "failed"
    bound = row.get("k_star_bound")
    extra = ""
    if with_bound and isinstance(bound, float) and math.isfinite(bound):
        extra = f"; bound {bound:.0f}"
    if row.get("k_star_reached"):
        lo, hi = (row.get(c) for c in ("k_star_lo", "k_star_hi"))
        band = ", ".join("?" if b is None else str(b) for b in (lo, hi))
        cut = " (window cut at m)" if row.get("k_star_window_complete") is False else ""
        return f"{row['k_star']} [{band}]{cut}{extra}"
    ext = row.get("k_star_extrapolated")
    tail = f" (~{ext:.0f})" if isinstance(ext, float) and math.isfinite(ext) else ""
    return f"> {row.get('m')}{tail}{extra}"


def markdown_table(header: Sequence[Any], body: Sequence[Sequence[Any]]) -> str:
    """Render a Markdown table (for ``IPython.display.Markdown``).

    Parameters
    ----------
    header
        Column titles.
    body
        Rows, each with as many entries as ``header``; entries are turned into
        text with ``str`` (``|`` is escaped).

    Raises
    ------
    ValueError
        If a row has the wrong length.

    Examples
    --------
    >>> print(markdown_table(["d", "k*"], [[1, 10], [2, 12]]))
    | d | k* |
    | --- | --- |
    | 1 | 10 |
    | 2 | 12 |
    """

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(
                f"row {i} has {len(row)} entries but the header has {len(header)}: "
                "give one entry per column"
            )
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def cell_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table with one line per cell: setting, ``k*`` and diagnostics.

    Columns: data set, network (hidden widths or channels), ``d``, sampler,
    ``sigma``, ``k*`` with its band (:func:`format_k_star`; the header names the
    threshold), held-out accuracy, fitted slope with its standard error, and
    the median ratio of the Monte Carlo estimate to the closed form. A failed
    cell shows ``failed`` as its ``k*`` and an en dash for every value it lacks,
    and so does a value that does not apply (no closed form for the ``full``
    sampler).

    Parameters
    ----------
    rows
        Rows of :func:`lsutils.results.read_results` of one threshold, e.g.
        ``select(rows, threshold=1e-6)``.

    Returns
    -------
    str
        The Markdown table.

    Raises
    ------
    ValueError
        If the rows hold more than one threshold or a cell twice (each cell
        would show once per threshold).
    """
    threshold = _check_one_threshold(rows, "cell_table")
    k_head = "k*" if threshold is None else f"k* (\u0394 = {threshold:g})"
    head = ["dataset", "model", "layers", "d", "sampler", "sigma", k_head,
            "accuracy", "slope", "MC / closed form"]  # fmt: skip
    body = []
    for r in rows:
        layers = r.get("hidden") or r.get("channels") or _DASH
        slope, se = _fmt(r.get("slope"), ".2f"), _fmt(r.get("slope_se"), ".2f")
        if slope != _DASH and se != _DASH:
            slope = f"{slope} ± {se}"
        body.append(
            [r["dataset"], r["model"], layers, r["d"], r["sampler"],
             _fmt(r.get("sigma"), "g"), format_k_star(r),
             _fmt(r.get("test_accuracy"), ".3f"), slope,
             _fmt(r.get("mc_over_taylor"), ".2f")]
        )  # fmt: skip
    return markdown_table(head, body)


def summary_table(
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str] = ("dataset", "model"),
    columns: Sequence[str] = ("test_accuracy", "slope", "mc_over_taylor"),
) -> str:
    """Markdown table of ``min / median / max`` of ``columns`` per group.

    The ``cells`` column counts the distinct cells (column ``cell``) of each
    group, and each cell enters the statistics once (with its first row), so
    rows of several thresholds may be passed for columns that are the same in
    every row of a cell (accuracy, slope, ...). Missing (``nan``) values are
    left out; a column with none left shows an en dash.

    Parameters
    ----------
    rows
        Rows of :func:`lsutils.results.read_results`; of one threshold if a
        column depends on it (``k_star`` and its band, ``k_star_reached``,
        ``k_star_window_complete``, ``k_star_extrapolated``,
        ``k_star_bound``, ``threshold``).
    by
        Grouping columns.
    columns
        Numeric columns to summarise.

    Returns
    -------
    str
        The Markdown table.

    Raises
    ------
    ValueError
        If a name is not a column of ``results.csv``, or a column depends on
        the threshold and the rows hold more than one threshold or a cell
        twice.
    """
    for name in (*by, *columns):
        check_choice("column", name, RESULT_COLUMNS)
    per_threshold = [c for c in columns if c in _PER_THRESHOLD]
    if per_threshold:
        _check_one_threshold(rows, f"summary_table of {', '.join(per_threshold)}")
    groups: dict[tuple[Any, ...], dict[Any, Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        cid = row.get("cell")
        # one entry per cell (rows without a cell id count as cells of their own)
        key = ("row", i) if cid is None else ("cell", cid)
        groups.setdefault(tuple(row[b] for b in by), {}).setdefault(key, row)
    body = []
    for key in sorted(groups, key=lambda t: [_sort_key(v) for v in t]):
        cells = list(groups[key].values())
        stats = []
        for col in columns:
            v = np.array([r[col] for r in cells], dtype=np.float64)
            v = v[np.isfinite(v)]
            stats.append(
                f"{v.min():.3g} / {np.median(v):.3g} / {v.max():.3g}"
                if v.size
                else _DASH
            )
        body.append([*key, len(cells), *stats])
    return markdown_table([*by, "cells", *columns], body)


def ratio(
    rows: Sequence[Mapping[str, Any]],
    column: str,
    a: str = "gaussian",
    b: str = "random",
    index: Sequence[str] = ("dataset", "model", "d"),
) -> dict[tuple[Any, ...], float]:
    """Ratio of ``column`` between samplers ``a`` and ``b`` per setting.

    For example ``ratio(rows, "k_star")`` gives
    ``k*(top-d) / k*(random)`` for every ``(dataset, model, d)`` where both
    cells exist and the value is finite and positive.

    Parameters
    ----------
    rows
        Rows of one grid and one threshold (see :func:`pivot`).
    column
        Numeric column.
    a, b
        Sampler names of the numerator and the denominator.
    index
        Columns that identify a setting.

    Returns
    -------
    dict
        ``{setting: value_a / value_b}``.

    Examples
    --------
    >>> rows = [{"d": 1, "sampler": "gaussian", "k_star": 30},
    ...         {"d": 1, "sampler": "random", "k_star": 20}]
    >>> ratio(rows, "k_star", index=("d",))
    {(1,): 1.5}
    """
    table = pivot(rows, index, "sampler", column)
    if a not in table.col_labels or b not in table.col_labels:
        return {}
    arr = table.array()
    num = arr[:, table.col_labels.index(a)]
    den = arr[:, table.col_labels.index(b)]
    return {
        label: float(x / y)
        for label, x, y in zip(table.row_labels, num, den, strict=True)
        if np.isfinite(x) and np.isfinite(y) and y > 0
    }
