"""Tests of lsutils.sweep and lsutils.sweep_config (checks, resume, tables, provenance).

The end-to-end sweep tests (run, resume, kill) are in test_study.py; these run
tiny real sweeps of one or two cells (a few seconds each).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from lsutils import results, sweep
from lsutils.sweep import RESULT_COLUMNS, rebuild_tables, run_sweep
from lsutils.sweep_config import SweepSpec, cell_id, load_sweep_config

BASE = "base: {m: 200, n_test: 100, samples: 16, orderings: 2, epochs: 2, sigma: 0.01}"
SWEEP = f"""
{BASE}
thresholds: [1.0e-4, 1.0e-6]
grids:
  - name: main
    dataset: [mnist]
    model: [mlp]
    d: [1]
    sampler: [gaussian, random]
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _spec(tmp_path: Path, text: str, name: str = "s.yaml") -> SweepSpec:
    return load_sweep_config(_write(tmp_path / name, text))


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def _snapshot(out: Path) -> dict[str, bytes]:
    """Contents of every file of ``out`` but the tables and the cache."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("results.csv", "curves.csv")
        and ".cache" not in p.parts
    }  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, SweepSpec]:
    """A finished 2-cell sweep; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    spec = _spec(root, SWEEP)
    run_sweep(spec, root / "out", progressbar=False)
    return root / "out", spec


def _copy(finished: tuple[Path, SweepSpec], dest: Path) -> Path:
    import shutil

    out, _ = finished
    shutil.copytree(out, dest, ignore=shutil.ignore_patterns(".cache"))
    return dest


# ----------------------------------------------------------- sweep-file checks


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("curve_points: many", r"bad.yaml: 'curve_points': curve_points must be an "
         r"integer, got the string 'many'.*such as 120"),
        ("curve_points: -5", r"bad.yaml: 'curve_points': curve_points=-5 is out of "
         r"range: expected 2 <= curve_points"),
        ("curve_points: 1", r"'curve_points': curve_points=1 is out of range"),
        ("curve_points: true", r"'curve_points': curve_points must be an integer, "
         r"got the bool True"),
        ("curve_points: null", r"'curve_points': curve_points must be an integer"),
        ("description: [a, b]", r"'description' must be text, got \['a', 'b'\]"),
        ("base: [1, 2]", r"'base' must be a mapping of StudyConfig fields"),
    ],
)  # fmt: skip
def test_top_level_values_are_checked(tmp_path, text, message):
    good = "thresholds: [1.0e-5]\ngrids: [{d: [1]}]\n"
    with pytest.raises(ValueError, match=message):
        _spec(tmp_path, f"{good}{text}\n", "bad.yaml")


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ("[1e-5]", r"bad.yaml: 'thresholds': threshold must be a number, got the "
         r"string '1e-5' .*write 1.0e-5"),
        ("[1.0e-5, 1.0e-6, 1.0e-5]", r"bad.yaml: 'thresholds' lists 1.0e-05 more "
         r"than once .*remove the repeat"),
        ("[true]", r"'thresholds': threshold must be a number, got the bool True"),
        ("1.0e-5", r"'thresholds' must be a non-empty list of numbers > 0 such as "
         r"\[1.0e-5, 1.0e-6\], got 1e-05"),
    ],
)  # fmt: skip
def test_thresholds_are_checked(tmp_path, thresholds, message):
    text = f"thresholds: {thresholds}\ngrids: [{{d: [1]}}]\n"
    with pytest.raises(ValueError, match=message):
        _spec(tmp_path, text, "bad.yaml")


def test_grid_names_are_checked(tmp_path):
    text = "thresholds: [1.0e-5]\ngrids: [{name: 3, d: [1]}]\n"
    with pytest.raises(ValueError, match=r"grid 0: 'name' must be a non-empty text"):
        _spec(tmp_path, text, "bad.yaml")
    with pytest.raises(ValueError, match=r"'grids' must be a non-empty list"):
        _spec(tmp_path, "thresholds: [1.0e-5]\ngrids: {d: [1]}\n", "bad.yaml")


@pytest.mark.parametrize(
    ("grids", "message"),
    [
        ("[{name: main, d: [1, 2, 2]}]", r"bad.yaml: grid 'main': field 'd' lists 2 "
         r"more than once \(\[1, 2, 2\]\).*remove the repeat"),
        ("[{name: main, sigma: [0.01, 1.0e-2]}]", r"grid 'main': field 'sigma' "
         r"lists 0.01 more than once"),
        ("[{name: w, hidden: [[64], 64]}]", r"grid 'w' gives the same cell twice "
         r"\(hidden=64\): the values hidden: \[64\] and 64 are the same setting"),
        ("[{name: main, d: [1, 2]}, {name: main, d: [2, 3]}]", r"grids 0 and 1 "
         r"\(both named 'main'\) both produce the cell d=2.*run twice"),
        # the CNN does not use hidden: these are one cell twice
        ("[{name: c, model: [cnn], hidden: [[16], [32]]}]", r"grid 'c' gives the "
         r"same cell twice"),
        ("[{name: r, data_root: [/x, /x/]}]", r"grid 'r' gives the same cell twice"),
    ],
)  # fmt: skip
def test_duplicate_cells_are_refused(tmp_path, grids, message):
    text = f"thresholds: [1.0e-5]\ngrids: {grids}\n"
    with pytest.raises(ValueError, match=message):
        _spec(tmp_path, text, "bad.yaml")


def test_same_settings_in_differently_named_grids_are_separate_cells(tmp_path, caplog):
    text = "thresholds: [1.0e-5]\ngrids: [{name: a, d: [1, 2]}, {name: b, d: [2]}]\n"
    with caplog.at_level(logging.INFO, logger="lsutils.sweep_config"):
        spec = _spec(tmp_path, text)
    assert [g for g, _ in spec.cells] == ["a", "a", "b"]
    assert spec.cells[1][1] == spec.cells[2][1]
    assert len({cell_id(g, c) for g, c in spec.cells}) == 3
    assert "1 setting(s) appear in more than one grid (a and b)" in caplog.text


@pytest.mark.parametrize(
    ("base", "grid", "message"),
    [
        # PyYAML 1.1 reads 1e-2 (no dot) as the string '1e-2'
        ("{sigma: 1e-2}", "d: [1]", r"bad.yaml: grid 'main', field 'sigma' = "
         r"'1e-2' \(set in base\): sigma must be a number, got the string '1e-2'"),
        ("{}", "sigma: [-1.0]", r"bad.yaml: grid 'main', field 'sigma' = -1.0 "
         r"\(set in grid 'main'\): sigma must be finite and > 0"),
        ("{}", "m: ['200']", r"bad.yaml: grid 'main', field 'm' = '200' \(set in "
         r"grid 'main'\): m must be an integer, got the string '200'"),
        ("{hidden: null}", "d: [1]", r"grid 'main', field 'hidden' = None \(set "
         r"in base\): hidden must be a list"),
    ],
)  # fmt: skip
def test_study_config_errors_name_file_grid_and_field(tmp_path, base, grid, message):
    text = f"base: {base}\nthresholds: [1.0e-5]\ngrids:\n  - name: main\n    {grid}\n"
    with pytest.raises(ValueError, match=message):
        _spec(tmp_path, text, "bad.yaml")


def test_spec_records_its_file(tmp_path):
    spec = _spec(tmp_path, SWEEP)
    assert spec.path == tmp_path / "s.yaml" and spec.curve_points == 120
    assert spec.thresholds == (1e-4, 1e-6)


# ------------------------------------------------------------- table rebuilds


def _make_old(out: Path) -> None:
    """Turn ``out`` into a folder written before k_star_window_complete."""
    for path in (out / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        for row in rec["rows"]:
            del row["k_star_window_complete"]
        for key in ("curve_points", "provenance"):
            rec.pop(key)
        path.write_text(json.dumps(rec))
    old = [c for c in RESULT_COLUMNS if c != "k_star_window_complete"]
    rows = _rows(out)
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_rebuild_tables_from_old_cells(finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    _, spec = finished
    expected = results.read_results(out / "results.csv")
    _make_old(out)
    command = (
        f"python -m lsutils sweep --config {out / 'config.yaml'} --out {out} "
        "--tables-only"
    )
    with pytest.raises(ValueError, match=r"lacks column\(s\) k_star_window_complete"):
        results.read_results(out / "results.csv")
    with pytest.raises(ValueError) as info:
        results.read_results(out / "results.csv")
    assert command in str(info.value)
    before = _snapshot(out)
    (out / "curves.csv").unlink()
    summary = rebuild_tables(load_sweep_config(out / "config.yaml"), out)
    assert "2 of 2 cells finished (2 ok, 0 failed)" in summary
    assert "no cell run" in summary
    assert results.read_results(out / "results.csv") == expected
    assert len(results.read_curves(out / "curves.csv")) == 2
    assert _snapshot(out) == before  # cells, config.yaml, versions.json untouched
    # the same through run_sweep, and no cell is run for a missing cell file
    gone = out / "cells" / f"{cell_id(*spec.cells[0])}.json"
    gone.unlink()
    summary = run_sweep(spec, out, progressbar=False, tables_only=True)
    assert "1 of 2 cells finished" in summary
    assert len(_rows(out)) == 2 and not gone.exists()


def test_rebuild_tables_errors(finished, tmp_path):
    _, spec = finished
    with pytest.raises(FileNotFoundError, match=r"cells does not exist: there are "
                       r"no cell files"):  # fmt: skip
        rebuild_tables(spec, tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"limit=3 was given with tables_only=True"):
        run_sweep(spec, tmp_path / "nothing", limit=3, tables_only=True)
    out = _copy(finished, tmp_path / "out")
    other = _spec(tmp_path, SWEEP.replace("name: main", "name: other"), "o.yaml")
    with pytest.raises(ValueError, match=r"o.yaml: none of the 2 cell file\(s\) in "
                       r".* is a cell of this sweep file"):  # fmt: skip
        rebuild_tables(other, out)
    wider = _spec(tmp_path, SWEEP.replace("d: [1]", "d: [1, 2]"), "w.yaml")
    assert "2 of 4 cells finished" in rebuild_tables(wider, out)


# ------------------------------------------------------------------ resuming


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("thresholds: [1.0e-4, 1.0e-6]", "thresholds: [1.0e-7]",
         r"s2.yaml: 'thresholds' is \[1.0e-07\] but 2 finished cell\(s\) "
         r"\(\w+, \w+\) in .* were recorded with \[0.0001, 1.0e-06\].*new output "
         r"folder \(--out\), or restore thresholds: \[0.0001, 1.0e-06\] in .*s2.yaml"),
        ("thresholds: [1.0e-4, 1.0e-6]", "thresholds: [1.0e-4]",
         r"'thresholds' is \[0.0001\] but 2 finished"),
        ("grids:", "curve_points: 40\ngrids:",
         r"'curve_points' is 40 but 2 finished cell\(s\) .* were recorded with "
         r"120.*restore curve_points: 120"),
    ],
)  # fmt: skip
def test_resume_refuses_other_thresholds_or_curve_points(
    finished, tmp_path, old, new, message
):
    out = _copy(finished, tmp_path / "out")
    before = _snapshot(out) | {"results.csv": (out / "results.csv").read_bytes()}
    spec = _spec(tmp_path, SWEEP.replace(old, new), "s2.yaml")
    with pytest.raises(ValueError, match=message):
        run_sweep(spec, out, progressbar=False)
    with pytest.raises(ValueError, match=message):
        rebuild_tables(spec, out)
    after = _snapshot(out) | {"results.csv": (out / "results.csv").read_bytes()}
    assert after == before  # nothing written


def test_resume_checks_old_cells_against_the_folder_config(finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    _make_old(out)  # cells without curve_points: the folder's config.yaml has it
    spec = _spec(tmp_path, SWEEP.replace("grids:", "curve_points: 40\ngrids:"))
    with pytest.raises(ValueError, match=r"'curve_points' is 40 but 2 finished"):
        run_sweep(spec, out, progressbar=False)
    same = _spec(tmp_path, SWEEP.replace("[1.0e-4, 1.0e-6]", "[1.0e-6, 1.0e-4]"))
    assert "0 cells run" in run_sweep(same, out, progressbar=False)


def test_resume_with_more_cells_and_same_thresholds(finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    text = SWEEP.replace("d: [1]", "d: [1, 2]").replace(
        "[gaussian, random]", "[gaussian]"
    )
    spec = _spec(tmp_path, text, "more.yaml")
    summary = run_sweep(spec, out, progressbar=False)
    assert "1 cells run" in summary and "1 skipped as finished" in summary
    assert (out / "config.yaml").read_text() == text  # the new sweep file
    rows = _rows(out)
    assert len(rows) == 4 and {r["d"] for r in rows} == {"1", "2"}
    assert {float(r["threshold"]) for r in rows} == {1e-4, 1e-6}
    with pytest.raises(ValueError, match=r"limit=-1 is out of range"):
        run_sweep(spec, out, limit=-1, progressbar=False)


# ---------------------------------------------------------------- provenance


def test_provenance_per_cell_and_commit(tmp_path, monkeypatch):
    spec = _spec(tmp_path, SWEEP)
    out = tmp_path / "out"
    monkeypatch.setattr(sweep, "_git_commit", lambda: "aaaaaaa")
    run_sweep(spec, out, limit=1, progressbar=False)
    monkeypatch.setattr(sweep, "_git_commit", lambda: "bbbbbbb")
    run_sweep(spec, out, progressbar=False)
    first, second = (cell_id(g, c) for g, c in spec.cells)
    for cid, commit in ((first, "aaaaaaa"), (second, "bbbbbbb")):
        rec = json.loads((out / "cells" / f"{cid}.json").read_text())
        prov = rec["provenance"]
        assert prov["commit"] == commit and prov["date"].startswith("20")
        assert prov["torch"] and prov["lsutils"] and rec["curve_points"] == 120
    versions = json.loads((out / "versions.json").read_text())
    assert versions["commit"] == "bbbbbbb"  # the last run
    groups = versions["cells_by_version"]
    assert [(g["commit"], g["cells"]) for g in groups] == [
        ("aaaaaaa", 1),
        ("bbbbbbb", 1),
    ]
    run = results.load_run(out, spec)
    assert (
        run.versions["commit"] == "bbbbbbb" and "cells_by_version" not in run.versions
    )
    assert len(run.cell_versions) == 2
    text = run.provenance("s.yaml")
    assert "commit bbbbbbb" in text and "cells come from 2 commits: " in text
    assert "1 cell(s) at commit aaaaaaa (lsutils " in text
    assert f"torch {run.versions['torch']}" in text

    # a cell written before provenance was recorded counts as unknown
    path = out / "cells" / f"{first}.json"
    rec = json.loads(path.read_text())
    del rec["provenance"]
    path.write_text(json.dumps(rec))
    run_sweep(spec, out, limit=0, progressbar=False)
    groups = json.loads((out / "versions.json").read_text())["cells_by_version"]
    assert groups[0] == {
        "commit": "unknown",
        "cells": 1,
        "first_date": "unknown",
        "last_date": "unknown",
    }
    text = results.load_run(out, spec).provenance("s.yaml")
    assert "cells come from 1 known commit(s) and an unknown one" in text
    assert "1 cell(s) of unknown commit and versions" in text


def test_provenance_of_a_single_commit_and_of_old_folders(tmp_path, monkeypatch):
    versions = {"date": "2026-01-01 10:00 UTC", "commit": "ccccccc", "torch": "2.1"}
    out = tmp_path / "out"
    out.mkdir()
    (out / "versions.json").write_text(json.dumps(versions))  # before per-cell
    run = results.load_run(out)
    assert run.cell_versions == ()
    assert run.provenance().endswith(
        "date 2026-01-01 10:00 UTC, commit ccccccc; torch 2.1"
    )
    group = {"commit": "ccccccc", "torch": "2.1", "cells": 3,
             "first_date": "2026-01-01 10:00 UTC",
             "last_date": "2026-01-02 09:00 UTC"}  # fmt: skip
    both = versions | {"cells_by_version": [group]}
    (out / "versions.json").write_text(json.dumps(both))
    assert results.load_run(out).provenance() == run.provenance()  # same commit
    (out / "versions.json").write_text(json.dumps(both | {"commit": "ddddddd"}))
    text = results.load_run(out).provenance()
    assert text.endswith(
        "cells computed at another commit or versions than the last run: 3 "
        "cell(s) at commit ccccccc (torch 2.1; 2026-01-01 10:00 UTC to "
        "2026-01-02 09:00 UTC)"
    )
    unknown = {"commit": "unknown", "cells": 5, "first_date": "unknown",
               "last_date": "unknown"}  # fmt: skip
    (out / "versions.json").write_text(
        json.dumps(versions | {"cells_by_version": [unknown]})
    )
    assert "commit and versions of the cells unknown: 5 cell(s)" in (
        results.load_run(out).provenance()
    )


def test_version_groups_ignore_date_and_threads():
    def rec(date: str, threads: str, torch: str = "2.1") -> tuple[str, dict]:
        prov = {"commit": "c1", "torch": torch, "date": date, "torch_threads": threads}
        return "x", {"provenance": prov}

    records = [rec("2026-01-02 00:00 UTC", "1"), rec("2026-01-01 00:00 UTC", "2")]
    records += [rec("2026-01-03 00:00 UTC", "2", torch="2.2"), ("y", {})]
    groups = sweep._version_groups(records)
    assert groups == [
        {"commit": "unknown", "cells": 1, "first_date": "unknown",
         "last_date": "unknown"},
        {"commit": "c1", "torch": "2.1", "cells": 2,
         "first_date": "2026-01-01 00:00 UTC", "last_date": "2026-01-02 00:00 UTC"},
        {"commit": "c1", "torch": "2.2", "cells": 1,
         "first_date": "2026-01-03 00:00 UTC", "last_date": "2026-01-03 00:00 UTC"},
    ]  # fmt: skip
    run = results.SweepRun(
        Path("out"),
        versions={"commit": "c1", "torch": "2.2"},
        cell_versions=tuple(groups[1:]),
    )
    assert (
        "cells come from 2 sets of versions (packages, Python or machine) at "
        "one commit: 2 cell(s) at commit c1 (torch 2.1; 2026-01-01 00:00 UTC to "
        "2026-01-02 00:00 UTC), 1 cell(s) at commit c1 (torch 2.2; " in run.provenance()
    )


def test_stale_temporary_files_are_removed(finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    dead = out / "cells" / ".abc.json.999999999.tmp"  # pid that cannot exist
    live = out / f".results.csv.{os.getppid()}.tmp"  # a running process
    for path in (dead, live):
        path.write_text("partial")
    spec = finished[1]
    run_sweep(spec, out, progressbar=False)  # all finished: runs no cell
    assert not dead.exists() and live.exists()


def test_cli_tables_only_rewrites_tables_and_runs_nothing(finished, tmp_path, capsys):
    from lsutils.cli import main

    out = _copy(finished, tmp_path / "out")
    (out / "results.csv").unlink()
    cells = sorted(p.name for p in (out / "cells").iterdir())
    config = out / "config.yaml"
    assert main(["sweep", "--config", str(config), "--out", str(out),
                 "--tables-only"]) == 0  # fmt: skip
    assert sorted(p.name for p in (out / "cells").iterdir()) == cells
    assert _rows(out) and set(_rows(out)[0]) == set(RESULT_COLUMNS)
    assert "2 of 2 cells finished" in capsys.readouterr().out
    assert main(["sweep", "--config", str(config), "--out", str(out),
                 "--tables-only", "--limit", "1"]) == 2  # fmt: skip
    assert "leave out one of them" in capsys.readouterr().err


def test_git_commit_flags_uncommitted_package_changes(tmp_path):
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)  # fmt: skip

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    (tmp_path / "out.csv").write_text("1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    clean = sweep._git_commit(pkg)
    assert len(clean) >= 7 and "+" not in clean
    (tmp_path / "out.csv").write_text("2\n")  # outputs do not count
    assert sweep._git_commit(pkg) == clean
    (pkg / "a.py").write_text("x = 2\n")
    assert sweep._git_commit(pkg) == f"{clean}+dirty"
    assert sweep._git_commit(tmp_path.parent / "nowhere") == "unknown"


@pytest.mark.parametrize(
    ("base", "grid", "message"),
    [
        ("{}", "d: [1000000]", r"grid 'main', field 'd' = 1000000 \(mlp\): "
         r"d=1000000 is out of range.*N=101770 parameters"),
        ("{hidden: [1]}", "d: [2, 900]", r"field 'd' = 900 .*N=805 parameters"),
        ("{}", "threshold: [1.0e-3]", r"grid 'main': field 'threshold' is not used"),
        ("{threshold: 1.0e-3}", "d: [1]", r"base: field 'threshold' is not used"),
    ],
)  # fmt: skip
def test_cells_the_sweep_cannot_run_are_refused_at_load(tmp_path, base, grid, message):
    text = f"base: {base}\nthresholds: [1.0e-5]\ngrids: [{{name: main, {grid}}}]\n"
    with pytest.raises(ValueError, match=message):
        _spec(tmp_path, text, "bad.yaml")


def test_resume_with_a_larger_d_computes_a_larger_subspace(finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    shutil.copytree(finished[0] / ".cache", out / ".cache")
    assert [p.name for p in (out / ".cache").glob("*hessian*")] == [
        next((out / ".cache").glob("*hessian*")).name
    ]
    spec = _spec(tmp_path, SWEEP.replace("d: [1]", "d: [1, 3]"), "more.yaml")
    summary = run_sweep(spec, out, progressbar=False)
    assert "2 cells run" in summary and "0 failed" in summary
    names = sorted(
        p.name.rsplit("-", 1)[-1] for p in (out / ".cache").glob("*hessian*")
    )
    assert names == ["1.pt", "3.pt"]  # the old top-1 and the new top-3 subspace
    new = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert sorted(r.get("hessian_directions") or 0 for r in new) == [0, 0, 1, 3]


def test_damaged_cache_is_recomputed_and_failed_cells_retried(tmp_path, caplog):
    spec = _spec(tmp_path, SWEEP.replace("[gaussian, random]", "[gaussian]"))
    out = tmp_path / "out"
    run_sweep(spec, out, limit=0, progressbar=False)
    name = f"{sweep._model_key(spec.cells[0][1])}-hessian-1.pt"
    (out / ".cache" / name).write_bytes(b"PK\x03\x04 truncated")  # killed mid-save
    with caplog.at_level(logging.WARNING, logger="lsutils.sweep"):
        summary = run_sweep(spec, out, progressbar=False)
    assert "0 failed" in summary and "is unreadable" in caplog.text
    # a failed cell is a result: skipped on resume unless retried
    (cid,) = [p for p in (out / "cells").glob("*.json")]
    rec = json.loads(cid.read_text())
    cid.write_text(json.dumps({**rec, "curve": None}))
    assert "1 skipped" in run_sweep(spec, out, progressbar=False)
    assert "--retry-failed" in run_sweep(spec, out, progressbar=False)
    from lsutils.cli import main

    assert main(["-q", "sweep", "--config", str(spec.path), "--out", str(out),
                 "--retry-failed", "--no-progress"]) == 0  # fmt: skip
    assert json.loads(cid.read_text())["curve"] is not None


def test_rebuild_drops_old_extrapolations_within_the_curve(finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    path = next((out / "cells").glob("*.json"))
    rec = json.loads(path.read_text())
    m = rec["rows"][0]["m"]
    for row, ext in zip(rec["rows"], (m / 2, 3.0 * m), strict=False):
        row.update(k_star=None, k_star_reached=False, k_star_extrapolated=ext)
    path.write_text(json.dumps(rec))
    rebuild_tables(finished[1], out)
    rows = [r for r in _rows(out) if r["cell"] == path.stem]
    assert [r["k_star_extrapolated"] for r in rows] == ["", str(3.0 * m)]


def test_failed_rows_describe_their_network(tmp_path):
    text = (
        SWEEP.replace("epochs: 2,", "epochs: 2, lr: 1.0e+30,")
        .replace("model: [mlp]", "model: [cnn]")
        .replace("[gaussian, random]", "[gaussian]")
    )
    out = tmp_path / "out"
    run_sweep(_spec(tmp_path, text), out, progressbar=False)
    rows = _rows(out)
    assert rows and all(r["status"].startswith("failed: ") for r in rows)
    assert {(r["channels"], r["hidden"], r["width"]) for r in rows} == {
        ("8-16", "", "")
    }


def test_sweep_config_that_is_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        load_sweep_config(tmp_path)
