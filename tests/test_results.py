"""Tests of lsutils.results, tables, trends and sweep_plots.

On a tiny real sweep and on hand-made rows.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lsutils import results, sweep_plots, tables, trends  # noqa: E402
from lsutils.sweep import RESULT_COLUMNS, run_sweep  # noqa: E402
from lsutils.sweep_config import load_sweep_config  # noqa: E402

TINY = """
base: {m: 200, n_test: 100, samples: 16, orderings: 2, epochs: 2, sigma: 0.01}
thresholds: [1.0e-3, 1.0e-5, 1.0e-7]
grids:
  - name: main
    dataset: [mnist]
    model: [mlp]
    d: [1, 2]
    sampler: [gaussian, full]
  - name: width
    dataset: [mnist]
    model: [mlp]
    hidden: [[8], [16], [32]]
    d: [1]
    sampler: [gaussian]
"""
N_CELLS, N_THR = 7, 3


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, results.SweepRun]:
    """A real 7-cell sweep at m=200 (about 20 s), read back."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny.yaml").write_text(TINY)
    spec = load_sweep_config(root / "tiny.yaml")
    run_sweep(spec, root / "out", progressbar=False)
    return root, results.load_run(root / "out", spec)


def _copy(run: results.SweepRun, rows: list[dict]) -> results.SweepRun:
    return results.SweepRun(
        run.out, rows, run.curves, run.versions, run.expected, run.thresholds
    )


# ------------------------------------------------------------------- reading


def test_load_run_counts_and_types(tiny_run):
    _, run = tiny_run
    assert len(run.rows) == N_CELLS * N_THR
    assert (run.n_total, run.n_finished, run.n_ok, run.n_failed) == (7, 7, 7, 0)
    assert run.complete
    assert run.status() == "7 of 7 cells finished (7 ok, 0 failed)"
    row = run.rows[0]
    assert set(row) == set(RESULT_COLUMNS)
    assert isinstance(row["d"], int) and isinstance(row["threshold"], float)
    assert isinstance(row["k_star_reached"], bool)
    assert set(run.curves) == set(run.finished)
    text = run.provenance("tiny.yaml")
    assert "tiny.yaml" in text and "7 of 7" in text
    assert f"torch {run.versions['torch']}" in text
    assert f"commit {run.versions['commit']}" in text and "date 20" in text
    # one commit and package set for every cell: not repeated in the text
    (group,) = run.cell_versions
    assert group["cells"] == N_CELLS and group["commit"] == run.versions["commit"]
    assert "cells come from" not in text and "cell(s) at commit" not in text


def test_curves_equal_cell_files(tiny_run):
    _, run = tiny_run
    for cid, curve in run.curves.items():
        rec = json.loads((run.out / "cells" / f"{cid}.json").read_text())
        np.testing.assert_array_equal(curve.k, rec["curve"]["k"])
        np.testing.assert_allclose(curve.delta_mc, rec["curve"]["delta_mc"])
        full = rec["config"]["sampler"] == "full"
        assert np.isnan(curve.delta_taylor).all() == full
        assert np.isfinite(curve.bound).all() != full


def test_empty_fields_become_none_or_nan(tiny_run):
    _, run = tiny_run
    full = tables.select(run.rows, sampler="full")
    assert full and all(math.isnan(r["k_star_bound"]) for r in full)
    assert all(r["width"] is not None for r in run.rows)
    unreached = [r for r in run.rows if not r["k_star_reached"]]
    assert all(r["k_star"] is None for r in unreached)
    assert all(r["k_star_window_complete"] is None for r in unreached)
    reached = [r for r in run.rows if r["k_star_reached"]]
    assert reached and all(
        r["k_star_window_complete"] == (r["k_star"] + max(10, r["k_star"]) <= r["m"])
        for r in reached
    )


def test_partial_and_missing_runs(tiny_run, tmp_path):
    root, run = tiny_run
    bigger = TINY.replace("d: [1, 2]", "d: [1, 2, 3]")
    (tmp_path / "big.yaml").write_text(bigger)
    spec = load_sweep_config(tmp_path / "big.yaml")
    partial = results.load_run(run.out, spec)
    assert (partial.n_finished, partial.n_total) == (7, 9)
    assert not partial.complete
    assert results.check_integrity(partial) == []
    empty = results.load_run(tmp_path / "nothing", spec)
    assert (empty.rows, empty.curves, empty.n_finished) == ([], {}, 0)
    assert empty.status() == "0 of 9 cells finished (0 ok, 0 failed)"


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="results file .* does not exist"):
        results.read_results(tmp_path / "results.csv")
    with pytest.raises(FileNotFoundError, match="curves file .* does not exist"):
        results.read_curves(tmp_path / "curves.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("grid,cell\nmain,abc\n")
    rebuild = (
        f"python -m lsutils sweep --config {tmp_path / 'config.yaml'} "
        f"--out {tmp_path} --tables-only"
    )
    with pytest.raises(ValueError, match=r"lacks column\(s\) dataset, model") as err:
        results.read_results(bad)
    assert err.value.args[0].endswith(f"(no cell is rerun): {rebuild}")
    with pytest.raises(ValueError, match=r"lacks column\(s\) k, delta_mc") as err:
        results.read_curves(bad)
    assert err.value.args[0].endswith(rebuild)
    row = {c: "" for c in RESULT_COLUMNS} | {"d": "two"}
    with (tmp_path / "r.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, RESULT_COLUMNS)
        writer.writeheader()
        writer.writerow(row)
    with pytest.raises(ValueError, match="r.csv, line 2: "):
        results.read_results(tmp_path / "r.csv")


def test_curve_interpolation_is_exact_for_a_power_law():
    k = np.array([2, 10, 50, 250, 1000])
    value = 3.0 / k.astype(float) ** 2
    nan = np.full(k.shape, np.nan)
    curve = results.Curve("x", k, value, 0 * value, nan, nan)
    assert curve.at(100) == pytest.approx(3e-4, rel=1e-12)
    assert curve.at(10) == pytest.approx(3e-2, rel=1e-12)


# ------------------------------------------------------------------- tables


def test_select(tiny_run):
    _, run = tiny_run
    rows = tables.select(run.rows, grid="main", threshold=1e-5)
    assert len(rows) == 4
    assert {r["d"] for r in rows} == {1, 2}
    both = tables.select(run.rows, sampler=("gaussian", "full"), threshold=1e-5)
    assert len(both) == N_CELLS
    with pytest.raises(ValueError, match="unknown column 'dim': expected one of"):
        tables.select(run.rows, dim=1)


def test_pivot_of_real_rows(tiny_run):
    _, run = tiny_run
    rows = tables.select(run.rows, grid="main", threshold=1e-5)
    table = tables.pivot(rows, "sampler", "d", "slope")
    assert table.row_labels == [("full",), ("gaussian",)]
    assert table.col_labels == [1, 2]
    expected = [[r["slope"] for r in tables.select(rows, sampler=s)]
                for s in ("full", "gaussian")]  # fmt: skip
    np.testing.assert_allclose(table.array(), expected)
    md = table.to_markdown(lambda v: f"{v:.2f}")
    assert md.splitlines()[0] == "| sampler | d = 1 | 2 |"
    assert len(md.splitlines()) == 4
    with pytest.raises(ValueError, match="occurs more than once: filter the rows"):
        tables.pivot(run.rows, "sampler", "d", "slope")


def test_pivot_missing_cells_are_nan():
    rows = [
        {"sampler": "a", "d": 1, "k_star": 5},
        {"sampler": "b", "d": 2, "k_star": None},
    ]
    table = tables.pivot(rows, ["sampler"], "d", "k_star")
    arr = table.array()
    assert arr[0, 0] == 5 and np.isnan(arr[0, 1]) and np.isnan(arr[1]).all()
    assert "| b |  |  |" in table.to_markdown(empty="")


def test_format_k_star():
    base = {"status": "ok", "m": 1000, "k_star_lo": 100, "k_star_hi": 300}
    reached = base | {"k_star_reached": True, "k_star": 200}
    assert tables.format_k_star(reached) == "200 [100, 300]"
    gone = base | {"k_star_reached": False, "k_star": None}
    assert tables.format_k_star(gone | {"k_star_extrapolated": 3162.3}) == (
        "> 1000 (~3162)"
    )
    assert tables.format_k_star(gone | {"k_star_extrapolated": math.nan}) == ("> 1000")
    assert tables.format_k_star({"status": "failed: nan"}) == "failed"
    bounded = reached | {"k_star_bound": 2270.4}
    assert tables.format_k_star(bounded, with_bound=True) == (
        "200 [100, 300]; bound 2270"
    )
    assert tables.format_k_star(bounded) == "200 [100, 300]"
    assert tables.format_k_star(reached | {"k_star_window_complete": False}) == (
        "200 [100, 300] (window cut at m)"
    )
    assert tables.format_k_star(reached | {"k_star_window_complete": True}) == (
        "200 [100, 300]"
    )


def test_markdown_table_errors():
    assert tables.markdown_table(["a|b"], [[1]]).startswith("| a\\|b |")
    with pytest.raises(ValueError, match="row 1 has 1 entries but the header has 2"):
        tables.markdown_table(["a", "b"], [[1, 2], [3]])


# ------------------------------------------------------------------- checks


def test_integrity_of_a_real_sweep(tiny_run):
    _, run = tiny_run
    assert results.check_integrity(run) == []


def _ok_cell(run: results.SweepRun) -> tuple[str, list[dict]]:
    """A gaussian cell that reaches its first two thresholds (copied rows)."""
    for cid in run.finished:
        rows = sorted(tables.select(run.rows, cell=cid), key=lambda r: -r["threshold"])
        if rows[0]["sampler"] == "gaussian" and rows[1]["k_star_reached"]:
            return cid, rows
    pytest.fail("no gaussian cell reaches two thresholds in the tiny sweep")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("decrease", "k\\* decreases to"),
        ("band", "does not contain k\\*"),
        ("accuracy", "test accuracy 1.5 outside"),
        ("duplicate", "a threshold occurs twice"),
        ("unknown", "is not a cell of the sweep file"),
        ("nocurve", "status ok but no curve"),
        ("reach_after_miss", "but not at a larger threshold"),
    ],
)
def test_integrity_finds_each_problem(tiny_run, edit, message):
    _, run = tiny_run
    cid, rows = _ok_cell(run)
    others = [r for r in run.rows if r["cell"] != cid]
    curves = dict(run.curves)
    if edit == "decrease":
        rows[1]["k_star"] = rows[0]["k_star"] - 1
        rows[1]["k_star_lo"] = rows[1]["k_star_hi"] = rows[1]["k_star"]
    elif edit == "band":
        rows[0]["k_star_lo"] = rows[0]["k_star"] + 1
    elif edit == "accuracy":
        for r in rows:
            r["test_accuracy"] = 1.5
    elif edit == "duplicate":
        rows[1]["threshold"] = rows[0]["threshold"]
    elif edit == "unknown":
        for r in rows:
            r["cell"] = "not-a-cell"
        curves["not-a-cell"] = curves[cid]
    elif edit == "nocurve":
        del curves[cid]
    elif edit == "reach_after_miss":
        rows[0]["k_star_reached"] = False
        rows[0]["k_star"] = None
    bad = results.SweepRun(
        run.out, others + rows, curves, run.versions, run.expected, run.thresholds
    )
    problems = results.check_integrity(bad)
    assert len(problems) >= 1
    assert any(re.search(message, p) for p in problems), problems


def test_integrity_counts_rows_per_threshold(tiny_run):
    _, run = tiny_run
    cid = run.finished[0]
    rows = [r for r in run.rows if not (r["cell"] == cid and r["threshold"] < 1e-6)]
    problems = results.check_integrity(_copy(run, rows))
    assert problems == [f"cell {cid}: 2 rows for 3 thresholds"]


def _ranks(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v)).astype(float)


def test_trend_against_rank_correlation():
    widths = [16, 32, 64, 128, 256]
    y_down = [5.0, 4.0, 3.0, 2.0, 1.0]
    y_mixed = [3.0, 1.0, 4.0, 1.5, 5.0]
    rows = [{"dataset": "a", "width": w, "delta_at_100": v}
            for w, v in zip(widths, y_down, strict=True)]  # fmt: skip
    rows += [{"dataset": "b", "width": w, "delta_at_100": v}
             for w, v in zip(widths, y_mixed, strict=True)]  # fmt: skip
    rows.append({"dataset": "c", "width": 16, "delta_at_100": 1.0})
    rows.append({"dataset": "c", "width": 32, "delta_at_100": math.nan})
    a, b, c = trends.trend(rows, "width", "delta_at_100")
    assert a.group == ("a",) and a.rho == pytest.approx(-1.0) and a.n == 5
    ref = np.corrcoef(_ranks(np.array(widths)), _ranks(np.array(y_mixed)))[0, 1]
    assert b.rho == pytest.approx(ref, rel=1e-12)
    assert a.pvalue == pytest.approx(2 / 120)  # exact: 2 of 5! pairings
    # exact p of b: pairings whose |rho| >= 0.5, counted by brute force
    perms = list(itertools.permutations(range(5)))
    r_all = [np.corrcoef(np.arange(5), p)[0, 1] for p in perms]
    assert b.pvalue == pytest.approx(np.mean(np.abs(r_all) >= abs(ref) - 1e-12))
    assert c.n == 1 and math.isnan(c.rho)
    assert "not enough data (n=1)" in c.describe()
    assert a.describe().startswith("a: Spearman rho(width, delta_at_100) = -1.00")
    assert a.verdict(-1) == "agrees" and a.verdict(+1) == "contradicts"
    assert c.verdict(-1) == "not enough data"
    assert b.verdict(+1).endswith("not significant")
    with pytest.raises(ValueError, match="expected_sign must be \\+1 or -1"):
        a.verdict(0)
    with pytest.raises(ValueError, match="unknown column 'size'"):
        trends.trend(rows, "size", "delta_at_100")


def test_trend_on_the_width_grid(tiny_run):
    _, run = tiny_run
    rows = tables.select(run.rows, grid="width", threshold=1e-5)
    (tr,) = trends.trend(rows, "width", "delta_at_100")
    assert tr.group == ("mnist",) and tr.n == 3
    np.testing.assert_array_equal(tr.xs, [8, 16, 32])
    assert -1.0 <= tr.rho <= 1.0


# ------------------------------------------------------------------- figures


def _legend(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def test_plot_curve_with_and_without_closed_form(tiny_run):
    _, run = tiny_run
    gauss = tables.select(run.rows, sampler="gaussian", grid="main")[0]["cell"]
    full = tables.select(run.rows, sampler="full")[0]["cell"]
    ax = sweep_plots.plot_curve(run.curves[gauss], threshold=1e-5, title="g")
    labels = _legend(ax)
    assert any("closed form" in t for t in labels) and any("bound" in t for t in labels)
    assert ax.get_xscale() == "log" and ax.get_title() == "g"
    ax = sweep_plots.plot_curve(run.curves[full])
    assert not any("closed form" in t for t in _legend(ax))
    ax = sweep_plots.plot_curve(None)
    assert ax.texts[0].get_text() == "not computed yet"


def test_plot_series_and_pivot(tiny_run):
    _, run = tiny_run
    rows = tables.select(run.rows, grid="main", threshold=1e-5)
    ax = sweep_plots.plot_series(rows, "d", "delta_at_100", by="sampler")
    assert sorted(_legend(ax)) == ["full", "gaussian"]
    assert ax.get_xlabel() == "d" and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert {ln.get_marker() for ln in ax.get_lines()} == {"o", "s"}
    ax = sweep_plots.plot_series(
        rows, "d", "k_star", by="sampler", band=("k_star_lo", "k_star_hi")
    )
    assert ax.get_ylabel() == "k_star"
    fig, (left, right) = plt.subplots(1, 2, sharex=True)
    sweep_plots.plot_series(rows, "d", "slope", "sampler", left, logy=False)
    ax = sweep_plots.plot_series([], "d", "k_star", by="sampler", ax=right)
    assert ax.texts[0].get_text() == "no finished cells"
    assert list(left.get_xticks()) == [1, 2]  # the empty panel keeps them
    table = tables.pivot(rows, "sampler", "d", "delta_at_100")
    ax = sweep_plots.plot_pivot(table, title="t", value_label="v")
    assert ax.get_title() == "t" and len(ax.images) == 1
    empty = tables.pivot(rows, "sampler", "d", lambda r: None)
    ax = sweep_plots.plot_pivot(empty)
    assert ax.texts[0].get_text() == "no finished cells"


def test_log_bin_means_against_a_loop():
    k = np.arange(2, 1001)
    values = np.vstack([1.0 / k**2, np.sin(k) + 2])
    kb, means = trends.log_bin_means(k, values, n_bins=12)
    assert kb[0] == 2 and np.all(np.diff(kb) > 0)
    ends = np.append(kb[1:], k[-1] + 1)
    for j, (a, b) in enumerate(zip(kb, ends, strict=True)):
        inside = (k >= a) & (k < b)
        np.testing.assert_allclose(means[:, j], values[:, inside].mean(axis=1))
    with pytest.raises(ValueError, match="k must be increasing with one entry"):
        trends.log_bin_means(k[::-1], values)
    with pytest.raises(ValueError, match="n_bins=1 is out of range"):
        trends.log_bin_means(k, values, n_bins=1)


def test_empty_pivot_renders():
    table = tables.pivot([], ["dataset", "sampler"], "d", "k_star")
    assert table.array().shape == (0, 0)
    assert table.to_markdown().splitlines()[0] == "| dataset | sampler |"


def test_docstring_examples():
    import doctest

    # the examples of the table and trend helpers (results.py itself has none)
    outcomes = [doctest.testmod(module) for module in (tables, trends)]
    failed = sum(o.failed for o in outcomes)
    attempted = sum(o.attempted for o in outcomes)
    assert attempted >= 5 and failed == 0


def test_cell_and_summary_tables(tiny_run):
    _, run = tiny_run
    rows = tables.select(run.rows, threshold=1e-5)
    lines = tables.cell_table(rows).splitlines()
    assert len(lines) == 2 + N_CELLS and "k*" in lines[0]
    for r, line in zip(rows, lines[2:], strict=True):
        assert tables.format_k_star(r) in line
    text = tables.summary_table(rows, by=("grid",), columns=("slope",))
    main = np.array([r["slope"] for r in rows if r["grid"] == "main"])
    expected = f"{main.min():.3g} / {np.median(main):.3g} / {main.max():.3g}"
    assert f"| main | 4 | {expected} |" in text
    full = tables.select(rows, sampler="full")
    assert "| \u2013 |" in tables.summary_table(full, columns=("k_star_bound",))
    with pytest.raises(ValueError, match="unknown column 'slopes'"):
        tables.summary_table(rows, columns=("slopes",))


def test_ratio_between_samplers(tiny_run):
    _, run = tiny_run
    rows = tables.select(run.rows, grid="main", threshold=1e-5)
    got = tables.ratio(rows, "delta_at_100", a="gaussian", b="full")
    for (ds, mod, d), value in got.items():
        g, f = (
            tables.select(rows, dataset=ds, model=mod, d=d, sampler=s)[0]
            for s in ("gaussian", "full")
        )
        assert value == pytest.approx(g["delta_at_100"] / f["delta_at_100"])
    assert set(got) == {("mnist", "mlp", 1), ("mnist", "mlp", 2)}
    assert tables.ratio(rows, "delta_at_100") == {}  # no 'random' cells


def test_admonition_names_progress(tiny_run, tmp_path):
    _, run = tiny_run
    assert run.admonition().startswith("```{note}\nThe sweep is complete: 7 of 7")
    (tmp_path / "big.yaml").write_text(TINY.replace("d: [1, 2]", "d: [1, 2, 3]"))
    partial = results.load_run(run.out, load_sweep_config(tmp_path / "big.yaml"))
    box = partial.admonition()
    assert box.startswith("```{warning}\nThe sweep is not complete: 7 of 9 cells")
    assert box.endswith("\n```")
    rows = [r | {"status": "failed: nan"} if r["cell"] == run.finished[0] else r
            for r in run.rows]  # fmt: skip
    failed = _copy(run, rows).admonition()
    assert failed.startswith("```{warning}\nThe sweep ran every cell, but some")
    assert "(6 ok, 1 failed)" in failed


def test_trend_p_value_for_many_pairs_is_scipys():
    from scipy.stats import spearmanr

    gen = np.random.default_rng(0)
    x = np.arange(1.0, 13.0)
    y = x + gen.normal(scale=4.0, size=x.size)
    rows = [
        {"dataset": "a", "width": a, "delta_at_100": b}
        for a, b in zip(x, y, strict=True)
    ]
    (tr,) = trends.trend(rows, "width", "delta_at_100")
    ref = spearmanr(x, y)
    assert tr.n > trends.EXACT_MAX_N
    assert tr.rho == pytest.approx(ref.statistic) and tr.pvalue == ref.pvalue
    four = [{"dataset": "a", "width": w, "delta_at_100": w} for w in (1, 2, 3, 4)]
    (perfect,) = trends.trend(four, "width", "delta_at_100")
    assert perfect.rho == pytest.approx(1.0)
    assert perfect.pvalue == pytest.approx(1 / 12)
    assert perfect.verdict(+1) == "same sign, not significant"


# ------------------------------------------------ one threshold, one row per cell


def test_trend_refuses_rows_of_several_thresholds(tiny_run):
    _, run = tiny_run
    rows = tables.select(run.rows, grid="width")  # 3 cells x 3 thresholds
    with pytest.raises(ValueError) as err:
        trends.trend(rows, "width", "delta_at_100")
    msg = str(err.value)
    assert msg.startswith("trend got rows of 3 thresholds (0.001, 1e-05, 1e-07)")
    assert "each cell would count once per threshold" in msg
    assert msg.endswith("e.g. tables.select(rows, threshold=1e-07)")
    one = tables.select(rows, threshold=1e-5)
    (tr,) = trends.trend(one, "width", "delta_at_100")
    assert tr.n == 3
    with pytest.raises(ValueError, match=r"trend got cell \w+ in 2 rows \(and 2 more"):
        trends.trend(one + one, "width", "delta_at_100")


def test_trend_cell_check_needs_a_cell_column():
    # hand-made rows without a cell or threshold column are not checked
    rows = [{"dataset": "a", "width": w, "delta_at_100": 1.0 / w} for w in (1, 2, 3)]
    (tr,) = trends.trend(rows + rows, "width", "delta_at_100")
    assert tr.n == 6


def test_status_counts_only_cells_of_the_sweep_file(tiny_run, tmp_path):
    _, run = tiny_run
    main_only = TINY[: TINY.index("  - name: width")]
    (tmp_path / "main.yaml").write_text(main_only)
    spec = load_sweep_config(tmp_path / "main.yaml")
    sub = results.load_run(run.out, spec)
    width_cells = {r["cell"] for r in run.rows if r["grid"] == "width"}
    one = sorted(width_cells)[0]
    rows = [r | {"status": "failed: nan"} if r["cell"] == one else r for r in sub.rows]
    sub = _copy(sub, rows)
    assert (sub.n_total, sub.n_finished, sub.n_ok, sub.n_failed) == (4, 4, 4, 0)
    assert sub.n_other == 3
    assert sub.status() == (
        "4 of 4 cells finished (4 ok, 0 failed); the tables also hold 3 cell(s) "
        "that are not in the sweep file (2 ok, 1 failed), not counted here"
    )
    assert sub.admonition().startswith("```{note}\nThe sweep is complete: 4 of 4")
    assert run.n_other == 0 and "also hold" not in run.status()
    # without a sweep file every finished cell counts
    free = results.SweepRun(run.out, rows)
    assert (free.n_total, free.n_ok, free.n_failed, free.n_other) == (7, 6, 1, 0)


def test_read_results_keeps_large_integers_exact(tmp_path):
    row = {c: "" for c in RESULT_COLUMNS} | {"seed": str(2**60 + 1), "m": "200.0"}
    with (tmp_path / "r.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, RESULT_COLUMNS)
        writer.writeheader()
        writer.writerow(row)
    (got,) = results.read_results(tmp_path / "r.csv")
    assert got["seed"] == 2**60 + 1 and got["m"] == 200


def _failed_row(tmp_path: Path, **fields: str) -> dict:
    """A row as lsutils.sweep writes it for a failed cell, read back."""
    row = {c: "" for c in RESULT_COLUMNS} | {
        "grid": "main", "cell": "abc", "dataset": "mnist", "model": "cnn",
        "m": "200", "d": "1", "sampler": "gaussian", "sigma": "0.01",
        "samples": "16", "orderings": "2", "seed": "0", "threshold": "1e-05",
        "status": "failed: loss is nan",
    } | fields  # fmt: skip
    path = tmp_path / "failed.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, RESULT_COLUMNS)
        writer.writeheader()
        writer.writerow(row)
    (got,) = results.read_results(path)
    return got


def test_cell_table_names_its_threshold_and_refuses_several(tiny_run):
    _, run = tiny_run
    with pytest.raises(ValueError, match="cell_table got rows of 3 thresholds"):
        tables.cell_table(tables.select(run.rows, grid="main"))
    rows = tables.select(run.rows, threshold=1e-5)
    head = tables.cell_table(rows).splitlines()[0]
    assert "| k* (\u0394 = 1e-05) |" in head
    with pytest.raises(ValueError, match=r"cell_table got cell \w+ in 2 rows"):
        tables.cell_table(rows + rows[:1])


def test_cell_table_shows_failed_and_missing_values_cleanly(tiny_run, tmp_path):
    _, run = tiny_run
    failed = _failed_row(tmp_path)
    line = tables.cell_table([failed]).splitlines()[2]
    assert line == "| mnist | cnn | \u2013 | 1 | gaussian | 0.01 | failed | " + (
        "\u2013 | \u2013 | \u2013 |"
    )
    assert "nan" not in line
    # the full sampler has no closed form: a dash, not "nan"
    full = tables.select(run.rows, sampler="full", threshold=1e-5)
    text = tables.cell_table(full)
    assert "nan" not in text and text.splitlines()[2].endswith("| \u2013 |")


def test_summary_table_counts_distinct_cells(tiny_run):
    _, run = tiny_run
    every = tables.select(run.rows, grid="main")  # 4 cells x 3 thresholds
    one = tables.select(every, threshold=1e-5)
    text = tables.summary_table(every, by=("grid",), columns=("slope",))
    assert text == tables.summary_table(one, by=("grid",), columns=("slope",))
    assert "| main | 4 |" in text
    with pytest.raises(ValueError, match="summary_table of k_star got rows of 3"):
        tables.summary_table(every, by=("grid",), columns=("slope", "k_star"))
    assert "| main | 4 |" in tables.summary_table(
        one, by=("grid",), columns=("k_star",)
    )
