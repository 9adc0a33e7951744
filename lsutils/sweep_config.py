"""Sweep files: the YAML grid of settings that ``python -m lsutils sweep`` runs.

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

Running a sweep, resuming it and its outputs are in :mod:`lsutils.sweep`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lsutils._checks import check_int_range, check_positive_float
from lsutils.study import StudyConfig, check_d_before_training

__all__ = ["SweepSpec", "cell_id", "load_sweep_config"]

logger = logging.getLogger(__name__)

_FIELDS = {f.name for f in dataclasses.fields(StudyConfig)}
_TOP_KEYS = {"description", "base", "thresholds", "grids", "curve_points"}
_CURVE_POINTS = 120


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
    if path.is_dir():
        raise FileNotFoundError(
            f"sweep config {path} is a folder, not a file: pass the YAML file "
            "(an output folder keeps a copy as config.yaml)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} does not exist")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({err})") from None
    if not isinstance(raw, Mapping):
        raise _fail(path, "expected a mapping with keys base, thresholds, grids")
    _refuse_unknown(path, "", "key(s)", raw, _TOP_KEYS)
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
    if "threshold" in base:
        raise _fail(
            path,
            "base: field 'threshold' is not used by a sweep: k* is read off at "
            "every value of the top-level 'thresholds' list; move it there",
        )
    cells: list[tuple[str, StudyConfig]] = []
    # grid name + effective settings -> (grid index, grid values) of the grid
    # that produced the cell first
    seen: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, grid in enumerate(grids):
        name, axes = _parse_grid(path, i, grid)
        if "threshold" in axes:
            raise _fail(
                path,
                f"grid {name!r}: field 'threshold' is not used by a sweep: k* is "
                "read off at every value of the top-level 'thresholds' list; "
                "move the values there",
            )
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            config = _make_config(path, name, base, values)
            key = f"{name}:{_effective_key(config)}"
            if key in seen:
                raise _duplicate_cell(path, name, i, values, *seen[key])
            seen[key] = (i, values)
            cells.append((name, config))
    _check_d(path, cells)
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


def _effective_key(config: StudyConfig) -> str:
    """The settings that change a cell's numbers, as canonical JSON.

    Leaves out what the cell does not use: ``hidden`` for the CNN, ``channels``
    for the MLP, ``threshold`` (a sweep reads ``k*`` at every value of its
    ``thresholds``), and spells ``data_root`` in normal form.
    """
    values = config.to_dict()
    values.pop("threshold", None)
    values.pop("channels" if config.model == "mlp" else "hidden", None)
    if values.get("data_root") is not None:
        values["data_root"] = os.path.normpath(values["data_root"])
    return json.dumps(values, sort_keys=True)


def _check_d(path: Path, cells: Sequence[tuple[str, StudyConfig]]) -> None:
    """Refuse a ``d`` the cell's network cannot have (``d >= N``), before any run.

    The parameter count comes from the network built on PyTorch's ``meta``
    device (shapes only).
    """
    checked: set[tuple[str, int]] = set()
    for grid, config in cells:
        key = (
            json.dumps([config.model, config.model_kwargs], sort_keys=True),
            config.d,
        )
        if key in checked:
            continue
        checked.add(key)
        try:
            check_d_before_training(config)
        except ValueError as err:
            raise _fail(
                path, f"grid {grid!r}, field 'd' = {config.d} ({config.model}): {err}"
            ) from None


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
    _refuse_unknown(path, f"{where}: ", "field(s)", values, _FIELDS)


def _refuse_unknown(
    path: Path, where: str, what: str, given: Mapping[str, Any], known: set[str]
) -> None:
    """Raise naming the keys of ``given`` that are not in ``known``."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise _fail(
            path,
            f"{where}unknown {what} {', '.join(map(repr, unknown))}: expected "
            f"some of {', '.join(sorted(known))}",
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
