"""End-to-end tests of the study pipeline, the command line and the sweep."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from lsutils.cli import build_parser, main
from lsutils.delta import DeltaCurve
from lsutils.kstar import fit_slope, sufficient_size
from lsutils.study import (
    DeltaResult,
    StudyConfig,
    config_for_scale,
    prepare,
    prepare_fields,
    run_delta,
)
from lsutils.sweep import run_sweep
from lsutils.sweep_config import load_sweep_config

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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sigma": "0.1"}, "sigma must be a number, got the string '0.1'"),
        ({"sigma": "1e-2"}, r"YAML 1.1 reads 1e-2 as text: write 1.0e-2"),
        ({"m": "100"}, "m must be an integer, got the string '100'"),
        ({"d": True}, "d must be an integer, got the bool True"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"lr": False}, "lr must be a number, got the bool False"),
        ({"data_root": 123}, "data_root must be None or a folder path.*int"),
        ({"hidden": "128"}, r"hidden must be a list of positive integers"),
        ({"hidden": [64, True]}, "hidden entry must be an integer, got the bool"),
    ],
)
def test_config_refuses_wrong_types(changes, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**changes)


def test_config_stores_plain_values():
    cfg = StudyConfig(
        epochs=1e3,
        m=np.int64(400),
        sigma=np.float64(0.02),
        lr=1,
        hidden=np.int64(64),
        data_root=Path("/some/where"),
    )
    assert type(cfg.epochs) is int and cfg.epochs == 1000
    assert type(cfg.m) is int and type(cfg.sigma) is float and type(cfg.lr) is float
    assert cfg.hidden == (64,) and type(cfg.hidden[0]) is int
    assert cfg.data_root == "/some/where"
    # equal settings give equal configs and dictionaries (sweep cell ids)
    plain = StudyConfig(
        epochs=1000, m=400, sigma=0.02, lr=1.0, hidden=(64,), data_root="/some/where"
    )
    assert cfg == plain
    assert json.dumps(cfg.to_dict()) == json.dumps(plain.to_dict())


def test_config_m_minimum():
    with pytest.raises(ValueError, match=r"m=3 is out of range.*needs m >= 4"):
        StudyConfig(m=3)
    assert StudyConfig(m=4).m == 4


def test_prepare_fields_only_data_model_training():
    cfg = StudyConfig()
    same = cfg.replace(d=3, sampler="random", sigma=0.1, samples=8, orderings=2,
                       threshold=1e-3, channels=(4, 4))  # fmt: skip
    assert prepare_fields(same) == prepare_fields(cfg)  # channels: MLP ignores
    for change in ({"lr": 1e-2}, {"seed": 1}, {"n_test": 10}, {"hidden": (8,)}):
        assert prepare_fields(cfg.replace(**change)) != prepare_fields(cfg)


def test_run_delta_refuses_other_prepared(tiny_prepared):
    cfg = StudyConfig(**TINY).replace(dataset="fashion-mnist", model="cnn", seed=5)
    with pytest.raises(
        ValueError,
        match=r"trained with other settings than the config asks for \(dataset: "
        r"prepared 'mnist', config 'fashion-mnist'; model: prepared 'mlp', config "
        r"'cnn'; seed: prepared 0, config 5\).*prepared.config.replace\(d=",
    ):
        run_delta(cfg, prepared=tiny_prepared)
    with pytest.raises(ValueError, match=r"\(epochs: prepared 3, config 4\)"):
        run_delta(StudyConfig(**{**TINY, "epochs": 4}), prepared=tiny_prepared)


def test_d_too_large_is_checked_before_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("prepare() must not run")

    monkeypatch.setattr("lsutils.study.prepare", no_training)
    cfg = StudyConfig(**{**TINY, "d": 101770})
    with pytest.raises(ValueError, match=r"d <= 101769.*N=101770 parameters"):
        run_delta(cfg)


def test_config_seed_range():
    assert StudyConfig(seed=2**63 - 1).seed == 2**63 - 1
    with pytest.raises(ValueError, match=r"seed=9223372036854775808 is out of range"):
        StudyConfig(seed=2**63)


def test_run_delta_diverged_training_raises():
    cfg = StudyConfig(**{**TINY, "lr": 1e6})
    with pytest.raises(ValueError, match=r"training diverged: .* lower lr"):
        run_delta(cfg)


def test_summary_small_m_uses_the_fitted_range():
    cfg = StudyConfig(**{**TINY, "m": 50})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice"
        res = run_delta(cfg, prepared=prepare(cfg))
        text = res.summary()
    assert res.slope.k_min == 25
    assert "Delta_k slope over k>=25: " in text
    slopes = res.ordering_slopes
    assert slopes is not None and slopes.shape == (cfg.orderings,)
    se = np.nanstd(slopes, ddof=1) / np.sqrt(np.isfinite(slopes).sum())
    assert res.slope_se_orderings == pytest.approx(se)
    assert f"+- {se:.3f} (over orderings)" in text
    assert res.to_json_dict()["slope_se_orderings"] == pytest.approx(se)
    g = res.grad_norm
    assert g > 0 and res.to_json_dict()["grad_norm"] == g
    assert f"|grad L_m(w*)| {g:.2g}" in text
    assert "median MC/closed form over k>=25: " in text and "nan" not in text


def _synthetic_result(threshold: float) -> DeltaResult:
    k = np.arange(2, 1001)
    value = 100.0 / k**2
    curve = DeltaCurve(k, value, np.zeros_like(value), value[None])
    return DeltaResult(
        config=StudyConfig(m=1000, threshold=threshold),
        mc=curve,
        taylor=None,
        bound=None,
        slope=fit_slope(k, value, k_min=100),
        k_star=sufficient_size(curve, threshold),
        test_accuracy=0.9,
        train_loss=0.1,
        eigenvalues=None,
    )


def test_summary_says_when_kstar_window_is_cut():
    cut = _synthetic_result(100.0 / 600**2)  # k* = 600, window to 1200 > m
    assert cut.k_star.k_star == 600 and cut.k_star.window_complete is False
    assert (
        "k* = 600 (band 600..600; window cut at m = 1000: m too small to confirm)"
        in cut.summary()
    )
    full = _synthetic_result(1e-2)  # k* = 100, window to 200 <= m
    assert full.k_star.window_complete is True
    assert "k* = 100 (band 100..100)\n" in full.summary()


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
            "--lr",
            "0.002",
            "--batch-size",
            "64",
            "--channels",
            "4,8",
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
    assert data["settings"]["lr"] == 0.002 and data["settings"]["batch_size"] == 64
    assert data["settings"]["channels"] == [4, 8]
    assert "Delta_k slope" in stdout and (tmp_path / "f.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["delta", "--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["delta"], "the following arguments are required: --dataset"),
        (["delta", "--dataset", "mnist", "--dim", "0"], "expected an integer >= 1"),
        (["delta", "--dataset", "mnist", "--sigma", "nan"], "expected a finite"),
        (["delta", "--dataset", "mnist", "--sampler", "x"], "invalid choice: 'x'"),
        (["delta", "--dataset", "mnist", "--lr", "-1"], "expected a finite"),
        (["delta", "--dataset", "mnist", "--batch-size", "0"], "expected an integer"),
        (["delta", "--dataset", "mnist", "--channels", "4,x"], "--channels"),
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


def _no_run(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the computation must not start")

    monkeypatch.setattr("lsutils.study.run_delta", boom)
    monkeypatch.setattr("lsutils.study.prepare", boom)


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--json", "", "is a folder: give a file name, such as"),
        ("--json", "afile/r.json", "afile is a file, not a folder"),
        ("--figure", "out/fig.xyz", r"unsupported format '\.xyz'; .*\.png"),
        ("--figure", "out/fig", "no extension; end the file name with one of"),
    ],
)
def test_cli_checks_output_paths_first(
    tmp_path, capsys, monkeypatch, option, name, message
):
    _no_run(monkeypatch)
    (tmp_path / "afile").write_text("x")
    args = ["delta", "--dataset", "mnist", "-q", option, str(tmp_path / name)]
    code, _, err = _cli(args, capsys)
    assert code == 2 and err.startswith(f"lsutils delta: error: {option} ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_cli_unwritable_folder(tmp_path, capsys, monkeypatch):
    _no_run(monkeypatch)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("lsutils.cli.tempfile.NamedTemporaryFile", refuse)
    target = tmp_path / "new" / "r.json"
    code, _, err = _cli(["delta", "--dataset", "mnist", "--json", str(target)], capsys)
    assert code == 2
    assert f"cannot create files in {tmp_path} (Permission denied)" in err


def test_cli_sweep_out_must_be_a_folder(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP)
    out = tmp_path / "out.txt"
    out.write_text("x")
    code, _, err = _cli(["sweep", "--config", str(cfg), "--out", str(out)], capsys)
    assert code == 2 and "--out" in err and "is a file, not a folder" in err


def test_cli_dim_checked_before_training(capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("prepare() must not run")

    monkeypatch.setattr("lsutils.study.prepare", no_training)
    args = ["delta", "--dataset", "mnist", "--dim", "200000", "--no-progress"]
    code, _, err = _cli(args, capsys)
    assert code == 2 and "d=200000 is out of range" in err


def test_cli_small_m(capsys, monkeypatch):
    _no_run(monkeypatch)
    code, _, err = _cli(["delta", "--dataset", "mnist", "--m", "3"], capsys)
    assert code == 2 and "m=3 is out of range" in err and "m >= 4" in err


def test_cli_quiet_before_or_after_command():
    parser = build_parser()
    base = ["delta", "--dataset", "mnist"]
    assert parser.parse_args(base).quiet is False
    assert parser.parse_args(["-q", *base]).quiet is True
    assert parser.parse_args([*base, "-q"]).quiet is True
    assert parser.parse_args([*base, "--quiet"]).quiet is True
    sweep = ["sweep", "--config", "c.yaml", "--out", "o"]
    assert parser.parse_args([*sweep, "-q"]).quiet is True
    assert parser.parse_args(sweep).quiet is False


def test_cli_help_texts(capsys):
    with pytest.raises(SystemExit):
        main(["delta", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one-hidden-layer" not in text and "1..m" not in text
    assert "the Delta_k curve covers k = 2..m" in text
    assert "256,128 two" in text


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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sigma: [1e-2]", r"sigma must be a number, got the string '1e-2' \(YAML 1.1 "
         r"reads 1e-2 as text: write 1.0e-2\)"),
        ("m: ['200']", "m must be an integer, got the string '200'"),
        ("d: [yes]", "d must be an integer, got the bool True"),
    ],
)  # fmt: skip
def test_sweep_yaml_types(tmp_path, value, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"thresholds: [1.0e-5]\ngrids: [{{name: g, {value}}}]")
    with pytest.raises(ValueError, match=message) as exc:
        load_sweep_config(cfg)
    assert str(cfg) in str(exc.value)


def test_experiment_configs_parse():
    root = Path(__file__).resolve().parents[1] / "experiments"
    for path in sorted(root.glob("*.yaml")):
        spec = load_sweep_config(path)
        assert spec.cells, path
