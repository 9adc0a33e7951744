"""Tests of the command line's argument checks (lsutils.cli).

The end-to-end command-line runs live in tests/test_study.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_study import SWEEP  # the tiny two-cell sweep of the sweep tests

from lsutils.cli import build_parser, main


def _cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _no_run(monkeypatch, sweep: bool = True):
    """Make every study (and, with ``sweep``, every sweep) fail if started."""

    def boom(*args, **kwargs):
        raise AssertionError("the computation must not start")

    names = ["lsutils.study.run_delta", "lsutils.study.prepare"]
    names += ["lsutils.sweep.run_delta", "lsutils.sweep.prepare"]
    for name in names + (["lsutils.sweep.run_sweep"] if sweep else []):
        monkeypatch.setattr(name, boom, raising=False)


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("1180591620717411303424", "expected an integer with 0 <= seed < 2**63"),
        (str(2**63), f"0 <= seed < 2**63 = {2**63}, got {2**63}; choose a smaller"),
        ("-1", "expected an integer >= 0, got -1"),
        ("1.5", "expected an integer, got '1.5'"),
    ],
)
def test_seed_is_bounded(seed, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["delta", "--dataset", "mnist", "--seed", seed])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed: " in err and message in err
    assert "Overflow" not in err


def test_largest_seed_is_accepted():
    args = build_parser().parse_args(
        ["delta", "--dataset", "mnist", "--seed", str(2**63 - 1)]
    )
    assert args.seed == 2**63 - 1


def test_sweep_limit_zero_runs_no_cell(tmp_path, capsys, monkeypatch):
    _no_run(monkeypatch, sweep=False)  # run_sweep runs, but starts no cell
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP)
    out = tmp_path / "out"
    args = ["-q", "sweep", "--config", str(cfg), "--out", str(out)]
    code, stdout, err = _cli([*args, "--limit", "0", "--no-progress"], capsys)
    assert code == 0, err
    assert "0 cells run" in stdout and "4 still to run" in stdout
    assert (out / "config.yaml").read_text() == SWEEP
    assert json.loads((out / "versions.json").read_text())
    assert list((out / "cells").iterdir()) == []
    # with --tables-only the limit is refused by run_sweep, as documented
    code, _, err = _cli([*args, "--limit", "0", "--tables-only"], capsys)
    assert code == 2 and "leave out one of them (--limit or --tables-only)" in err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--limit", "-1"])
    assert exc.value.code == 2
    assert "argument --limit: expected an integer >= 0, got -1" in (
        capsys.readouterr().err
    )


def test_sweep_config_that_is_a_folder(tmp_path, capsys, monkeypatch):
    _no_run(monkeypatch)
    out = tmp_path / "out"
    args = ["sweep", "--config", str(tmp_path), "--out", str(out)]
    code, _, err = _cli(args, capsys)
    assert code == 2
    assert err.startswith(f"lsutils sweep: error: --config {tmp_path} is a folder, ")
    assert "give the YAML sweep file, such as experiments/quick.yaml" in err
    assert "does not exist" not in err and "copy" not in err
    (tmp_path / "config.yaml").write_text(SWEEP)  # an output folder's copy
    code, _, err = _cli(args, capsys)
    assert code == 2
    assert f"{tmp_path / 'config.yaml'} is the copy a sweep keeps" in err


@pytest.mark.parametrize("figure", ["same.png", "./same.png", "sub/../same.png"])
def test_json_and_figure_must_differ(tmp_path, capsys, monkeypatch, figure):
    _no_run(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    args = ["delta", "--dataset", "mnist", "-q", "--json", "same.png"]
    code, _, err = _cli([*args, "--figure", figure], capsys)
    assert code == 2
    assert err.startswith(
        f"lsutils delta: error: --json same.png and --figure {Path(figure)} name the "
        "same file: the figure would overwrite the JSON"
    )
    assert not (tmp_path / "same.png").exists()


def test_missing_data_root_names_the_option(tmp_path, capsys):
    args = ["-q", "delta", "--dataset", "mnist", "--no-progress"]
    code, _, err = _cli([*args, "--data-root", str(tmp_path / "nope")], capsys)
    assert code == 2 and "(from root= / --data-root) is absent" in err
