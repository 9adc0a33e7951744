"""End-to-end tests of the study pipeline, the command line and the sweep."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lsutils.cli import main
from lsutils.study import StudyConfig, config_for_scale, prepare, run_delta
from lsutils.sweep import load_sweep_config, run_sweep

TINY = dict(m=300, n_test=100, samples=32, orderings=3, epochs=3, d=2, sigma=0.01)


@pytest.fixture(scope="module")
def tiny_prepared():
    return prepare(StudyConfig(**TINY))


def test_run_delta_end_to_end(tiny_prepared):
    cfg = StudyConfig(**TINY)
    res = run_delta(cfg, prepared=tiny_prepared)
    assert res.mc.k[0] == 2 and res.mc.k[-1] == cfg.m
    assert res.taylor is not None and res.bound is not None
    assert np.all(res.mc.value > 0) and np.all(res.mc.se >= 0)
    # At a small sigma the quadratic model holds: MC and closed form agree.
    ratio = res.mc.value / res.taylor.value
    assert 0.8 < np.median(ratio) < 1.25
    # The bound is an upper bound of the closed form at every k.
    assert np.all(res.bound.values(res.mc.k) >= res.taylor.value * (1 - 1e-9))
    assert -2.6 < res.slope.slope < -1.4
    out = res.to_json_dict()
    for key in (
        "k",
        "delta_mc",
        "delta_mc_se",
        "delta_taylor",
        "bound",
        "slope",
        "k_star",
        "k_star_bound",
        "settings",
    ):
        assert key in out
    json.dumps(out)


def test_run_delta_is_deterministic(tiny_prepared):
    cfg = StudyConfig(**TINY)
    a = run_delta(cfg, prepared=tiny_prepared)
    b = run_delta(cfg, prepared=tiny_prepared)
    np.testing.assert_array_equal(a.mc.value, b.mc.value)
    np.testing.assert_array_equal(a.taylor.value, b.taylor.value)


def test_reused_terms_equal_fresh_terms(tiny_prepared):
    from lsutils.study import make_subspace
    from lsutils.taylor import taylor_terms

    cfg = StudyConfig(**TINY)
    sub4 = make_subspace(tiny_prepared, "hessian", 4)
    X, y = tiny_prepared.train.X, tiny_prepared.train.y
    terms4 = taylor_terms(tiny_prepared.model, sub4, X, y)
    fresh = run_delta(cfg, prepared=tiny_prepared, subspace=sub4)
    reused = run_delta(cfg, prepared=tiny_prepared, subspace=sub4, terms=terms4)
    np.testing.assert_allclose(reused.taylor.value, fresh.taylor.value, rtol=1e-10)
    np.testing.assert_array_equal(reused.mc.value, fresh.mc.value)


@pytest.mark.parametrize("sampler", ["random", "full", "ball", "curvature", "sobol"])
def test_every_sampler_runs(tiny_prepared, sampler):
    cfg = StudyConfig(**{**TINY, "sampler": sampler})
    res = run_delta(cfg, prepared=tiny_prepared)
    assert np.all(np.isfinite(res.mc.value))
    assert (res.taylor is None) == (sampler == "full")


def test_config_validation_messages():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        StudyConfig(dataset="cifar")
    with pytest.raises(ValueError, match="unknown sampler 'laplace'.*'gaussian'"):
        StudyConfig(sampler="laplace")
    with pytest.raises(ValueError, match="unknown setting.*'dim'"):
        StudyConfig.from_dict({"dim": 3})
    with pytest.raises(ValueError, match="m=1 is out of range"):
        StudyConfig(m=1)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        StudyConfig(sigma=-1)


def test_too_many_samples_requested():
    with pytest.raises(ValueError, match="has 10000: lower m or n_test"):
        prepare(StudyConfig(m=9500, n_test=1000, epochs=1))


def test_d_too_large(tiny_prepared):
    cfg = StudyConfig(**{**TINY, "d": 10**6})
    with pytest.raises(ValueError, match="use a smaller d or the full-space sampler"):
        run_delta(cfg, prepared=tiny_prepared)


def test_scale_from_env(monkeypatch):
    monkeypatch.setenv("LSUTILS_SCALE", "full")
    assert config_for_scale().m == 8000
    monkeypatch.setenv("LSUTILS_SCALE", "huge")
    with pytest.raises(ValueError, match="unknown LSUTILS_SCALE 'huge'"):
        config_for_scale()


# ---------------------------------------------------------------- command line


def _cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_delta_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, _ = _cli(
        [
            "-q",
            "delta",
            "--dataset",
            "mnist",
            "--m",
            "300",
            "--n-test",
            "100",
            "--samples",
            "16",
            "--orderings",
            "2",
            "--epochs",
            "2",
            "--dim",
            "2",
            "--no-progress",
            "--json",
            str(out),
            "--figure",
            str(tmp_path / "f.png"),
        ],
        capsys,
    )
    assert code == 0, stdout
    data = json.loads(out.read_text())
    assert len(data["k"]) == len(data["delta_mc"]) == 299
    assert data["settings"]["d"] == 2
    assert "Delta_k slope" in stdout and (tmp_path / "f.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["delta", "--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["delta"], "the following arguments are required: --dataset"),
        (["delta", "--dataset", "mnist", "--dim", "0"], "expected an integer >= 1"),
        (["delta", "--dataset", "mnist", "--sigma", "nan"], "expected a finite"),
        (["delta", "--dataset", "mnist", "--sampler", "x"], "invalid choice: 'x'"),
    ],
)
def test_cli_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_bad_input_has_no_traceback(tmp_path, capsys):
    code, _, err = _cli(
        [
            "-q",
            "delta",
            "--dataset",
            "mnist",
            "--data-root",
            str(tmp_path / "nope"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2
    assert err.startswith("lsutils delta: error:") and "Traceback" not in err
    code, _, err = _cli(
        [
            "-q",
            "delta",
            "--dataset",
            "mnist",
            "--m",
            "300",
            "--n-test",
            "100",
            "--epochs",
            "1",
            "--dim",
            "999999",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2 and "use a smaller d" in err


# ---------------------------------------------------------------------- sweep

SWEEP = """
base: {m: 200, n_test: 100, samples: 16, orderings: 2, epochs: 2, sigma: 0.01}
thresholds: [1.0e-4, 1.0e-6]
grids:
  - name: main
    dataset: [mnist]
    model: [mlp]
    d: [1, 2]
    sampler: [gaussian, random]
"""


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_sweep_runs_and_resumes(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP)
    spec = load_sweep_config(cfg)
    assert len(spec.cells) == 4
    out = tmp_path / "out"
    s1 = run_sweep(spec, out, limit=1, progressbar=False)
    assert "1 cells run" in s1 and len(_rows(out)) == 2
    s2 = run_sweep(spec, out, progressbar=False)
    assert "1 skipped as finished" in s2 and "0 still to run" in s2
    rows = _rows(out)
    assert len(rows) == 8
    assert len({(r["cell"], r["threshold"]) for r in rows}) == 8
    assert {r["status"] for r in rows} == {"ok"}
    assert (out / "versions.json").exists() and (out / "curves.csv").exists()
    s3 = run_sweep(spec, out, progressbar=False)
    assert "0 cells run" in s3 and len(_rows(out)) == 8


def test_sweep_survives_kill(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lsutils",
        "-q",
        "sweep",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "cells").glob("*.json"))) >= 1:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "cells").glob("*.json")))
    assert 1 <= done <= 4
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = _rows(out)
    assert len(rows) == 8 and len({(r["cell"], r["threshold"]) for r in rows}) == 8
    assert not list(out.rglob("*.tmp"))


def test_sweep_reports_failed_cell(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        SWEEP.replace("epochs: 2", "epochs: 2, lr: 1.0e+30")
        .replace("d: [1, 2]", "d: [1]")
        .replace("[gaussian, random]", "[gaussian]")
    )
    out = tmp_path / "out"
    summary = run_sweep(load_sweep_config(cfg), out, progressbar=False)
    assert "1 failed" in summary
    rows = _rows(out)
    assert rows[0]["status"].startswith("failed: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "base: {m: 10}\nthresholds: [1.0e-5]\ngrids: [{dim: [1]}]",
            r"grid 'grid0': unknown field\(s\) 'dim'",
        ),
        (
            "base: {sigmaa: 1}\nthresholds: [1.0e-5]\ngrids: [{d: [1]}]",
            r"base: unknown field\(s\) 'sigmaa'",
        ),
        ("thresholds: [-1]\ngrids: [{d: [1]}]", "'thresholds': threshold must be"),
        ("thresholds: [1.0e-5]\ngrids: [{d: 3}]", "field 'd' must be a non-empty"),
        ("thresholds: [1.0e-5]\ngrids: [{sampler: [nope]}]", "unknown sampler 'nope'"),
        ("thresholds: [1.0e-5]\ngrid: []", r"unknown key\(s\) 'grid'"),
    ],
)
def test_sweep_config_errors(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_sweep_config(cfg)


def test_experiment_configs_parse():
    root = Path(__file__).resolve().parents[1] / "experiments"
    for path in sorted(root.glob("*.yaml")):
        spec = load_sweep_config(path)
        assert spec.cells, path
