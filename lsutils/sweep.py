"""A resumable grid of study runs: ``python -m lsutils sweep``.

A sweep file (YAML) names the settings shared by every cell (``base``), the
thresholds at which ``k*`` is read off, and one or more grids; each grid is the
Cartesian product of the lists it gives, over fields of
:class:`lsutils.study.StudyConfig`::

    base: {m: 2000, samples: 128, orderings: 8, sigma: 0.05}
    thresholds: [1.0e-5, 1.0e-6, 1.0e-7]
    grids:
      - name: main
        dataset: [mnist, fashion-mnist]
        model: [mlp, cnn]
        d: [1, 2, 5, 10]
        sampler: [gaussian, random]

Each finished cell is written atomically to ``<out>/cells/<id>.json``; the
tables ``results.csv`` (one row per cell and threshold) and ``curves.csv``
(``Delta_k`` on a log grid of ``k``) are rebuilt from those files after every
cell. Killing a sweep loses at most the cell in progress, and a rerun skips
every finished cell, so nothing is lost or duplicated. A cell whose training
diverges or whose loss is NaN is recorded with its error in the ``status``
column instead of stopping the sweep. Trained networks and Hessian subspaces
are shared by the cells that need them and cached under ``<out>/.cache``.
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

from lsutils._checks import check_positive_float
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
    "run_sweep",
]

logger = logging.getLogger(__name__)

_FIELDS = {f.name for f in dataclasses.fields(StudyConfig)}
_TOP_KEYS = {"description", "base", "thresholds", "grids", "curve_points"}

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
        ``(grid name, config)`` for every cell, in the order they run.
    thresholds
        Tolerances at which ``k*`` is read off each curve.
    source
        The YAML text, copied next to the results.
    curve_points
        Number of log-spaced ``k`` kept per curve in ``curves.csv``.
    """

    cells: tuple[tuple[str, StudyConfig], ...]
    thresholds: tuple[float, ...]
    source: str
    curve_points: int = 120


def _fail(path: Path | str, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def load_sweep_config(path: Path | str) -> SweepSpec:
    """Read and validate a sweep file.

    Parameters
    ----------
    path
        YAML file with ``base``, ``thresholds`` and ``grids``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a key or value is wrong; the message names the field.
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
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise _fail(path, "'base' must be a mapping of StudyConfig fields")
    _check_fields(path, "base", base)
    thresholds = raw.get("thresholds")
    if not isinstance(thresholds, list) or not thresholds:
        raise _fail(path, "'thresholds' must be a non-empty list of numbers > 0")
    try:
        thr = tuple(check_positive_float("threshold", t) for t in thresholds)
    except ValueError as err:
        raise _fail(path, f"'thresholds': {err}") from None
    grids = raw.get("grids")
    if not isinstance(grids, list) or not grids:
        raise _fail(path, "'grids' must be a non-empty list of mappings")
    cells: list[tuple[str, StudyConfig]] = []
    for i, grid in enumerate(grids):
        if not isinstance(grid, Mapping):
            raise _fail(path, f"grid {i} must be a mapping of field: [values]")
        name = str(grid.get("name", f"grid{i}"))
        axes = {k: v for k, v in grid.items() if k != "name"}
        _check_fields(path, f"grid {name!r}", axes)
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise _fail(
                    path,
                    f"grid {name!r}: field {key!r} must be a non-empty list, "
                    f"got {values!r}",
                )
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            values = {**base, **dict(zip(keys, combo, strict=True))}
            try:
                config = StudyConfig.from_dict(values)
            except (ValueError, TypeError) as err:
                raise _fail(path, f"grid {name!r}: {err}") from None
            cells.append((name, config))
    points = raw.get("curve_points", 120)
    return SweepSpec(tuple(cells), thr, text, int(points))


def _check_fields(path: Path, where: str, values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise _fail(
            path,
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(sorted(_FIELDS))}",
        )


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


def _rebuild_tables(out: Path, spec: SweepSpec) -> tuple[int, int]:
    """Write ``results.csv`` and ``curves.csv`` from the finished cell files."""
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    n_ok = n_failed = 0
    for grid, cfg in spec.cells:
        cid = cell_id(grid, cfg)
        path = out / "cells" / f"{cid}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
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


def run_sweep(
    spec: SweepSpec,
    out: Path | str,
    limit: int | None = None,
    progressbar: bool = True,
) -> str:
    """Run the cells of ``spec`` that are not finished yet, writing to ``out``.

    Parameters
    ----------
    spec
        Output of :func:`load_sweep_config`.
    out
        Output folder; created if needed. A rerun resumes in it.
    limit
        Run at most this many new cells (``None``: all).
    progressbar
        Show a progress bar with an ETA over the cells.

    Returns
    -------
    str
        A one-paragraph summary: cells run, skipped, failed, time, paths.
    """
    from tqdm import tqdm

    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "config.yaml", spec.source)
    _atomic_write(out / "versions.json", json.dumps(package_versions(), indent=1))
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
        _atomic_write(out / "cells" / f"{cid}.json", json.dumps(rec))
        _rebuild_tables(out, spec)
    n_ok, n_failed = _rebuild_tables(out, spec)
    remaining = len(list(_pending(out, spec)))
    return (
        f"sweep {out}: {len(todo)} cells run in {time.perf_counter() - start:.0f} s, "
        f"{skipped} skipped as finished, {n_ok} ok and {n_failed} failed in all, "
        f"{remaining} still to run; wrote {out / 'results.csv'} and "
        f"{out / 'curves.csv'}"
    )
