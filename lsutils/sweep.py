"""A resumable grid of study runs: ``python -m lsutils sweep``.

The sweep file and its checks are in :mod:`lsutils.sweep_config`
(:func:`~lsutils.sweep_config.load_sweep_config`,
:func:`~lsutils.sweep_config.cell_id`).

Each finished cell is written atomically to ``<out>/cells/<id>.json``, with
the thresholds and ``curve_points`` it was recorded with and the commit,
package versions and date it was computed with. The tables ``results.csv``
(one row per cell and threshold) and ``curves.csv`` (``Delta_k`` on a log grid
of ``k``) are rebuilt from those files after every cell, and can be rebuilt
alone, without running a cell (:func:`rebuild_tables`, ``--tables-only``).
Killing a sweep loses at most the cell in progress, and a rerun skips every
finished cell, so nothing is lost or duplicated. A cell whose training
diverges or whose loss is NaN is recorded with its error in the ``status``
column instead of stopping the sweep. Trained networks and Hessian subspaces
are shared by the cells that need them and cached under ``<out>/.cache``.

Resuming in a folder with a changed sweep file: new grids or new values add
cells and finished cells are skipped; ``<out>/config.yaml`` then holds the new
sweep file (the one the tables are built from: cells of grids it no longer
lists stay in ``cells/`` but leave the tables). Changed ``thresholds`` or
``curve_points`` are refused, because they are applied when a cell is recorded
and a finished cell keeps only a subsampled curve: its ``k*`` cannot be read
off again. ``<out>/versions.json`` describes the last run (date, commit,
packages, machine) and lists under ``cells_by_version`` every distinct commit
and package set the finished cells were computed with, with their counts.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lsutils._checks import check_int_range
from lsutils.kstar import sufficient_size, window_complete
from lsutils.projection import Subspace
from lsutils.study import (
    SAMPLERS,
    DeltaResult,
    Prepared,
    StudyConfig,
    make_subspace,
    prepare,
    prepare_fields,
    run_delta,
)
from lsutils.sweep_config import (
    _CURVE_POINTS,
    SweepSpec,
    _yaml_float,
    cell_id,
)
from lsutils.taylor import TaylorTerms, taylor_terms

__all__ = [
    "RESULT_COLUMNS",
    "rebuild_tables",
    "run_sweep",
]

logger = logging.getLogger(__name__)

#: Columns of ``results.csv``, in order.
RESULT_COLUMNS = (
    "grid", "cell", "dataset", "model", "hidden", "width", "depth", "channels",
    "m", "d", "sampler", "sigma", "samples", "orderings", "seed", "threshold",
    "k_star", "k_star_lo", "k_star_hi", "k_star_reached",
    "k_star_window_complete", "k_star_extrapolated", "k_star_bound", "slope",
    "slope_se", "mc_over_taylor", "delta_at_100",
    "test_accuracy", "train_loss", "top_eigenvalue", "seconds", "status",
)  # fmt: skip


def _model_key(config: StudyConfig) -> str:
    """Identifier of the trained network a cell needs (shared across cells)."""
    blob = json.dumps(prepare_fields(config), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _git_commit(package: Path | None = None) -> str:
    """Commit of the repository lsutils runs from, or ``"unknown"``.

    ``"+dirty"`` is appended when the package's own files (the folder
    ``package``, default this package) differ from that commit; outputs
    elsewhere in the tree do not count.
    """
    import subprocess

    package = Path(__file__).resolve().parent if package is None else package

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=package, capture_output=True, text=True,
            timeout=10, check=False,
        )  # fmt: skip

    try:
        commit = git("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = commit and git("diff", "--quiet", "HEAD", "--", ".").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit or "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages and machine a sweep ran with."""
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "commit": _git_commit(),
           "python": platform.python_version(), "machine": platform.machine(),
           "platform": platform.platform(), "cpus": str(os.cpu_count()),
           "torch_threads": str(torch.get_num_threads())}  # fmt: skip
    for name in ("lsutils", "torch", "numpy", "scipy", "backpack-for-pytorch",
                 "curvlinops-for-pytorch", "matplotlib", "pyyaml"):  # fmt: skip
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary files left by a sweep process that was killed mid-write.

    Temporary names carry the writer's pid (``.<name>.<pid>.tmp``); files of a
    process that still runs are left alone.
    """
    for folder in (out, out / "cells", out / ".cache"):
        for tmp in folder.glob(".*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_subspace(path: Path) -> Subspace | None:
    """A cached subspace, or ``None`` (with a warning) if the file is unreadable."""
    try:
        return Subspace(**torch.load(path, weights_only=True))
    except Exception as err:  # any damage: recompute rather than fail every cell
        logger.warning("cache file %s is unreadable (%s): recomputing it", path, err)
        return None


class _Cache:
    """Trained networks and Hessian subspaces shared by the cells of a sweep."""

    def __init__(self, root: Path, spec: SweepSpec) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.prepared: dict[str, Prepared] = {}
        self.subspaces: dict[str, Subspace] = {}
        self.terms: dict[str, TaylorTerms] = {}
        # The Hessian subspace of a network is computed once with the largest
        # d any cell asks of it; smaller d take its leading rows.
        self.d_max: dict[str, int] = {}
        for _, cfg in spec.cells:
            key = _model_key(cfg)
            self.d_max[key] = max(self.d_max.get(key, 0), cfg.d)

    def get_prepared(self, config: StudyConfig, progressbar: bool) -> Prepared:
        key = _model_key(config)
        if key not in self.prepared:
            # Only one network is kept in memory: cells are ordered so that
            # those sharing a network mostly run together.
            self.prepared.clear()
            self.subspaces.clear()
            self.terms.clear()
            self.prepared[key] = prepare(config, progressbar=progressbar)
        return self.prepared[key]

    def get_subspace(self, config: StudyConfig, prepared: Prepared) -> Subspace:
        kind, _ = SAMPLERS[config.sampler]
        key = _model_key(config)
        if kind == "hessian":
            # The number of directions is part of the name: a sweep resumed
            # with a larger d computes (and keeps) a larger subspace.
            d = min(self.d_max[key], prepared.num_params - 1)
            name = f"{key}-hessian-{d}"
        else:
            name = f"{key}-{kind}-{config.d}"
            d = config.d
        if name not in self.subspaces:
            path = self.root / f"{name}.pt"
            cached = _load_subspace(path) if path.exists() else None
            if cached is not None:
                self.subspaces[name] = cached
            else:
                # One data chunk: the gradient graph is built once and reused by
                # every Hessian-vector product (about twice as fast at m=8000);
                # float32 products: CPU float64 convolutions are 10-20x slower,
                # and the residuals stay near 1e-6 (chapter 3 checks float64).
                extra: dict[str, Any] = {}
                if kind == "hessian":
                    extra = {"chunk_size": config.m, "dtype": torch.float32}
                sub = make_subspace(prepared, kind, d, seed=config.seed, **extra)
                if kind == "hessian":
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                    torch.save(dataclasses.asdict(sub), tmp)
                    os.replace(tmp, path)  # a killed run leaves no partial file
                self.subspaces[name] = sub
        return self.subspaces[name]

    def get_terms(
        self, config: StudyConfig, prepared: Prepared, sub: Subspace
    ) -> TaylorTerms | None:
        """Taylor terms of the shared Hessian subspace (``None`` for others)."""
        if sub.kind != "hessian":
            return None
        key = _model_key(config)
        if key not in self.terms:
            self.terms[key] = taylor_terms(
                prepared.model, sub, prepared.train.X, prepared.train.y
            )
        return self.terms[key]


def _log_grid(k: np.ndarray, n: int) -> np.ndarray:
    """Indices of about ``n`` log-spaced entries of the increasing array ``k``."""
    if len(k) <= n:
        return np.arange(len(k))
    targets = np.geomspace(k[0], k[-1], n)
    return np.unique(np.searchsorted(k, targets).clip(0, len(k) - 1))


def _cell_record(
    grid: str,
    cid: str,
    result: DeltaResult,
    thresholds: Sequence[float],
    seconds: float,
    curve_points: int,
) -> dict[str, Any]:
    c = result.config
    mc = result.mc
    ratio = float("nan")
    if result.taylor is not None:
        big = mc.k >= min(100, c.m // 2)
        ratio = float(np.median(mc.value[big] / result.taylor.value[big]))
    at100 = float(np.interp(100, mc.k, mc.value)) if c.m >= 100 else float("nan")
    common = {
        "grid": grid, "cell": cid, **_setting_columns(c),
        "slope": result.slope.slope, "slope_se": result.slope.slope_se,
        "mc_over_taylor": ratio, "delta_at_100": at100,
        "test_accuracy": result.test_accuracy, "train_loss": result.train_loss,
        "top_eigenvalue": float(result.eigenvalues[0])
        if result.eigenvalues is not None else "",
        "seconds": round(seconds, 2), "status": "ok",
    }  # fmt: skip
    rows = []
    for thr in thresholds:
        ks = sufficient_size(mc, thr)
        kb = result.bound.k_star(thr) if result.bound is not None else None
        rows.append({
            **common, "threshold": thr, "k_star": ks.k_star,
            "k_star_lo": ks.k_lo, "k_star_hi": ks.k_hi,
            "k_star_reached": ks.reached,
            "k_star_window_complete": ks.window_complete,
            "k_star_extrapolated": ks.k_extrapolated,
            "k_star_bound": None if kb is None else float(kb),
        })  # fmt: skip
    idx = _log_grid(mc.k, curve_points)
    nan = np.full(mc.k.shape, np.nan)
    taylor = result.taylor.value if result.taylor is not None else nan
    bound = result.bound.values(mc.k) if result.bound is not None else nan
    curve = {
        "k": mc.k[idx].astype(int).tolist(),
        "delta_mc": mc.value[idx].tolist(),
        "delta_mc_se": mc.se[idx].tolist(),
        "delta_taylor": [None if not np.isfinite(v) else float(v) for v in taylor[idx]],
        "bound": [None if not np.isfinite(v) else float(v) for v in bound[idx]],
    }
    return {"rows": rows, "curve": curve, "config": c.to_dict(), "grid": grid}


def _failed_record(
    grid: str, cid: str, config: StudyConfig, thresholds: Sequence[float], err: str
) -> dict[str, Any]:
    base = {col: "" for col in RESULT_COLUMNS}
    base.update(grid=grid, cell=cid, **_setting_columns(config),
                status=f"failed: {err}")  # fmt: skip
    rows = [{**base, "threshold": t} for t in thresholds]
    return {"rows": rows, "curve": None, "config": config.to_dict(), "grid": grid}


def _setting_columns(c: StudyConfig) -> dict[str, Any]:
    """The columns of ``results.csv`` that describe a cell's settings."""
    mlp = c.model == "mlp"
    return {
        "dataset": c.dataset, "model": c.model,
        "hidden": "-".join(map(str, c.hidden)) if mlp else "",
        "width": c.hidden[0] if mlp else "", "depth": len(c.hidden) if mlp else "",
        "channels": "" if mlp else "-".join(map(str, c.channels)),
        "m": c.m, "d": c.d, "sampler": c.sampler, "sigma": c.sigma,
        "samples": c.samples, "orderings": c.orderings, "seed": c.seed,
    }  # fmt: skip


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _read_cells(out: Path, spec: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """``(cell id, record)`` of every finished cell of ``spec``, in run order."""
    records = []
    for grid, cfg in spec.cells:
        cid = cell_id(grid, cfg)
        path = out / "cells" / f"{cid}.json"
        if not path.exists():
            continue
        try:
            records.append((cid, json.loads(path.read_text())))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not a valid cell record ({err}): move it away to run "
                "the cell again"
            ) from None
    return records


def _folder_curve_points(out: Path) -> int | None:
    """``curve_points`` of the sweep file last run in ``out`` (``None``: unknown).

    Cells written before each record held its ``curve_points`` have only this.
    """
    try:
        raw = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, Mapping):
        return None
    points = raw.get("curve_points", _CURVE_POINTS)
    if isinstance(points, bool) or not isinstance(points, int):
        return None
    return points


def _check_recorded_settings(
    spec: SweepSpec, out: Path, records: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """Refuse ``spec`` if its finished cells were recorded with other settings.

    ``thresholds`` and ``curve_points`` are applied when a cell is recorded and
    are not part of its id: a finished cell recorded with other values would
    be skipped and its old rows would be mixed into the new tables.

    Raises
    ------
    ValueError
        If the thresholds of a finished cell (its rows) or the ``curve_points``
        of a finished ``ok`` cell differ from those of ``spec``.
    """
    want = sorted(spec.thresholds, reverse=True)
    by_thr: dict[tuple[float, ...], list[str]] = {}
    by_points: dict[int, list[str]] = {}
    folder_points = None
    if any(r.get("curve") is not None and "curve_points" not in r for _, r in records):
        folder_points = _folder_curve_points(out)
    for cid, rec in records:
        thr = tuple(sorted({float(r["threshold"]) for r in rec["rows"]}, reverse=True))
        if list(thr) != want:
            by_thr.setdefault(thr, []).append(cid)
        if rec.get("curve") is None:
            continue  # a failed cell has no curve to subsample
        points = rec.get("curve_points", folder_points)
        if points is not None and points != spec.curve_points:
            by_points.setdefault(int(points), []).append(cid)
    if not (by_thr or by_points):
        return
    src = spec.path or "the sweep file"
    new_thr = ", ".join(map(_yaml_float, spec.thresholds))
    found, restore = [], []
    for thr, cids in by_thr.items():
        old = ", ".join(map(_yaml_float, thr))
        found.append(
            f"'thresholds' is [{new_thr}] but {_cells(cids)} in {out} were recorded "
            f"with [{old}]"
        )
        restore.append(f"thresholds: [{old}]")
    for points, cids in by_points.items():
        found.append(
            f"'curve_points' is {spec.curve_points} but {_cells(cids)} in {out} "
            f"were recorded with {points}"
        )
        restore.append(f"curve_points: {points}")
    raise ValueError(
        f"{src}: {'; '.join(found)}. Thresholds and curve_points are applied when "
        "a cell is recorded and a finished cell keeps only a subsampled curve, so "
        "it cannot be read off again: resuming would skip it and mix its old rows "
        "with the new settings. Write to a new output folder (--out), or restore "
        f"{' and '.join(restore)} in {src} ({out / 'config.yaml'} is the sweep "
        "file last run there)"
    )


def _cells(cids: Sequence[str]) -> str:
    """``"3 finished cell(s) (abc, def, ...)"`` for a message."""
    more = ", ..." if len(cids) > 3 else ""
    return f"{len(cids)} finished cell(s) ({', '.join(cids[:3])}{more})"


def _write_tables(
    out: Path, records: Sequence[tuple[str, dict[str, Any]]]
) -> tuple[int, int]:
    """Write ``results.csv`` and ``curves.csv`` from cell records.

    Returns
    -------
    tuple of int
        Numbers of ``ok`` and failed cells.
    """
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    n_ok = n_failed = 0
    for cid, rec in records:
        for row in rec["rows"]:
            ks = row.get("k_star")
            if "k_star_window_complete" not in row and ks not in (None, ""):
                # cells written before the column existed (same default rule)
                row["k_star_window_complete"] = window_complete(int(ks), int(row["m"]))
            ext = row.get("k_star_extrapolated")
            if ext not in (None, "") and float(ext) <= int(row["m"]):
                # cells written before sufficient_size kept only crossings
                # beyond m: a crossing within the curve is no extrapolation
                row["k_star_extrapolated"] = None
        rows.extend(rec["rows"])
        if rec["curve"] is None:
            n_failed += 1
            continue
        n_ok += 1
        cv = rec["curve"]
        # Each curve row names its setting, so curves.csv reads on its own.
        label = {
            key: rec["config"][key] for key in ("dataset", "model", "d", "sampler")
        }
        for i, k in enumerate(cv["k"]):
            curves.append({"cell": cid, **label, "k": k, **{
                name: cv[name][i]
                for name in ("delta_mc", "delta_mc_se", "delta_taylor", "bound")
            }})  # fmt: skip
    _write_csv(out / "results.csv", RESULT_COLUMNS, rows)
    cols = ("cell", "dataset", "model", "d", "sampler", "k", "delta_mc",
            "delta_mc_se", "delta_taylor", "bound")  # fmt: skip
    _write_csv(out / "curves.csv", cols, curves)
    return n_ok, n_failed


def _version_groups(
    records: Sequence[tuple[str, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Distinct commit and package sets of the cells, with counts and dates.

    Cells are grouped by everything in their ``provenance`` but the date and
    the thread count (a setting of the run, not a version); cells written
    before records held a provenance form one group whose ``commit`` (and
    dates) are ``"unknown"``. Groups are ordered by first date.
    """
    groups: dict[str, dict[str, Any]] = {}
    for _, rec in records:
        prov = rec.get("provenance") or {}
        fixed = {
            k: str(v) for k, v in prov.items() if k not in ("date", "torch_threads")
        }
        if not fixed:
            fixed = {"commit": "unknown"}
        date = str(prov.get("date", "unknown"))
        group = groups.setdefault(
            json.dumps(fixed, sort_keys=True),
            {**fixed, "cells": 0, "first_date": date, "last_date": date},
        )
        group["cells"] += 1
        group["first_date"] = min(group["first_date"], date)
        group["last_date"] = max(group["last_date"], date)
    return sorted(groups.values(), key=lambda g: g["first_date"].replace("unknown", ""))


def _write_versions(
    out: Path,
    versions: Mapping[str, str],
    records: Sequence[tuple[str, dict[str, Any]]],
) -> None:
    """Write ``versions.json``: this run's versions and those of every cell."""
    payload = {**versions, "cells_by_version": _version_groups(records)}
    _atomic_write(out / "versions.json", json.dumps(payload, indent=1))


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k)
                             for k in columns})  # fmt: skip
    os.replace(tmp, path)


def _in_order(
    spec: SweepSpec, found: Mapping[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """The records of ``found`` as ``(cell id, record)`` in the order of ``spec``."""
    ids = (cell_id(grid, cfg) for grid, cfg in spec.cells)
    return [(cid, found[cid]) for cid in ids if cid in found]


def rebuild_tables(spec: SweepSpec, out: Path | str) -> str:
    """Rewrite ``results.csv`` and ``curves.csv`` from the cell files alone.

    No cell is run, and nothing else in ``out`` is written (``config.yaml``,
    ``versions.json`` and the cell files stay as they are). Use it after an
    update of lsutils that changed the tables (a new column such as
    ``k_star_window_complete`` is filled in for old cell records), or to
    restore deleted tables: ``python -m lsutils sweep --config
    <out>/config.yaml --out <out> --tables-only``. The tables hold the cells of
    ``spec`` in its order; cell files of other settings are left out (a warning
    counts them). Do not run it while a sweep is writing to ``out``: that
    sweep rewrites the tables after each cell it finishes.

    Parameters
    ----------
    spec
        The sweep file the folder was run with (:func:`load_sweep_config`).
    out
        The output folder of :func:`run_sweep`.

    Returns
    -------
    str
        A one-paragraph summary: cells found, ok and failed, files written.

    Raises
    ------
    FileNotFoundError
        If ``out`` has no ``cells`` folder.
    ValueError
        If the thresholds or ``curve_points`` of ``spec`` differ from those the
        finished cells were recorded with, or none of the cell files belongs to
        ``spec`` (another sweep file was given).
    """
    out = Path(out)
    cells_dir = out / "cells"
    if not cells_dir.is_dir():
        raise FileNotFoundError(
            f"{cells_dir} does not exist: there are no cell files to build the "
            "tables from; check --out, or run the sweep without --tables-only"
        )
    records = _read_cells(out, spec)
    _check_recorded_settings(spec, out, records)
    ids = {cell_id(grid, cfg) for grid, cfg in spec.cells}
    stray = sorted(p.stem for p in cells_dir.glob("*.json") if p.stem not in ids)
    src = spec.path or "the sweep file"
    if stray and not records:
        raise ValueError(
            f"{src}: none of the {len(stray)} cell file(s) in {cells_dir} is a "
            "cell of this sweep file, so the tables would be empty: give the "
            f"sweep file the folder was run with (a copy is {out / 'config.yaml'})"
        )
    if stray:
        logger.warning(
            "%d cell file(s) in %s are not cells of %s and are left out of the "
            "tables (for example %s)",
            len(stray), cells_dir, src, stray[0],
        )  # fmt: skip
    n_ok, n_failed = _write_tables(out, records)
    logger.info("rebuilt the tables of %s from %d cell files", out, n_ok + n_failed)
    return (
        f"tables of {out} rebuilt from the cell files, no cell run: "
        f"{n_ok + n_failed} of {len(spec.cells)} cells finished ({n_ok} ok, "
        f"{n_failed} failed), {len(stray)} cell file(s) of other settings left "
        f"out; wrote {out / 'results.csv'} and {out / 'curves.csv'}"
    )


def run_sweep(
    spec: SweepSpec,
    out: Path | str,
    limit: int | None = None,
    progressbar: bool = True,
    tables_only: bool = False,
    retry_failed: bool = False,
) -> str:
    """Run the cells of ``spec`` that are not finished yet, writing to ``out``.

    Parameters
    ----------
    spec
        Output of :func:`load_sweep_config`.
    out
        Output folder; created if needed. A rerun resumes in it, also with a
        sweep file that adds grids or values (``config.yaml`` then holds the
        new file), but not with other ``thresholds`` or ``curve_points``.
    limit
        Run at most this many new cells (``None``: all; ``0``: none, but the
        tables, ``config.yaml`` and ``versions.json`` are rewritten).
    progressbar
        Show a progress bar with an ETA over the cells.
    tables_only
        Only rewrite ``results.csv`` and ``curves.csv`` from the cell files
        (:func:`rebuild_tables`); ``limit`` must then be ``None``.
    retry_failed
        Run the cells recorded as failed again (a failure is a result and is
        otherwise skipped like a finished cell; retry after fixing its cause,
        e.g. a data root that was missing).

    Returns
    -------
    str
        A one-paragraph summary: cells run, skipped, failed, time, paths.

    Raises
    ------
    ValueError
        If the finished cells in ``out`` were recorded with other
        ``thresholds`` or ``curve_points`` than ``spec`` (nothing is written
        then; use a new ``out``), if ``limit`` is negative, or if ``limit`` is
        given with ``tables_only``.
    """
    from tqdm import tqdm

    out = Path(out)
    if tables_only:
        if limit is not None:
            raise ValueError(
                f"limit={limit} was given with tables_only=True, which runs no "
                "cell: leave out one of them (--limit or --tables-only)"
            )
        return rebuild_tables(spec, out)
    if limit is not None:
        limit = check_int_range("limit", limit, 0)
    # The finished cells, read once and kept up to date below.
    found = dict(_read_cells(out, spec))
    # Before anything is written: refuse to mix settings with finished cells.
    _check_recorded_settings(spec, out, _in_order(spec, found))
    (out / "cells").mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    _atomic_write(out / "config.yaml", spec.source)
    versions = package_versions()
    _write_versions(out, versions, _in_order(spec, found))
    todo = [
        (grid, cid, cfg)
        for grid, cfg in spec.cells
        for cid in [cell_id(grid, cfg)]
        # a failed cell (no curve) is a result: run again only on request
        if cid not in found or (retry_failed and found[cid]["curve"] is None)
    ]
    skipped = len(spec.cells) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    logger.info(
        "sweep: %d cells, %d already finished, running %d; output in %s",
        len(spec.cells), skipped, len(todo), out,
    )  # fmt: skip
    cache = _Cache(out / ".cache", spec)
    start = time.perf_counter()
    bar = tqdm(todo, desc="sweep", unit="cell", disable=not progressbar)
    for grid, cid, cfg in bar:
        bar.set_postfix_str(f"{cfg.dataset} {cfg.model} d={cfg.d} {cfg.sampler}")
        t0 = time.perf_counter()
        try:
            prepared = cache.get_prepared(cfg, progressbar=False)
            sub = cache.get_subspace(cfg, prepared)
            terms = cache.get_terms(cfg, prepared, sub)
            result = run_delta(cfg, prepared=prepared, subspace=sub, terms=terms)
            rec = _cell_record(
                grid,
                cid,
                result,
                spec.thresholds,
                time.perf_counter() - t0,
                spec.curve_points,
            )
            # top-d directions are the leading d of a top-D Lanczos run shared
            # by the network's cells; D depends on the sweep file's largest d
            if sub.kind == "hessian":
                rec["hessian_directions"] = sub.dim
        except (ValueError, RuntimeError, FloatingPointError) as err:
            # A diverged training or a NaN loss is a result of this cell, not a
            # reason to stop the others.
            logger.warning("cell %s (%s) failed: %s", cid, grid, err)
            rec = _failed_record(grid, cid, cfg, spec.thresholds, str(err))
        # What the cell was recorded with and computed by (see module doc).
        rec["curve_points"] = spec.curve_points
        rec["provenance"] = {**versions, "date": _now()}
        _atomic_write(out / "cells" / f"{cid}.json", json.dumps(rec))
        found[cid] = rec
        _write_tables(out, _in_order(spec, found))
        _write_versions(out, versions, _in_order(spec, found))
    n_ok, n_failed = _write_tables(out, _in_order(spec, found))
    _write_versions(out, versions, _in_order(spec, found))
    remaining = len(spec.cells) - len(found)
    retry = (
        " (rerun with --retry-failed to run the failed cells again)" if n_failed else ""
    )
    return (
        f"sweep {out}: {len(todo)} cells run in {time.perf_counter() - start:.0f} s, "
        f"{skipped} skipped as finished, {n_ok} ok and {n_failed} failed in all"
        f"{retry}, {remaining} still to run; wrote {out / 'results.csv'} and "
        f"{out / 'curves.csv'}"
    )
