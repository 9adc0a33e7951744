"""A resumable grid of study runs: ``python -m lsutils sweep``.

A sweep file (YAML) names the settings shared by every cell (``base``), the
thresholds at which ``k*`` is read off, and one or more grids; each grid is the
Cartesian product of the lists it gives, over fields of
:class:`lsutils.study.StudyConfig`::

    base: {m: 2000, samples: 128, orderings: 8, sigma: 0.05}
    thresholds: [1.0e-5, 1.0e-6, 1.0e-7]
    curve_points: 120        # optional: k kept per curve in curves.csv
    grids:
      - name: main
        dataset: [mnist, fashion-mnist]
        model: [mlp, cnn]
        d: [1, 2, 5, 10]
        sampler: [gaussian, random]

Every key, and every value a cell uses, is checked when the file is read
(:func:`load_sweep_config`); a message names the file, the grid and the field.
A value listed twice in a grid, or a cell that two grids of the same name both
produce, is refused: it would run the same cell twice. A cell is identified by
its grid name and settings (:func:`cell_id`), so grids of different names may
share settings: each keeps its own rows (chapter 7 reads a grid as a whole).

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
import itertools
import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lsutils._checks import check_int_range, check_positive_float
from lsutils.kstar import sufficient_size, window_complete
from lsutils.projection import Subspace
from lsutils.study import (
    SAMPLERS,
    DeltaResult,
    Prepared,
    StudyConfig,
    make_subspace,
    prepare,
    run_delta,
)
from lsutils.taylor import TaylorTerms, taylor_terms

__all__ = [
    "RESULT_COLUMNS",
    "SweepSpec",
    "load_sweep_config",
    "rebuild_tables",
    "run_sweep",
]

logger = logging.getLogger(__name__)

_FIELDS = {f.name for f in dataclasses.fields(StudyConfig)}
_TOP_KEYS = {"description", "base", "thresholds", "grids", "curve_points"}
_CURVE_POINTS = 120

#: Columns of ``results.csv``, in order.
RESULT_COLUMNS = (
    "grid", "cell", "dataset", "model", "hidden", "width", "depth", "channels",
    "m", "d", "sampler", "sigma", "samples", "orderings", "seed", "threshold",
    "k_star", "k_star_lo", "k_star_hi", "k_star_reached",
    "k_star_window_complete", "k_star_extrapolated", "k_star_bound", "slope",
    "slope_se", "mc_over_taylor", "delta_at_100",
    "test_accuracy", "train_loss", "top_eigenvalue", "seconds", "status",
)  # fmt: skip


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file.

    Attributes
    ----------
    cells
        ``(grid name, config)`` for every cell, in the order they run; no two
        have the same :func:`cell_id`.
    thresholds
        Tolerances at which ``k*`` is read off each curve (distinct).
    source
        The YAML text, copied next to the results.
    curve_points
        Number of log-spaced ``k`` kept per curve in ``curves.csv``.
    path
        The file it was read from (``None`` when built by hand); named in
        error messages.
    """

    cells: tuple[tuple[str, StudyConfig], ...]
    thresholds: tuple[float, ...]
    source: str
    curve_points: int = _CURVE_POINTS
    path: Path | None = None


def _fail(path: Path | str, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def load_sweep_config(path: Path | str) -> SweepSpec:
    """Read and validate a sweep file.

    Every top-level key (``description``, ``base``, ``thresholds``,
    ``curve_points``, ``grids``) and every cell's :class:`StudyConfig` is
    checked here, before any cell runs.

    Parameters
    ----------
    path
        YAML file with ``base``, ``thresholds`` and ``grids``, and optionally
        ``description`` and ``curve_points``.

    Returns
    -------
    SweepSpec
        The cells in run order, the thresholds and the YAML text.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a key or value is wrong: the message names the file, the grid and
        the field. Also if a grid lists a value twice, or two grids of the same
        name produce the same cell (it would run twice and give duplicate rows).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} does not exist")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({err})") from None
    if not isinstance(raw, Mapping):
        raise _fail(path, "expected a mapping with keys base, thresholds, grids")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(
            path,
            f"unknown key(s) {', '.join(map(repr, unknown))}: expected some of "
            f"{', '.join(sorted(_TOP_KEYS))}",
        )
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise _fail(path, f"'description' must be text, got {description!r}")
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise _fail(
            path, f"'base' must be a mapping of StudyConfig fields, got {base!r}"
        )
    _check_fields(path, "base", base)
    thresholds = _parse_thresholds(path, raw.get("thresholds"))
    points = raw.get("curve_points", _CURVE_POINTS)
    try:
        points = check_int_range("curve_points", points, 2)
    except ValueError as err:
        raise _fail(
            path,
            f"'curve_points': {err}; it is the number of log-spaced k kept per "
            f"curve in curves.csv: give an integer such as {_CURVE_POINTS} (the "
            "default when the key is left out)",
        ) from None
    grids = raw.get("grids")
    if not isinstance(grids, list) or not grids:
        raise _fail(
            path, f"'grids' must be a non-empty list of mappings, got {grids!r}"
        )
    cells: list[tuple[str, StudyConfig]] = []
    # cell id -> (grid index, grid values) of the grid that produced it first
    seen: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, grid in enumerate(grids):
        name, axes = _parse_grid(path, i, grid)
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            config = _make_config(path, name, base, values)
            cid = cell_id(name, config)
            if cid in seen:
                raise _duplicate_cell(path, name, i, values, *seen[cid])
            seen[cid] = (i, values)
            cells.append((name, config))
    _log_shared_settings(path, cells)
    return SweepSpec(tuple(cells), thresholds, text, points, path)


def _parse_thresholds(path: Path, value: Any) -> tuple[float, ...]:
    """Distinct positive numbers of the ``thresholds`` list, in file order."""
    if not isinstance(value, list) or not value:
        raise _fail(
            path,
            "'thresholds' must be a non-empty list of numbers > 0 such as "
            f"[1.0e-5, 1.0e-6], got {value!r}",
        )
    try:
        thr = tuple(check_positive_float("threshold", t) for t in value)
    except ValueError as err:
        raise _fail(path, f"'thresholds': {err}") from None
    repeated = sorted({t for t in thr if thr.count(t) > 1}, reverse=True)
    if repeated:
        raise _fail(
            path,
            f"'thresholds' lists {', '.join(map(_yaml_float, repeated))} more than "
            f"once ({value!r}); each threshold gives one row per cell: remove the "
            "repeat",
        )
    return thr


def _parse_grid(path: Path, index: int, grid: Any) -> tuple[str, dict[str, list]]:
    """Name and axes of one entry of ``grids``, checked."""
    if not isinstance(grid, Mapping):
        raise _fail(
            path,
            f"grid {index} must be a mapping of field: [values], got {grid!r}",
        )
    name = grid.get("name", f"grid{index}")
    if not isinstance(name, str) or not name.strip():
        raise _fail(
            path,
            f"grid {index}: 'name' must be a non-empty text such as main, got "
            f"{name!r} (quote it if YAML reads it as a number)",
        )
    axes = {k: v for k, v in grid.items() if k != "name"}
    _check_fields(path, f"grid {name!r}", axes)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise _fail(
                path,
                f"grid {name!r}: field {key!r} must be a non-empty list, "
                f"got {values!r}",
            )
        for j, v in enumerate(values):
            if any(v == w for w in values[:j]):
                raise _fail(
                    path,
                    f"grid {name!r}: field {key!r} lists {v!r} more than once "
                    f"({values!r}); every value gives its own cells, so the "
                    "same cells would run twice and give duplicate rows: remove "
                    "the repeat",
                )
    return name, axes


def _make_config(
    path: Path, grid: str, base: Mapping[str, Any], values: Mapping[str, Any]
) -> StudyConfig:
    """Build one cell's config; errors name the file, the grid and the field."""
    merged = {**base, **values}
    try:
        return StudyConfig.from_dict(merged)
    except (ValueError, TypeError) as err:
        key = _culprit(merged, values)
        if key is None:
            where = ", ".join(f"{k}={v!r}" for k, v in merged.items())
            raise _fail(path, f"grid {grid!r}, cell with {where}: {err}") from None
        origin = f"grid {grid!r}" if key in values else "base"
        raise _fail(
            path,
            f"grid {grid!r}, field {key!r} = {merged[key]!r} (set in {origin}): {err}",
        ) from None


def _culprit(merged: Mapping[str, Any], values: Mapping[str, Any]) -> str | None:
    """The field whose value makes ``StudyConfig`` fail (``None``: not one).

    The first field (grid fields first, then base) without which the config is
    valid; failing that, the first one that is invalid on its own.
    """
    order = list(values) + [k for k in merged if k not in values]
    for key in order:
        try:
            StudyConfig.from_dict({k: v for k, v in merged.items() if k != key})
        except (ValueError, TypeError):
            continue
        return key
    for key in order:
        try:
            StudyConfig.from_dict({key: merged[key]})
        except (ValueError, TypeError):
            return key
    return None


def _duplicate_cell(
    path: Path,
    name: str,
    index: int,
    values: Mapping[str, Any],
    first_index: int,
    first_values: Mapping[str, Any],
) -> ValueError:
    """Error for a cell that a grid (or an earlier grid of its name) repeats."""
    setting = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "base only"
    if index == first_index:
        differ = ", ".join(
            f"{k}: {first_values[k]!r} and {v!r}"
            for k, v in values.items()
            if first_values.get(k) != v
        )
        return _fail(
            path,
            f"grid {name!r} gives the same cell twice ({setting}): the values "
            f"{differ} are the same setting; the cell would run twice and give "
            "duplicate rows: remove one of them",
        )
    return _fail(
        path,
        f"grids {first_index} and {index} (both named {name!r}) both produce the "
        f"cell {setting}; a cell is identified by its grid name and settings, so "
        "it would run twice and give duplicate rows: remove it from one of the "
        "grids (or give the grids different names if both rows are wanted)",
    )


def _log_shared_settings(path: Path, cells: Sequence[tuple[str, StudyConfig]]) -> None:
    """Log the settings that grids of different names share (kept, not errors)."""
    grids: dict[str, list[str]] = {}
    for name, config in cells:
        grids.setdefault(json.dumps(config.to_dict(), sort_keys=True), []).append(name)
    shared = [names for names in grids.values() if len(names) > 1]
    if shared:
        logger.info(
            "%s: %d setting(s) appear in more than one grid (%s); a cell is "
            "identified by grid name and settings, so each grid keeps its own "
            "rows and the setting is computed once per grid",
            path,
            len(shared),
            "; ".join(" and ".join(names) for names in shared[:3]),
        )


def _check_fields(path: Path, where: str, values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise _fail(
            path,
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(sorted(_FIELDS))}",
        )


def _yaml_float(value: float) -> str:
    """``value`` as YAML 1.1 reads it back as a float (``1.0e-05``, not ``1e-05``).

    Examples
    --------
    >>> _yaml_float(1e-5), _yaml_float(0.0001), _yaml_float(2.5e-7)
    ('1.0e-05', '0.0001', '2.5e-07')
    """
    mantissa, e, exponent = repr(float(value)).partition("e")
    if e and "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exponent


def cell_id(grid: str, config: StudyConfig) -> str:
    """Stable short identifier of a cell (hash of its grid and settings)."""
    blob = json.dumps([grid, config.to_dict()], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _model_key(config: StudyConfig) -> str:
    """Identifier of the trained network a cell needs (shared across cells)."""
    keep = ("dataset", "model", "hidden", "channels", "m", "n_test", "split",
            "data_root", "epochs", "lr", "batch_size", "seed")  # fmt: skip
    blob = json.dumps({k: config.to_dict()[k] for k in keep}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _git_commit() -> str:
    """Commit of the repository lsutils runs from, or ``"unknown"``."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
            text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return res.stdout.strip() or "unknown"


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
    for folder in (out, out / "cells"):
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
            name = f"{key}-hessian"
            d = min(self.d_max[key], prepared.num_params - 1)
        else:
            name = f"{key}-{kind}-{config.d}"
            d = config.d
        if name not in self.subspaces:
            path = self.root / f"{name}.pt"
            if path.exists():
                self.subspaces[name] = Subspace(**torch.load(path, weights_only=True))
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
                    torch.save(dataclasses.asdict(sub), path)
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
        "grid": grid, "cell": cid, "dataset": c.dataset, "model": c.model,
        "hidden": "-".join(map(str, c.hidden)) if c.model == "mlp" else "",
        "width": c.hidden[0] if c.model == "mlp" else "",
        "depth": len(c.hidden) if c.model == "mlp" else "",
        "channels": "-".join(map(str, c.channels)) if c.model == "cnn" else "",
        "m": c.m, "d": c.d, "sampler": c.sampler, "sigma": c.sigma,
        "samples": c.samples, "orderings": c.orderings, "seed": c.seed,
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
    c = config
    base = {col: "" for col in RESULT_COLUMNS}
    base.update(grid=grid, cell=cid, dataset=c.dataset, model=c.model, m=c.m,
                d=c.d, sampler=c.sampler, sigma=c.sigma, samples=c.samples,
                orderings=c.orderings, seed=c.seed,
                hidden="-".join(map(str, c.hidden)) if c.model == "mlp" else "",
                status=f"failed: {err}")  # fmt: skip
    rows = [{**base, "threshold": t} for t in thresholds]
    return {"rows": rows, "curve": None, "config": c.to_dict(), "grid": grid}


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


def _pending(out: Path, spec: SweepSpec) -> Iterator[tuple[str, str, StudyConfig]]:
    for grid, cfg in spec.cells:
        cid = cell_id(grid, cfg)
        if not (out / "cells" / f"{cid}.json").exists():
            yield grid, cid, cfg


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
    # Before anything is written: refuse to mix settings with finished cells.
    _check_recorded_settings(spec, out, _read_cells(out, spec))
    (out / "cells").mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    _atomic_write(out / "config.yaml", spec.source)
    versions = package_versions()
    _write_versions(out, versions, _read_cells(out, spec))
    todo = list(_pending(out, spec))
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
        except (ValueError, RuntimeError, FloatingPointError) as err:
            # A diverged training or a NaN loss is a result of this cell, not a
            # reason to stop the others.
            logger.warning("cell %s (%s) failed: %s", cid, grid, err)
            rec = _failed_record(grid, cid, cfg, spec.thresholds, str(err))
        # What the cell was recorded with and computed by (see module doc).
        rec["curve_points"] = spec.curve_points
        rec["provenance"] = {**versions, "date": _now()}
        _atomic_write(out / "cells" / f"{cid}.json", json.dumps(rec))
        records = _read_cells(out, spec)
        _write_tables(out, records)
        _write_versions(out, versions, records)
    records = _read_cells(out, spec)
    n_ok, n_failed = _write_tables(out, records)
    _write_versions(out, versions, records)
    remaining = len(list(_pending(out, spec)))
    return (
        f"sweep {out}: {len(todo)} cells run in {time.perf_counter() - start:.0f} s, "
        f"{skipped} skipped as finished, {n_ok} ok and {n_failed} failed in all, "
        f"{remaining} still to run; wrote {out / 'results.csv'} and "
        f"{out / 'curves.csv'}"
    )
