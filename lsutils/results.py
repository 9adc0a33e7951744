r"""Read a finished (or partial) sweep back into typed records, and check them.

:func:`lsutils.sweep.run_sweep` writes ``results.csv`` (one row per cell and
threshold), ``curves.csv`` (:math:`\Delta_k` on a log grid of ``k``),
``config.yaml`` and ``versions.json`` (with the commit and package versions of
every cell). This module turns those files into typed
Python records and NumPy arrays without pandas:

* :func:`load_run` reads an output folder (missing or partial folders give an
  empty or partial :class:`SweepRun`, never invented numbers) and counts the
  finished cells against the sweep file;
* :func:`check_integrity` lists everything that contradicts the definitions
  (for instance a :math:`k^*` that shrinks when the threshold :math:`\Delta`
  shrinks).

The steps chapter 7 takes on top of the rows have their own modules:
:mod:`lsutils.tables` (filter, reshape and render them),
:mod:`lsutils.trends` (rank correlations, log-binned means) and
:mod:`lsutils.sweep_plots` (figures).

Used by chapter 7 (``notebooks/07_experiments.ipynb``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lsutils.sweep import RESULT_COLUMNS
from lsutils.sweep_config import SweepSpec, cell_id

__all__ = [
    # reading
    "Curve",
    "SweepRun",
    "load_run",
    "read_curves",
    "read_results",
    # checks
    "check_integrity",
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
# packages named by SweepRun.provenance, in order
_PROVENANCE_PACKAGES = ("lsutils", "torch", "numpy", "scipy", "backpack-for-pytorch")


# ---------------------------------------------------------------------------
# reading


def _parse(column: str, text: str) -> Any:
    """Convert one CSV field of ``results.csv`` to its Python type.

    Empty integer fields become ``None``, empty float fields ``nan``, empty
    booleans ``False`` (``None`` for ``k_star_window_complete``); text columns
    stay strings.
    """
    if column in _INT_COLUMNS:
        if text == "":
            return None
        try:
            return int(text)  # exact, also for seeds beyond 2**53
        except ValueError:
            return int(float(text))  # "200.0", "1e3"
    if column in _FLOAT_COLUMNS:
        return math.nan if text == "" else float(text)
    if column in _BOOL_COLUMNS:
        return text.strip().lower() == "true"
    if column in _OPTIONAL_BOOL_COLUMNS:
        return None if text.strip() == "" else text.strip().lower() == "true"
    return text


def _rebuild_hint(out: Path) -> str:
    """How to rewrite the tables of ``out`` from its cell files (no cell rerun)."""
    return (
        "rebuild the tables from the cell files with this version of lsutils "
        "(no cell is rerun): python -m lsutils sweep --config "
        f"{out / 'config.yaml'} --out {out} --tables-only"
    )


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
        If the header lacks a column of ``RESULT_COLUMNS`` (the message gives
        the command that rebuilds the table from the cell files) or a field
        cannot be converted.
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
                "header written by lsutils.sweep (RESULT_COLUMNS), probably an "
                f"older version; {_rebuild_hint(path.parent)}"
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
                f"{', '.join(_CURVE_COLUMNS)} as written by lsutils.sweep; "
                f"{_rebuild_hint(path.parent)}"
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
        Contents of ``versions.json`` but ``cells_by_version``: packages,
        machine, ``date`` and ``commit`` of the last run of the sweep (the one
        that last wrote the folder); empty if absent.
    expected
        Cell identifiers of the sweep file, in run order (empty when no sweep
        file was given).
    thresholds
        Thresholds of the sweep file (empty when none was given).
    cell_versions
        ``cells_by_version`` of ``versions.json``: one dictionary per distinct
        commit and package set the finished cells were computed with (keys
        ``commit``, ``lsutils``, ``torch``, ... as in ``versions``, plus
        ``cells``, ``first_date`` and ``last_date``); cells written before
        lsutils recorded this have ``commit`` ``"unknown"``. Empty for folders
        written before.
    """

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, Curve] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    expected: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    cell_versions: tuple[dict[str, Any], ...] = ()

    @property
    def finished(self) -> list[str]:
        """Identifiers of the cells with rows, in first-seen order."""
        return list(dict.fromkeys(r["cell"] for r in self.rows))

    def _finished_with(self, ok: bool, of_spec: bool = True) -> set[str]:
        """Finished cells whose status is (not) ``ok``, of the sweep file or not."""
        cells = {r["cell"] for r in self.rows if (r["status"] == "ok") == ok}
        if not self.expected:
            return cells if of_spec else set()
        expected = set(self.expected)
        return cells & expected if of_spec else cells - expected

    @property
    def n_ok(self) -> int:
        """Finished cells of the sweep file whose status is ``ok``.

        Without a sweep file: every finished cell whose status is ``ok``.
        """
        return len(self._finished_with(ok=True))

    @property
    def n_failed(self) -> int:
        """Finished cells of the sweep file recorded as failed.

        Without a sweep file: every finished cell recorded as failed.
        """
        return len(self._finished_with(ok=False))

    @property
    def n_other(self) -> int:
        """Finished cells in the tables that are not cells of the sweep file.

        They are left out of :attr:`n_finished`, :attr:`n_ok` and
        :attr:`n_failed` (and :func:`check_integrity` reports each); ``0``
        without a sweep file.
        """
        return len(set(self.finished) - set(self.expected)) if self.expected else 0

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
        """One sentence: how many cells finished, succeeded and failed.

        The counts are over the cells of the sweep file; finished cells of
        other settings in the tables are named after them, not counted in.
        """
        text = (
            f"{self.n_finished} of {self.n_total} cells finished "
            f"({self.n_ok} ok, {self.n_failed} failed)"
        )
        if self.n_other:
            ok = len(self._finished_with(ok=True, of_spec=False))
            failed = len(self._finished_with(ok=False, of_spec=False))
            text += (
                f"; the tables also hold {self.n_other} cell(s) that are not in "
                f"the sweep file ({ok} ok, {failed} failed), not counted here"
            )
        return text

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

        The date, commit and packages are those of the last run of the sweep.
        When the finished cells were computed at other commits or with other
        packages (a sweep resumed across updates), each set is listed with
        its number of cells and dates, and the text says when they come from
        more than one commit; cells that predate this record count as unknown.

        Parameters
        ----------
        config
            How to name the sweep file in the text, e.g.
            ``"experiments/full.yaml"``.
        """
        v = self.versions
        # Folders written before lsutils.sweep recorded date and commit lack
        # them; the text says so.
        when = ", ".join(f"{k} {v[k]}" for k in ("date", "commit") if k in v)
        keys = _PROVENANCE_PACKAGES
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
        cells = self._cell_provenance()
        if cells:
            parts.append(cells)
        return "; ".join(parts)

    def _cell_provenance(self) -> str:
        """The commits and packages of the cells, when not just the last run's."""
        groups = self.cell_versions
        if not groups:
            return ""
        described = ", ".join(_describe_group(g) for g in groups)
        commits = {str(g.get("commit", "unknown")) for g in groups}
        known = commits - {"unknown"}
        if len(commits) > 1 and len(known) < len(commits):
            return (
                f"cells come from {len(known)} known commit(s) and an unknown "
                f"one: {described}"
            )
        if len(commits) > 1:
            return f"cells come from {len(known)} commits: {described}"
        if len(groups) > 1:
            return (
                f"cells come from {len(groups)} sets of versions (packages, Python "
                f"or machine) at one commit: {described}"
            )
        (group,) = groups
        if not any(k in group for k in _PROVENANCE_PACKAGES):
            return f"commit and versions of the cells unknown: {described}"
        keys = ("commit", *_PROVENANCE_PACKAGES)
        if all(group.get(k) == self.versions.get(k) for k in keys):
            return ""  # every cell computed as the last run says
        other = "cells computed at another commit or versions than the last run"
        return f"{other}: {described}"


def _describe_group(group: dict[str, Any]) -> str:
    """``"12 cell(s) at commit abc (lsutils 0.1, torch 2.1; <dates>)"``."""
    n = group.get("cells", "?")
    commit = group.get("commit", "unknown")
    pkgs = ", ".join(f"{k} {group[k]}" for k in _PROVENANCE_PACKAGES if k in group)
    if commit == "unknown" and not pkgs:
        return (
            f"{n} cell(s) of unknown commit and versions (written before "
            "lsutils recorded them per cell)"
        )
    first, last = group.get("first_date", "?"), group.get("last_date", "?")
    dates = first if first == last else f"{first} to {last}"
    return f"{n} cell(s) at commit {commit} ({pkgs}; {dates})"


def load_run(out: Path | str, spec: SweepSpec | None = None) -> SweepRun:
    """Read a sweep output folder, tolerating a missing or partial one.

    Parameters
    ----------
    out
        Folder given to :func:`lsutils.sweep.run_sweep` (``--out``).
    spec
        The sweep file it was run with (:func:`lsutils.sweep_config.load_sweep_config`);
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
    cell_versions: tuple[dict[str, Any], ...] = ()
    if (out / "versions.json").is_file():
        raw = json.loads((out / "versions.json").read_text())
        groups = raw.pop("cells_by_version", [])
        versions = {k: str(v) for k, v in raw.items()}
        cell_versions = tuple(dict(g) for g in groups if isinstance(g, dict))
    expected: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    if spec is not None:
        expected = tuple(cell_id(grid, cfg) for grid, cfg in spec.cells)
        thresholds = tuple(spec.thresholds)
    logger.info("read %d rows and %d curves from %s", len(rows), len(curves), out)
    return SweepRun(out, rows, curves, versions, expected, thresholds, cell_versions)


# ---------------------------------------------------------------------------
# checks


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
