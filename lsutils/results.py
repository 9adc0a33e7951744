r"""Read a finished (or partial) sweep back: tables, pivots, trends, figures.

:func:`lsutils.sweep.run_sweep` writes ``results.csv`` (one row per cell and
threshold), ``curves.csv`` (:math:`\Delta_k` on a log grid of ``k``),
``config.yaml`` and ``versions.json``. This module turns those files into typed
Python records and NumPy arrays without pandas, and provides the few steps
chapter 7 needs on top of them:

* :func:`load_run` reads an output folder (missing or partial folders give an
  empty or partial :class:`SweepRun`, never invented numbers) and counts the
  finished cells against the sweep file;
* :func:`select`, :func:`pivot` and :func:`markdown_table` filter, reshape and
  render the rows;
* :func:`check_integrity` lists everything that contradicts the definitions
  (for instance a :math:`k^*` that shrinks when the threshold :math:`\Delta`
  shrinks);
* :func:`trend` measures a monotone association (Spearman's :math:`\rho`) such
  as width against :math:`\Delta_{100}`;
* :func:`plot_curve`, :func:`plot_series` and :func:`plot_pivot` draw what
  exists and say so on the axes when nothing does.

Used by chapter 7 (``notebooks/07_experiments.ipynb``).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator
from numpy.typing import NDArray

from lsutils._checks import check_choice, check_int_range
from lsutils.plotting import plot_delta, plot_heatmap
from lsutils.sweep import RESULT_COLUMNS, SweepSpec, cell_id

__all__ = [
    # reading
    "Curve",
    "SweepRun",
    "load_run",
    "read_curves",
    "read_results",
    # tables
    "Pivot",
    "cell_table",
    "format_k_star",
    "log_bin_means",
    "markdown_table",
    "pivot",
    "ratio",
    "select",
    "summary_table",
    # checks and statistics
    "EXACT_MAX_N",
    "Trend",
    "check_integrity",
    "trend",
    # figures
    "plot_curve",
    "plot_pivot",
    "plot_series",
]

logger = logging.getLogger(__name__)

_INT_COLUMNS = frozenset(
    {"m", "d", "samples", "orderings", "seed", "width", "depth"}
    | {"k_star", "k_star_lo", "k_star_hi"}
)
_FLOAT_COLUMNS = frozenset(
    {"sigma", "threshold", "k_star_extrapolated", "k_star_bound", "slope"}
    | {"slope_se", "mc_over_taylor", "delta_at_100", "test_accuracy"}
    | {"train_loss", "top_eigenvalue", "seconds"}
)
_BOOL_COLUMNS = frozenset({"k_star_reached"})
# booleans that are empty when they do not apply (no k* reached)
_OPTIONAL_BOOL_COLUMNS = frozenset({"k_star_window_complete"})
_CURVE_COLUMNS = ("cell", "k", "delta_mc", "delta_mc_se", "delta_taylor", "bound")


# ---------------------------------------------------------------------------
# reading


def _parse(column: str, text: str) -> Any:
    """Convert one CSV field of ``results.csv`` to its Python type.

    Empty integer fields become ``None``, empty float fields ``nan``, empty
    booleans ``False`` (``None`` for ``k_star_window_complete``); text columns
    stay strings.
    """
    if column in _INT_COLUMNS:
        return None if text == "" else int(float(text))
    if column in _FLOAT_COLUMNS:
        return math.nan if text == "" else float(text)
    if column in _BOOL_COLUMNS:
        return text.strip().lower() == "true"
    if column in _OPTIONAL_BOOL_COLUMNS:
        return None if text.strip() == "" else text.strip().lower() == "true"
    return text


def read_results(path: Path | str) -> list[dict[str, Any]]:
    """Read ``results.csv`` into one typed dictionary per row.

    Parameters
    ----------
    path
        The file written by :func:`lsutils.sweep.run_sweep`.

    Returns
    -------
    list of dict
        Keys are :data:`lsutils.sweep.RESULT_COLUMNS`. Integers (``m``, ``d``,
        ``k_star``, ...) are ``int`` or ``None`` when empty (for instance
        ``k_star`` when the threshold was not reached), floats are ``float``
        with ``nan`` when empty, ``k_star_reached`` is ``bool`` and
        ``k_star_window_complete`` is ``bool`` or ``None`` (no ``k*``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the header lacks a column of ``RESULT_COLUMNS`` or a field cannot be
        converted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} lacks column(s) {', '.join(missing)}: expected the "
                "header written by lsutils.sweep (RESULT_COLUMNS); rerun the sweep "
                "with this version of lsutils"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                rows.append({c: _parse(c, raw[c] or "") for c in RESULT_COLUMNS})
            except ValueError as err:
                raise ValueError(f"{path}, line {line}: {err}") from None
    return rows


@dataclass(frozen=True)
class Curve:
    r""":math:`\Delta_k` of one cell on the log grid of ``curves.csv``.

    Attributes
    ----------
    cell
        Cell identifier (column ``cell`` of ``results.csv``).
    k
        Sample sizes, increasing, shape ``(n,)``.
    delta_mc, delta_mc_se
        Monte Carlo estimate and its standard error.
    delta_taylor
        Closed form under the quadratic model; ``nan`` where not computed
        (the full-space sampler has none).
    bound
        The bound :math:`C / k^2`; ``nan`` where not computed.
    """

    cell: str
    k: NDArray[np.int64]
    delta_mc: NDArray[np.float64]
    delta_mc_se: NDArray[np.float64]
    delta_taylor: NDArray[np.float64]
    bound: NDArray[np.float64]

    def at(self, k: float) -> float:
        r"""Monte Carlo :math:`\Delta_k` interpolated log-log at ``k``."""
        x, v = np.log(self.k), self.delta_mc
        ok = v > 0
        return float(np.exp(np.interp(math.log(k), x[ok], np.log(v[ok]))))


def read_curves(path: Path | str) -> dict[str, Curve]:
    """Read ``curves.csv`` into one :class:`Curve` per cell.

    Parameters
    ----------
    path
        The file written by :func:`lsutils.sweep.run_sweep`.

    Returns
    -------
    dict
        ``{cell id: Curve}``, each curve sorted by ``k``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"curves file {path} does not exist")
    columns: dict[str, dict[str, list[float]]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _CURVE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} lacks column(s) {', '.join(missing)}: expected "
                f"{', '.join(_CURVE_COLUMNS)} as written by lsutils.sweep"
            )
        for raw in reader:
            entry = columns.setdefault(raw["cell"], {c: [] for c in _CURVE_COLUMNS[1:]})
            for c in _CURVE_COLUMNS[1:]:
                entry[c].append(math.nan if raw[c] == "" else float(raw[c]))
    curves = {}
    for cid, entry in columns.items():
        order = np.argsort(entry["k"], kind="stable")
        arrays = {c: np.asarray(v, dtype=np.float64)[order] for c, v in entry.items()}
        curves[cid] = Curve(
            cid,
            arrays["k"].astype(np.int64),
            arrays["delta_mc"],
            arrays["delta_mc_se"],
            arrays["delta_taylor"],
            arrays["bound"],
        )
    return curves


@dataclass(frozen=True)
class SweepRun:
    """What a sweep output folder holds, measured against its sweep file.

    Attributes
    ----------
    out
        The output folder.
    rows
        Rows of ``results.csv`` (:func:`read_results`); empty if absent.
    curves
        Curves of ``curves.csv`` (:func:`read_curves`); empty if absent.
    versions
        Contents of ``versions.json`` (packages, machine, and ``date`` /
        ``commit`` when the sweep recorded them); empty if absent.
    expected
        Cell identifiers of the sweep file, in run order (empty when no sweep
        file was given).
    thresholds
        Thresholds of the sweep file (empty when none was given).
    """

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, Curve] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    expected: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()

    @property
    def finished(self) -> list[str]:
        """Identifiers of the cells with rows, in first-seen order."""
        return list(dict.fromkeys(r["cell"] for r in self.rows))

    @property
    def n_ok(self) -> int:
        """Number of finished cells whose status is ``ok``."""
        return len({r["cell"] for r in self.rows if r["status"] == "ok"})

    @property
    def n_failed(self) -> int:
        """Number of finished cells recorded as failed."""
        return len({r["cell"] for r in self.rows if r["status"] != "ok"})

    @property
    def n_total(self) -> int:
        """Cells of the sweep file (or the finished ones without a sweep file)."""
        return len(self.expected) if self.expected else len(self.finished)

    @property
    def n_finished(self) -> int:
        """Finished cells that belong to the sweep file."""
        done = set(self.finished)
        if not self.expected:
            return len(done)
        return sum(cid in done for cid in self.expected)

    @property
    def complete(self) -> bool:
        """Whether every cell of the sweep file has finished."""
        return self.n_total > 0 and self.n_finished == self.n_total

    def status(self) -> str:
        """One sentence: how many cells finished, succeeded and failed."""
        return (
            f"{self.n_finished} of {self.n_total} cells finished "
            f"({self.n_ok} ok, {self.n_failed} failed)"
        )

    def admonition(self) -> str:
        """A MyST ``note`` (complete run) or ``warning`` (partial run) box.

        Render it with ``IPython.display.Markdown`` in a cell whose output is
        parsed as MyST (cell metadata ``mystnb: {markdown_format: myst}``).
        """
        if self.complete and self.n_failed == 0:
            return f"```{{note}}\nThe sweep is complete: {self.status()}.\n```"
        if self.complete:
            return (
                f"```{{warning}}\nThe sweep ran every cell, but some failed: "
                f"{self.status()}. The failed cells are marked in the tables "
                "and missing from the figures; the column status of "
                "results.csv gives the error of each.\n```"
            )
        return (
            f"```{{warning}}\nThe sweep is not complete: {self.status()}. "
            "Tables and figures show the finished cells only; missing settings "
            "are blank or marked *not computed yet* or *no finished cells*. "
            "Rerunning the sweep command resumes it where it stopped.\n```"
        )

    def provenance(self, config: str = "") -> str:
        """Say which run produced the numbers: sweep file, progress, versions.

        Parameters
        ----------
        config
            How to name the sweep file in the text, e.g.
            ``"experiments/full.yaml"``.
        """
        v = self.versions
        # lsutils.sweep (as of this writing) records packages and machine but
        # no date or commit; both are shown here as soon as it writes them.
        when = ", ".join(f"{k} {v[k]}" for k in ("date", "commit") if k in v)
        keys = ("lsutils", "torch", "numpy", "scipy", "backpack-for-pytorch")
        pkgs = ", ".join(f"{k} {v[k]}" for k in keys if k in v)
        parts = [
            f"sweep {config or '(no sweep file given)'} written to {self.out}",
            self.status(),
            when or "date and commit not recorded",
        ]
        if pkgs:
            parts.append(pkgs)
        if "cpus" in v:
            parts.append(f"{v['cpus']} CPU(s), {v.get('machine', '?')}")
        return "; ".join(parts)


def load_run(out: Path | str, spec: SweepSpec | None = None) -> SweepRun:
    """Read a sweep output folder, tolerating a missing or partial one.

    Parameters
    ----------
    out
        Folder given to :func:`lsutils.sweep.run_sweep` (``--out``).
    spec
        The sweep file it was run with (:func:`lsutils.sweep.load_sweep_config`);
        needed to count finished cells against all cells and to check that
        every cell has a row per threshold.

    Returns
    -------
    SweepRun
        Empty tables for files that do not exist yet; a warning is logged.
    """
    out = Path(out)
    rows: list[dict[str, Any]] = []
    curves: dict[str, Curve] = {}
    versions: dict[str, str] = {}
    if (out / "results.csv").is_file():
        rows = read_results(out / "results.csv")
    else:
        logger.warning("no results.csv in %s: the sweep has not finished a cell", out)
    if (out / "curves.csv").is_file():
        curves = read_curves(out / "curves.csv")
    if (out / "versions.json").is_file():
        versions = {k: str(v) for k, v in json.loads(
            (out / "versions.json").read_text()).items()}  # fmt: skip
    expected: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    if spec is not None:
        expected = tuple(cell_id(grid, cfg) for grid, cfg in spec.cells)
        thresholds = tuple(spec.thresholds)
    logger.info("read %d rows and %d curves from %s", len(rows), len(curves), out)
    return SweepRun(out, rows, curves, versions, expected, thresholds)


# ---------------------------------------------------------------------------
# tables


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
        Rows of :func:`read_results`.
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
        Rows of :func:`read_results`, already filtered so that each
        combination of ``index`` and ``columns`` occurs at most once (for
        instance by ``grid`` and ``threshold``).
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
    ``sigma``, ``k*`` with its band (:func:`format_k_star`), held-out accuracy,
    fitted slope with its standard error, and the median ratio of the Monte
    Carlo estimate to the closed form. Pass the rows of one threshold.
    """
    head = ["dataset", "model", "layers", "d", "sampler", "sigma", "k*",
            "accuracy", "slope", "MC / closed form"]  # fmt: skip
    body = [
        [r["dataset"], r["model"], r["hidden"] or r["channels"], r["d"],
         r["sampler"], f"{r['sigma']:g}", format_k_star(r),
         f"{r['test_accuracy']:.3f}", f"{r['slope']:.2f} ± {r['slope_se']:.2f}",
         f"{r['mc_over_taylor']:.2f}"]
        for r in rows
    ]  # fmt: skip
    return markdown_table(head, body)


def summary_table(
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str] = ("dataset", "model"),
    columns: Sequence[str] = ("test_accuracy", "slope", "mc_over_taylor"),
) -> str:
    """Markdown table of ``min / median / max`` of ``columns`` per group.

    Missing (``nan``) values are left out; a column with none left shows an
    en dash. The ``cells`` column counts the rows of each group.

    Raises
    ------
    ValueError
        If a name is not a column of ``results.csv``.
    """
    for name in (*by, *columns):
        check_choice("column", name, RESULT_COLUMNS)
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[b] for b in by), []).append(row)
    body = []
    for key in sorted(groups, key=lambda t: [_sort_key(v) for v in t]):
        cells = []
        for col in columns:
            v = np.array([r[col] for r in groups[key]], dtype=np.float64)
            v = v[np.isfinite(v)]
            cells.append(
                f"{v.min():.3g} / {np.median(v):.3g} / {v.max():.3g}"
                if v.size
                else "\u2013"
            )
        body.append([*key, len(groups[key]), *cells])
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


# ---------------------------------------------------------------------------
# checks and statistics


def check_integrity(run: SweepRun) -> list[str]:
    r"""List every way the tables contradict the definitions (empty if none).

    Checked: each finished cell has one row per threshold of the sweep file
    and belongs to it; every ``ok`` cell has a curve with increasing ``k`` and
    finite, non-negative :math:`\Delta_k`; held-out accuracy lies in
    :math:`[0, 1]`; the band satisfies ``k_lo <= k* <= k_hi`` where reached;
    and :math:`k^*` does not shrink when the threshold shrinks (a smaller
    tolerance cannot be met earlier, since a curve below the smaller threshold
    is also below the larger one).

    Parameters
    ----------
    run
        Output of :func:`load_run`.

    Returns
    -------
    list of str
        One sentence per problem found.
    """
    problems: list[str] = []
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for row in run.rows:
        by_cell.setdefault(row["cell"], []).append(row)
    expected = set(run.expected)
    for cid, rows in by_cell.items():
        thr = sorted((r["threshold"] for r in rows), reverse=True)
        if len(set(thr)) != len(thr):
            problems.append(f"cell {cid}: a threshold occurs twice")
        if run.thresholds and len(thr) != len(run.thresholds):
            problems.append(
                f"cell {cid}: {len(thr)} rows for {len(run.thresholds)} thresholds"
            )
        if expected and cid not in expected:
            problems.append(f"cell {cid} is not a cell of the sweep file")
        if rows[0]["status"] != "ok":
            continue
        problems.extend(_check_ok_cell(cid, rows, run.curves.get(cid)))
    return problems


def _check_ok_cell(
    cid: str, rows: list[dict[str, Any]], curve: Curve | None
) -> list[str]:
    problems = []
    if curve is None:
        problems.append(f"cell {cid}: status ok but no curve in curves.csv")
    elif np.any(np.diff(curve.k) <= 0) or not np.all(
        np.isfinite(curve.delta_mc) & (curve.delta_mc >= 0)
    ):
        problems.append(f"cell {cid}: curve has non-increasing k or a bad Delta_k")
    acc = rows[0]["test_accuracy"]
    if not 0.0 <= acc <= 1.0:
        problems.append(f"cell {cid}: test accuracy {acc} outside [0, 1]")
    last: int | None = 0
    for row in sorted(rows, key=lambda r: -r["threshold"]):
        ks, lo, hi = row["k_star"], row["k_star_lo"], row["k_star_hi"]
        if row["k_star_reached"]:
            if (
                ks is None
                or (lo is not None and lo > ks)
                or (hi is not None and hi < ks)
            ):
                problems.append(
                    f"cell {cid}, threshold {row['threshold']:g}: band "
                    f"[{lo}, {hi}] does not contain k* = {ks}"
                )
            if last is None:
                problems.append(
                    f"cell {cid}: k* reached at threshold {row['threshold']:g} "
                    "but not at a larger threshold"
                )
            elif ks is not None and ks < last:
                problems.append(
                    f"cell {cid}: k* decreases to {ks} at threshold "
                    f"{row['threshold']:g}, below its value at a larger threshold"
                )
            last = ks
        else:
            last = None
    return problems


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
        Rows with one entry per ``x`` value and group (filter by grid and one
        threshold first).
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
        If a column name is not a column of ``results.csv``.
    """
    from scipy.stats import spearmanr

    for name in (x, y, *by):
        check_choice("column", name, RESULT_COLUMNS)
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


# ---------------------------------------------------------------------------
# figures


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
        One entry of :attr:`SweepRun.curves`, or ``None``.
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
