"""Tests of lsutils.plotting on small synthetic inputs (Agg backend)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib as mpl  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lsutils import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(ax: Axes) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def _legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


# ----------------------------------------------------------------------------- style


def test_import_changes_no_rcparams():
    code = (
        "import matplotlib as mpl\n"
        "before = dict(mpl.rcParams)\n"
        "import lsutils.plotting\n"
        "after = dict(mpl.rcParams)\n"
        "changed = [k for k in before if before[k] != after[k]]\n"
        "print(changed)\n"
        "raise SystemExit(1 if changed else 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_use_book_style_sets_and_context_restores():
    before = mpl.rcParams["figure.dpi"]
    with mpl.rc_context():
        plotting.use_book_style()
        assert mpl.rcParams["figure.dpi"] == 110
        assert mpl.rcParams["figure.constrained_layout.use"] is True
        assert mpl.rcParams["font.size"] == 9
    assert mpl.rcParams["figure.dpi"] == before


# -------------------------------------------------------------------------- spectrum


def test_plot_spectrum_signs_order_and_log_axis():
    lam = np.array([0.5, -2.0, 30.0, 4.0])
    ax = plotting.plot_spectrum(lam, title="top-4")
    assert isinstance(ax, Axes) and _labelled(ax)
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "top-4"
    pos_line, neg_line = ax.get_lines()[:2]
    # sorted by magnitude: 30 (rank 1), 4 (2), -2 (3), 0.5 (4)
    np.testing.assert_array_equal(pos_line.get_xdata(), [1, 2, 4])
    np.testing.assert_array_equal(pos_line.get_ydata(), [30.0, 4.0, 0.5])
    np.testing.assert_array_equal(neg_line.get_xdata(), [3])
    np.testing.assert_array_equal(neg_line.get_ydata(), [2.0])
    assert len(_legend_texts(ax)) == 2


def test_plot_spectrum_bulk_inset_and_given_axes():
    _, ax_in = plt.subplots()
    rng = np.random.default_rng(0)
    ax = plotting.plot_spectrum(
        torch.tensor([9.0, 3.0]), ax=ax_in, bulk=rng.normal(0, 0.01, 200)
    )
    assert ax is ax_in
    (inset,) = ax.child_axes
    assert _labelled(inset) and inset.get_yscale() == "log"
    assert len(inset.patches) > 0  # histogram bars


def test_plot_spectrum_zero_eigenvalue_warns():
    with pytest.warns(UserWarning, match="non-positive value"):
        ax = plotting.plot_spectrum([3.0, 0.0])
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.ones((2, 2)), "eigenvalues must be 1-dimensional"),
        ([], "eigenvalues is empty"),
        ([1.0, np.nan], "1 non-finite value"),
        ([0.0, 0.0], "eigenvalues are all zero"),
        (["a"], "eigenvalues must be numeric"),
    ],
)
def test_plot_spectrum_errors(values, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_spectrum(values)


# ---------------------------------------------------------------------------- slices


def test_plot_slices_one_and_many_directions():
    alphas = np.linspace(-1, 1, 11)
    losses = {
        10: alphas**2,  # one direction
        100: np.stack([alphas**2, 2 * alphas**2]),  # two directions
    }
    ax = plotting.plot_slices(alphas, losses, direction_label="v_1")
    assert _labelled(ax) and "v_1" in ax.get_xlabel()
    assert _legend_texts(ax) == ["$k=10$", "$k=100$"]
    mean_100 = [ln for ln in ax.get_lines() if ln.get_label() == "$k=100$"][0]
    np.testing.assert_allclose(mean_100.get_ydata(), 1.5 * alphas**2)


@pytest.mark.parametrize(
    ("losses", "match"),
    [
        ({}, "non-empty mapping"),
        ({0: np.zeros(5)}, "key of losses_by_k=0 is out of range"),
        ({10: np.zeros(4)}, "has 4 values along its last axis but alphas has 5"),
        ({10: np.zeros((2, 2, 5))}, r"shape \(n_alpha,\) or \(n_dirs, n_alpha\)"),
    ],
)
def test_plot_slices_errors(losses, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_slices(np.linspace(-1, 1, 5), losses)


# -------------------------------------------------------------------------- contours


def _bowl(scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.linspace(-1, 1, 9)
    y = np.linspace(-2, 2, 7)
    xx, yy = np.meshgrid(x, y)
    return x, y, 0.1 + scale * (xx**2 + 0.5 * yy**2)


def test_plot_contours_shared_levels_and_colorbar():
    x, y, z1 = _bowl(1.0)
    _, _, z2 = _bowl(2.0)
    fig = plotting.plot_contours(x, y, {100: z2, 10: z1}, levels=6)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["$k=10$", "$k=100$"]
    assert all(_labelled(ax) for ax in panels)
    assert len(fig.axes) == 3  # two panels and one colour bar
    filled = [ax.collections[0] for ax in panels]
    np.testing.assert_allclose(filled[0].levels, filled[1].levels)
    np.testing.assert_allclose(filled[0].levels[[0, -1]], [z1.min(), z2.max()])


def test_plot_contours_log_levels_on_given_axes():
    x, y, z = _bowl(1.0)
    fig, axes = plt.subplots(1, 1, squeeze=False)
    out = plotting.plot_contours(x, y, {5: z}, axes=list(axes[0]), log_levels=True)
    assert out is fig
    levels = axes[0][0].collections[0].levels
    np.testing.assert_allclose(np.diff(np.log(levels)), np.log(levels[1] / levels[0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(values_by_k={1: np.zeros((9, 7))}), r"has shape \(9, 7\) but the grid"),
        (dict(values_by_k={1: np.zeros((7, 9))}, log_levels=True), "needs positive"),
        (dict(values_by_k={1: np.ones((7, 9))}, levels=1), "levels=1 is out of range"),
        (dict(values_by_k={}), "non-empty mapping"),
    ],
)
def test_plot_contours_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_contours(np.zeros(9), np.zeros(7), **kwargs)


def test_plot_contours_wrong_number_of_axes():
    x, y, z = _bowl(1.0)
    _, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="got 2 axes for 1 panels"):
        plotting.plot_contours(x, y, {3: z}, axes=axes)


# ----------------------------------------------------------------------------- delta


@dataclass
class _Fit:
    slope: float
    intercept: float
    k_min: float


def test_plot_delta_all_layers():
    k = np.arange(2, 1001)
    mc = 3.0 / k**2
    ax = plotting.plot_delta(
        k,
        mc,
        mc_se=0.1 * mc,
        taylor=2.5 / k**2,
        bound=50.0 / k**2,
        slope_fit=_Fit(slope=-2.0, intercept=np.log(3.0), k_min=100),
        threshold=1e-4,
        k_star=174,
    )
    assert _labelled(ax)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = _legend_texts(ax)
    for expected in (
        "Monte Carlo",
        r"$\pm 2$ s.e.",
        "closed form (quadratic)",
        r"bound $C/k^2$",
        "fit: slope -2.00",
        r"threshold $\Delta=1.0e-04$",
        "$k^*=174$",
    ):
        assert expected in labels
    fit = [ln for ln in ax.get_lines() if ln.get_label() == "fit: slope -2.00"][0]
    assert fit.get_xdata()[0] == 100  # drawn from k_min on
    np.testing.assert_allclose(fit.get_ydata(), mc[k >= 100])


def test_plot_delta_band_cut_where_interval_reaches_zero():
    k = np.array([2.0, 3.0, 4.0])
    mc = np.array([1.0, 0.5, 0.25])
    se = np.array([1.0, 0.1, 0.1])  # the first interval reaches below zero
    ax = plotting.plot_delta(k, mc, mc_se=se, slope_fit=(-1.0, 0.0))
    vertices = ax.collections[0].get_paths()[0].vertices
    lower_at_2 = vertices[vertices[:, 0] == 2.0, 1].min()
    assert lower_at_2 == pytest.approx(0.1)  # cut at mc / 10 = 0.1
    lower_at_4 = vertices[vertices[:, 0] == 4.0, 1].min()
    assert lower_at_4 == pytest.approx(0.05)  # mc - 2 se, not cut
    assert "fit: slope -1.00" in _legend_texts(ax)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mc=np.ones(3)), "mc has 3 values along its last axis but k has 4"),
        (dict(taylor=np.ones(2)), "taylor has 2 values"),
        (dict(bound=np.ones(5)), "bound has 5 values"),
        (dict(mc_se=np.ones(1)), "mc_se has 1 values"),
        (dict(threshold=-1.0), "threshold must be finite and > 0"),
        (dict(k_star=0), "k_star must be finite and > 0"),
        (dict(slope_fit=(1.0,)), r"must be \(slope, intercept\), got 1 values"),
        (dict(slope_fit="steep"), "object with .slope and .intercept"),
        (dict(slope_fit=(np.inf, 0.0)), "slope_fit is not finite"),
    ],
)
def test_plot_delta_errors(kwargs, match):
    args = dict(k=np.arange(2, 6), mc=np.ones(4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plotting.plot_delta(**args)


def test_plot_delta_nonpositive_k():
    with pytest.raises(ValueError, match="k must be positive"):
        plotting.plot_delta([0, 1], [1.0, 1.0])


# ---------------------------------------------------------------------------- taylor


def test_plot_taylor_error_loglog_with_reference():
    r = np.geomspace(1e-3, 1e-1, 5)
    ax = plotting.plot_taylor_error(
        r, {"top eigvec": 2 * r, "random": torch.tensor(3 * r)}
    )
    assert _labelled(ax)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert _legend_texts(ax) == ["top eigvec", "random", "slope 1"]
    ref = ax.get_lines()[-1]
    np.testing.assert_allclose(ref.get_ydata(), 2 * r)


@pytest.mark.parametrize(
    ("radii", "errors", "match"),
    [
        (np.array([0.0, 1.0]), {"a": np.ones(2)}, "radii must be positive"),
        (np.ones(3), {}, "non-empty mapping"),
        (np.ones(3), {"a": np.ones(2)}, r"rel_errors_by_label\['a'\] has 2 values"),
    ],
)
def test_plot_taylor_error_errors(radii, errors, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_taylor_error(radii, errors)


# -------------------------------------------------------------------------- variance


def test_plot_variance_comparison_bars():
    names = ["gaussian", "sobol", "ball"]
    ax = plotting.plot_variance_comparison(names, [1e-3, 1e-5, 2e-4], errors=[0, 0, 0])
    assert _labelled(ax) and ax.get_yscale() == "log"
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_allclose(heights, [1e-3, 1e-5, 2e-4])
    assert [t.get_text() for t in ax.get_xticklabels()] == names


@pytest.mark.parametrize(
    ("variances", "errors", "match"),
    [
        ([1.0, 2.0], None, "variances has 2 values along its last axis but names"),
        ([1.0, 0.0, 2.0], None, "variances must be positive.*'b'"),
        ([1.0, 1.0, 1.0], [0.1], "errors has 1 values"),
    ],
)
def test_plot_variance_comparison_errors(variances, errors, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_variance_comparison(["a", "b", "c"], variances, errors=errors)


# --------------------------------------------------------------------------- heatmap


def test_plot_heatmap_annotations_and_ticks():
    table = np.array([[120.0, np.nan], [40.0, 900.0]])
    ax = plotting.plot_heatmap(
        table,
        "subspace dimension $d$",
        r"threshold $\Delta$",
        row_ticks=[2, 10],
        col_ticks=["1e-3", "1e-4"],
        value_label="$k^*$",
        log=True,
    )
    assert ax.get_ylabel() == "subspace dimension $d$"
    assert ax.get_xlabel() == r"threshold $\Delta$"
    assert [t.get_text() for t in ax.texts] == ["120", "\u2013", "40", "900"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "10"]


def test_plot_heatmap_text_is_readable_on_dark_cells():
    from matplotlib.colors import to_rgb

    colours = {
        log: [to_rgb(t.get_color()) for t in plotting.plot_heatmap(
            np.array([[10.0, 1000.0]]), "r", "c", log=log).texts]
        for log in (False, True)
    }  # fmt: skip
    assert colours[False] == colours[True] == [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]
    # every entry equal: all cells take the dark bottom colour
    ax = plotting.plot_heatmap(np.full((2, 2), 559.0), "r", "c", log=True)
    assert {to_rgb(t.get_color()) for t in ax.texts} == {(1.0, 1.0, 1.0)}


@pytest.mark.parametrize(
    ("table", "kwargs", "match"),
    [
        (np.ones(3), {}, "non-empty 2-D array"),
        (np.full((2, 2), np.nan), {}, "no finite entry"),
        (np.ones((2, 2)), dict(row_ticks=[1]), r"tick labels \(1 rows, 2 columns\)"),
        (np.zeros((2, 2)), dict(log=True), "log=True needs positive entries"),
    ],
)
def test_plot_heatmap_errors(table, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_heatmap(table, "rows", "cols", **kwargs)
