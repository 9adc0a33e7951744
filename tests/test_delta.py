"""Tests of lsutils.delta, bounds and kstar against references and exact problems.

The three modules share the synthetic quadratic problems defined here.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import lsutils.delta as delta_mod
from lsutils.bounds import (
    curvature_bound,
    empirical_range_bound,
    loss_difference_bound,
)
from lsutils.delta import (
    DeltaCurve,
    cumulative_means,
    delta_mc,
    delta_taylor,
    delta_taylor_components,
    orderings,
)
from lsutils.kstar import (
    fit_slope,
    ordering_slopes,
    sufficient_size,
    window_complete,
)
from lsutils.sampling import draw
from lsutils.taylor import TaylorTerms

# ---------------------------------------------------------------------------
# exactly quadratic synthetic problems
# ---------------------------------------------------------------------------


def _problem(m: int, d: int, seed: int, diagonal: bool = False) -> TaylorTerms:
    g = torch.Generator().manual_seed(seed)
    loss = torch.rand(m, generator=g, dtype=torch.float64)
    grad = torch.randn(m, d, generator=g, dtype=torch.float64)
    A = torch.randn(m, d, d, generator=g, dtype=torch.float64)
    A = (A + A.mT) / 2
    if diagonal:
        A = torch.diag_embed(A.diagonal(dim1=1, dim2=2))
    return TaylorTerms(loss, grad, A)


def _exact_losses(terms: TaylorTerms, theta: torch.Tensor) -> torch.Tensor:
    """``l_i(theta)`` of the exactly quadratic problem, written out directly."""
    quad = torch.einsum("si,nij,sj->sn", theta, terms.hess, theta)
    return terms.loss + theta @ terms.grad.T + 0.5 * quad


_FACTOR = 0.5 * torch.tensor(
    [[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.4]], dtype=torch.float64
)
COVS = {
    "isotropic": 0.09 * torch.eye(3, dtype=torch.float64),
    "anisotropic": _FACTOR @ _FACTOR.T,
    "rank-deficient": torch.diag(torch.tensor([0.2, 0.05, 0.0], dtype=torch.float64)),
}


def _factor(cov: torch.Tensor) -> torch.Tensor:
    lam, V = torch.linalg.eigh(cov)
    return V * lam.clamp(min=0).sqrt()


def _reference_taylor(
    terms: TaylorTerms, cov: torch.Tensor, order: torch.Tensor
) -> np.ndarray:
    """Closed form per ordering and k with explicit matrices (no whitening)."""
    m = len(terms)
    out = np.zeros((order.shape[0], m - 1))
    for r, perm in enumerate(order):
        t = terms.permute(perm)
        for k in range(2, m + 1):
            c = t.loss[:k].mean() - t.loss[: k - 1].mean()
            b = t.grad[:k].mean(0) - t.grad[: k - 1].mean(0)
            B = t.hess[:k].mean(0) - t.hess[: k - 1].mean(0)
            mean = c + 0.5 * torch.trace(B @ cov)
            var = b @ cov @ b + 0.5 * torch.trace(B @ cov @ B @ cov)
            out[r, k - 2] = float(mean**2 + var)
    return out


# ---------------------------------------------------------------------------
# orderings and cumulative means
# ---------------------------------------------------------------------------


def test_orderings_are_seeded_permutations() -> None:
    a = orderings(20, 4, seed=0)
    assert a.shape == (4, 20) and a.dtype == torch.int64
    assert torch.equal(a.sort(dim=1).values, torch.arange(20).expand(4, 20))
    assert torch.equal(a, orderings(20, 4, seed=0))
    assert not torch.equal(a, orderings(20, 4, seed=1))
    assert not torch.equal(a[0], a[1])
    with pytest.raises(ValueError, match="m=0 is out of range"):
        orderings(0, 2, seed=0)
    with pytest.raises(ValueError, match="R=0 is out of range"):
        orderings(5, 0, seed=0)
    with pytest.raises(ValueError, match="seed=-1 is out of range"):
        orderings(5, 2, seed=-1)


def test_cumulative_means_and_recurrence() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(3, 200, generator=g, dtype=torch.float64)
    perm = orderings(200, 1, seed=3)[0]
    L = cumulative_means(v, perm)
    vp = v[:, perm]
    explicit = torch.stack([vp[:, :k].mean(dim=1) for k in range(1, 201)], dim=1)
    torch.testing.assert_close(L, explicit, rtol=0, atol=1e-13)
    k = torch.arange(2, 201, dtype=torch.float64)
    recurrence = (vp[:, 1:] - L[:, :-1]) / k
    torch.testing.assert_close(L[:, 1:] - L[:, :-1], recurrence, rtol=0, atol=1e-12)
    plain = v.cumsum(1) / torch.arange(1, 201, dtype=torch.float64)
    torch.testing.assert_close(cumulative_means(v), plain, rtol=0, atol=0)


def test_cumulative_means_errors() -> None:
    with pytest.raises(ValueError, match="takes one ordering of shape"):
        cumulative_means(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="every row of order must be a permutation"):
        cumulative_means(torch.zeros(3), [0, 0, 1])
    with pytest.raises(ValueError, match=r"order must have shape \(R, 3\)"):
        cumulative_means(torch.zeros(3), [0, 1])
    with pytest.raises(ValueError, match="at least one sample on the last axis"):
        cumulative_means(torch.tensor(1.0))


# ---------------------------------------------------------------------------
# Monte Carlo estimator
# ---------------------------------------------------------------------------


def test_delta_mc_equals_naive_double_loop() -> None:
    g = torch.Generator().manual_seed(1)
    S, m = 6, 9
    losses = torch.rand(S, m, generator=g, dtype=torch.float64)
    order = orderings(m, 3, seed=2)
    curve = delta_mc(losses, order)
    v = np.zeros((S, m - 1))
    per = np.zeros((3, m - 1))
    for s in range(S):
        for r in range(3):
            lp = losses[s, order[r]].tolist()
            for k in range(2, m + 1):
                d2 = (sum(lp[:k]) / k - sum(lp[: k - 1]) / (k - 1)) ** 2
                v[s, k - 2] += d2 / 3
                per[r, k - 2] += d2 / S
    np.testing.assert_array_equal(curve.k, np.arange(2, m + 1))
    np.testing.assert_allclose(curve.value, v.mean(0), rtol=1e-12)
    np.testing.assert_allclose(curve.se, v.std(0, ddof=1) / math.sqrt(S), rtol=1e-10)
    np.testing.assert_allclose(curve.per_ordering, per, rtol=1e-12)


def test_delta_mc_blocks_merge_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(2)
    losses = torch.rand(50, 30, generator=g, dtype=torch.float64)
    order = orderings(30, 2, seed=0)
    whole = delta_mc(losses, order)
    monkeypatch.setattr(delta_mod, "_BLOCK_ENTRIES", 7 * 30)  # blocks of 7 rows
    blocked = delta_mc(losses, order)
    np.testing.assert_allclose(blocked.value, whole.value, rtol=1e-13)
    np.testing.assert_allclose(blocked.se, whole.se, rtol=1e-10)
    np.testing.assert_allclose(blocked.per_ordering, whole.per_ordering, rtol=1e-13)


def test_delta_mc_errors() -> None:
    order = orderings(4, 2, seed=0)
    with pytest.raises(ValueError, match=r"losses must be an \(S, m\) matrix"):
        delta_mc(torch.zeros(4), order)
    with pytest.raises(ValueError, match=r"S >= 2 points.*got shape \(1, 4\)"):
        delta_mc(torch.zeros(1, 4), order)
    bad = torch.zeros(3, 4)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="loss matrix has 1 non-finite.*lower sigma"):
        delta_mc(bad, order)
    with pytest.raises(ValueError, match=r"order must have shape \(R, 4\)"):
        delta_mc(torch.zeros(3, 4), orderings(5, 2, seed=0))
    with pytest.raises(ValueError, match="every row of order must be a permutation"):
        delta_mc(torch.zeros(3, 4), [[0, 1, 2, 2]])


# ---------------------------------------------------------------------------
# closed form
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cov_name", list(COVS))
def test_delta_taylor_matches_dense_reference(cov_name: str) -> None:
    terms = _problem(12, 3, seed=4)
    order = orderings(12, 3, seed=5)
    cov = COVS[cov_name]
    curve = delta_taylor(terms, cov, order)
    ref = _reference_taylor(terms, cov, order)
    np.testing.assert_allclose(curve.per_ordering, ref, rtol=1e-11)
    np.testing.assert_allclose(curve.value, ref.mean(0), rtol=1e-11)
    assert np.all(curve.se == 0)
    parts = delta_taylor_components(terms, cov, order)
    np.testing.assert_allclose(parts.total, curve.value, rtol=1e-12)
    assert np.all(parts.var_linear >= 0) and np.all(parts.var_quadratic >= 0)


def test_delta_taylor_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    terms = _problem(40, 3, seed=6)
    order = orderings(40, 2, seed=7)
    whole = delta_taylor(terms, COVS["anisotropic"], order)
    monkeypatch.setattr(delta_mod, "_BLOCK_ENTRIES", 60)  # blocks of 6 rows
    blocked = delta_taylor(terms, COVS["anisotropic"], order)
    np.testing.assert_allclose(blocked.per_ordering, whole.per_ordering, rtol=1e-12)


@pytest.mark.parametrize("cov_name", ["isotropic", "anisotropic"])
def test_mc_matches_closed_form_to_1e3(cov_name: str) -> None:
    """Exactly quadratic losses: QMC with antithetic pairs, 2**17 points."""
    terms = _problem(50, 3, seed=0)
    cov = COVS[cov_name]
    order = orderings(50, 3, seed=1)
    z = draw("sobol", 2**16, 3, 1.0, seed=2)
    theta = torch.cat([z, -z]) @ _factor(cov).T
    mc = delta_mc(_exact_losses(terms, theta), order)
    exact = delta_taylor(terms, cov, order)
    rel = np.abs(mc.value / exact.value - 1)
    assert rel.mean() < 1e-3
    assert rel.max() < 5e-3


def test_gaussian_mc_within_standard_errors() -> None:
    """Plain Monte Carlo: every k within 3 se; 200k points: mean error ~ se."""
    terms = _problem(50, 3, seed=0)
    cov = COVS["anisotropic"]
    order = orderings(50, 3, seed=1)
    exact = delta_taylor(terms, cov, order)
    F = _factor(cov)
    theta = draw("gaussian", 20_000, 3, 1.0, seed=3) @ F.T
    small = delta_mc(_exact_losses(terms, theta), order)
    assert np.all(np.abs(small.value - exact.value) <= 3 * small.se)
    theta = draw("gaussian", 200_000, 3, 1.0, seed=4) @ F.T
    big = delta_mc(_exact_losses(terms, theta), order)
    rel = np.abs(big.value / exact.value - 1)
    assert rel.mean() < 3 * np.mean(big.se / exact.value)
    assert rel.mean() < 1e-2


def test_diagonal_shortcut() -> None:
    cov = torch.diag(torch.tensor([0.3, 0.1, 0.05], dtype=torch.float64))
    order = orderings(30, 2, seed=0)
    diag_terms = _problem(30, 3, seed=1, diagonal=True)
    full = delta_taylor(diag_terms, cov, order)
    short = delta_taylor(diag_terms, cov, order, diagonal=True)
    np.testing.assert_allclose(short.value, full.value, rtol=1e-12)
    terms = _problem(30, 3, seed=1)
    full = delta_taylor(terms, cov, order)
    short = delta_taylor(terms, cov, order, diagonal=True)
    assert np.max(np.abs(short.value / full.value - 1)) > 1e-2
    # the shortcut is the full formula applied to the diagonal part of each A_i
    zeroed = TaylorTerms(
        terms.loss, terms.grad, torch.diag_embed(terms.hess.diagonal(dim1=1, dim2=2))
    )
    np.testing.assert_allclose(
        short.value, delta_taylor(zeroed, cov, order).value, rtol=1e-12
    )


def test_delta_taylor_errors() -> None:
    terms = _problem(5, 2, seed=0)
    order = orderings(5, 1, seed=0)
    with pytest.raises(ValueError, match=r"cov must be a \(2, 2\) covariance"):
        delta_taylor(terms, torch.eye(3), order)
    with pytest.raises(ValueError, match="cov must be symmetric"):
        delta_taylor(terms, torch.tensor([[1.0, 0.5], [0.0, 1.0]]), order)
    with pytest.raises(ValueError, match="positive semi-definite.*-1"):
        delta_taylor(terms, torch.diag(torch.tensor([1.0, -1.0])), order)
    with pytest.raises(ValueError, match="cov has 1 non-finite"):
        delta_taylor(terms, torch.tensor([[1.0, 0.0], [0.0, math.nan]]), order)
    with pytest.raises(ValueError, match="terms must be a TaylorTerms"):
        delta_taylor(terms.loss, torch.eye(2), order)
    with pytest.raises(ValueError, match="needs m >= 2 samples, got m=1"):
        delta_taylor(terms.subset(torch.tensor([0])), torch.eye(2), [[0]])
    with pytest.raises(ValueError, match=r"order must have shape \(R, 5\)"):
        delta_taylor(terms, torch.eye(2), orderings(4, 1, seed=0))
    with pytest.raises(ValueError, match="terms must be a TaylorTerms"):
        curvature_bound(terms.loss, torch.eye(2))


# ---------------------------------------------------------------------------
# bounds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cov_name", list(COVS))
def test_curvature_bound_holds_for_every_k_and_ordering(
    seed: int, cov_name: str
) -> None:
    terms = _problem(60, 3, seed=seed)
    cov = COVS[cov_name] * (1.0 + 3.0 * seed)  # also large radii
    order = orderings(60, 5, seed=seed)
    curve = delta_taylor(terms, cov, order)
    bound = curvature_bound(terms, cov)
    assert np.all(curve.per_ordering <= bound.values(curve.k) * (1 + 1e-12))
    assert bound.d == 3
    assert math.isclose(bound.sigma_trace, float(cov.trace()), rel_tol=1e-12)
    assert bound.M == pytest.approx(
        float(torch.linalg.matrix_norm(terms.hess, ord=2).max()), rel=1e-12
    )


@pytest.mark.parametrize(
    ("l_range", "G", "M", "var"), [(1, 1, 1, 0.25), (3, 0.5, 2, 2)]
)
def test_curvature_bound_is_attained(
    l_range: float, G: float, M: float, var: float
) -> None:
    """Two samples with opposite gradients and curvatures reach C / 4 at k = 2."""
    terms = TaylorTerms(
        torch.tensor([0.0, l_range]),
        torch.tensor([[-G], [G]]),
        torch.tensor([[[-M]], [[M]]]),
    )
    cov = torch.tensor([[var]])
    bound = curvature_bound(terms, cov)
    value = delta_taylor(terms, cov, [[0, 1]]).at(2)
    assert value == pytest.approx(float(bound.values(2)), rel=1e-12)
    assert bound.k_star(value) == pytest.approx(2.0, rel=1e-12)


def test_bound_k_star_and_threshold_validation() -> None:
    bound = curvature_bound(_problem(10, 2, seed=0), torch.eye(2))
    k = bound.k_star(1e-4)
    assert float(bound.values(k)) == pytest.approx(1e-4, rel=1e-12)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="threshold must be finite and > 0"):
            bound.k_star(bad)


def test_empirical_range_bound_on_nonquadratic_losses() -> None:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(300, 2, generator=g, dtype=torch.float64)
    a = torch.randn(40, 2, generator=g, dtype=torch.float64)
    losses = torch.log1p(torch.exp(theta @ a.T)) + torch.rand(40, generator=g)
    curve = delta_mc(losses, orderings(40, 4, seed=1))
    bound = empirical_range_bound(losses)
    assert np.all(curve.per_ordering <= bound.values(curve.k))
    r = losses.max(1).values - losses.min(1).values
    assert bound.C == pytest.approx(float((r**2).mean()), rel=1e-14)
    assert bound.range_max == pytest.approx(float(r.max()))
    assert bound.S == 300
    assert bound.k_star(bound.C / 400) == pytest.approx(20.0)


def test_loss_difference_bound() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(100, generator=g, dtype=torch.float64) * 3
    L = cumulative_means(v)
    k = np.arange(2, 101)
    diff = np.abs((L[1:] - L[:-1]).numpy())
    bound = loss_difference_bound(float(v.max() - v.min()), k)
    assert np.all(diff <= bound + 1e-15)
    with pytest.raises(ValueError, match="k must be >= 2"):
        loss_difference_bound(1.0, [1, 2])
    with pytest.raises(ValueError, match="l_range must be finite and >= 0"):
        loss_difference_bound(-1.0, [2])


# ---------------------------------------------------------------------------
# slope and sufficient size
# ---------------------------------------------------------------------------


def test_fit_slope_recovers_power_law() -> None:
    rng = np.random.default_rng(0)
    k = np.arange(2, 5001)
    value = 7.0 * k**-1.7 * np.exp(0.05 * rng.standard_normal(k.size))
    fit = fit_slope(k, value, k_min=100)
    assert fit.n_points == 4901 and fit.k_min == 100
    assert abs(fit.slope + 1.7) < 4 * fit.slope_se
    assert 0 < fit.slope_se < 0.01
    assert fit.predict(1000) == pytest.approx(7.0 * 1000**-1.7, rel=0.05)
    exact = fit_slope(k, 3.0 * k**-2.0, k_min=10)
    assert exact.slope == pytest.approx(-2.0, abs=1e-12)
    assert exact.slope_se < 1e-10


def test_fit_slope_errors() -> None:
    k = np.arange(2, 50)
    with pytest.raises(ValueError, match="at least 3 points with k >= k_min=100"):
        fit_slope(k, 1.0 / k)
    with pytest.raises(ValueError, match=r"got 2 \(k runs from 2 to 49\); lower k_min"):
        fit_slope(k, np.where(k < 48, -1.0, 1.0 / k), k_min=2)
    with pytest.raises(ValueError, match="1-D of the same length"):
        fit_slope(k, np.ones(3))


def test_ordering_slopes() -> None:
    k = np.arange(2, 2001)
    rng = np.random.default_rng(1)
    per = 3.0 * k**-2.0 * np.exp(0.3 * rng.standard_normal((8, 1)) * np.log(k))
    curve = DeltaCurve(k, per.mean(0), np.zeros(k.size), per)
    slopes = ordering_slopes(curve, k_min=100)
    assert slopes.shape == (8,)
    for r in range(8):
        assert slopes[r] == pytest.approx(fit_slope(k, per[r], k_min=100).slope)
    # each row is an exact power law: least squares sees no residual at all,
    # the orderings disagree by their drawn exponents
    assert fit_slope(k, per[0], k_min=100).slope_se < 1e-10
    assert slopes.std() > 0.1
    flat = per.copy()
    flat[3] = 0.0  # an ordering with no positive point: no slope
    curve = DeltaCurve(k, flat.mean(0), np.zeros(k.size), flat)
    assert np.isnan(ordering_slopes(curve, k_min=100)[3])
    with pytest.raises(ValueError, match="curve must be a DeltaCurve"):
        ordering_slopes(per)
    with pytest.raises(ValueError, match="k_min=0 is out of range"):
        ordering_slopes(curve, k_min=0)


def _curve(value: np.ndarray, se: np.ndarray | None = None, per=None) -> DeltaCurve:
    k = np.arange(2, value.size + 2)
    se = np.zeros_like(value) if se is None else se
    per = value[None] if per is None else per
    return DeltaCurve(k, value, se, per)


def test_sufficient_size_known_answers() -> None:
    k = np.arange(2, 1001).astype(float)
    value = 100.0 / k**2
    assert sufficient_size(_curve(value), 1e-2).k_star == 100
    bumped = value.copy()
    bumped[(k >= 150) & (k <= 155)] = 1.0
    # doubling window: any k in [75, 155] sees the bump before 2k
    res = sufficient_size(_curve(bumped), 1e-2)
    assert res.k_star == 156 and res.reached
    assert "first at k* = 156" in res.reason
    assert sufficient_size(_curve(bumped), 1e-2, window=20).k_star == 100
    # band: 1.2 * 100 / k^2 <= 0.01 from k = 110, 0.8 * 100 / k^2 from k = 90
    res = sufficient_size(_curve(value, se=0.1 * value), 1e-2, z=2.0)
    assert (res.k_lo, res.k_star, res.k_hi) == (90, 100, 110)


def test_sufficient_size_window_complete() -> None:
    k = np.arange(2, 1001).astype(float)
    value = 100.0 / k**2
    res = sufficient_size(_curve(value), 1e-2)  # k* = 100, window to 200
    assert res.window_complete is True and "cut at m" not in res.reason
    # k* = 633 (100 / 633^2 < 2.5e-4): doubling needs 1266 > m = 1000
    res = sufficient_size(_curve(value), 2.5e-4)
    assert res.k_star == 633 and res.window_complete is False
    assert "the window is cut at m = 1000" in res.reason
    assert sufficient_size(_curve(value), 2.5e-4, window=300).window_complete
    assert sufficient_size(_curve(value), 1e-9).window_complete is None
    assert window_complete(500, 1000) and not window_complete(501, 1000)
    assert window_complete(5, 15) and not window_complete(5, 14)  # at least 10
    for bad in ({"k_star": 0, "m": 10}, {"k_star": 1, "m": 10, "window": -1}):
        with pytest.raises(ValueError, match="is out of range"):
            window_complete(**bad)


def test_sufficient_size_per_ordering_spread() -> None:
    k = np.arange(2, 1001).astype(float)
    consts = np.array([50.0, 100.0, 200.0, 1e9])
    per = consts[:, None] / k**2
    res = sufficient_size(_curve(per.mean(0), per=per), 1e-2)
    # ceil(sqrt(c / 0.01)) = 71, 100, 142, never
    np.testing.assert_array_equal(res.per_ordering, [71, 100, 142, np.inf])
    assert (res.ordering_p10, res.ordering_median, res.ordering_p90) == (71, 100, 142)


def test_sufficient_size_unreached() -> None:
    k = np.arange(2, 1001).astype(float)
    res = sufficient_size(_curve(100.0 / k**2), 1e-5)
    assert not res.reached and res.k_star is None and res.k_hi is None
    assert res.k_extrapolated == pytest.approx(math.sqrt(1e7), rel=1e-9)
    assert res.fit is not None and res.fit.slope == pytest.approx(-2.0)
    assert "stays above 1e-05 up to m = 1000" in res.reason
    assert "crosses it near k = 3.16e+03" in res.reason
    dip = 100.0 / k**2
    dip[-5:] = 1e-6  # below only over the last points, window never fits
    dip[-1] = 1.0
    res = sufficient_size(_curve(dip), 1e-5)
    assert not res.reached and "dips below 1e-05 at k = 996" in res.reason
    rising = np.linspace(1.0, 2.0, k.size)
    res = sufficient_size(_curve(rising), 1e-3)
    assert res.k_extrapolated is None
    assert re.search(r"slope 0\.\d\d for k >= 100 is not negative", res.reason)
    res = sufficient_size(_curve(rising), 1e-3, k_min=5000)
    assert res.fit is None and "no extrapolation: fit_slope needs" in res.reason
    # trend below the threshold from k ~ 320, spikes every 50 keep the curve
    # above it: no "extrapolation" to a k inside the curve
    spiky = 100.0 / k**2
    spiky[k % 50 == 0] = 1e-2
    res = sufficient_size(_curve(spiky), 1e-3)
    assert not res.reached and res.k_extrapolated is None
    assert re.search(r"already below it from k = 3\d\d, so the noise", res.reason)


def test_sufficient_size_validation() -> None:
    curve = _curve(np.ones(10))
    for bad in (0, -1.0, math.inf):
        with pytest.raises(ValueError, match="threshold must be finite and > 0"):
            sufficient_size(curve, bad)
    with pytest.raises(ValueError, match="window=-1 is out of range.*or None"):
        sufficient_size(curve, 1.0, window=-1)
    with pytest.raises(ValueError, match="z must be finite and >= 0"):
        sufficient_size(curve, 1.0, z=-2.0)
    with pytest.raises(ValueError, match="curve must be a DeltaCurve"):
        sufficient_size(np.ones(10), 1.0)
    with pytest.raises(ValueError, match="k_min=0 is out of range.*or None"):
        sufficient_size(curve, 1.0, k_min=0)


def test_delta_curve_container() -> None:
    curve = _curve(np.array([3.0, 2.0, 1.0]))
    assert len(curve) == 3 and curve.at(3) == 2.0
    again = DeltaCurve(**curve.to_dict())
    np.testing.assert_array_equal(again.per_ordering, curve.per_ordering)
    assert again.k.dtype == np.int64
    with pytest.raises(
        ValueError, match=r"k=7 is not on the curve: expected .*\[2, 4\]"
    ):
        curve.at(7)
    with pytest.raises(ValueError, match=r"DeltaCurve expects k, value, se of shape"):
        DeltaCurve(np.arange(3), np.ones(2), np.ones(3), np.ones((1, 3)))


def test_sufficient_size_refuses_nan_and_negative_values() -> None:
    k = np.arange(2, 1001).astype(float)
    value = 100.0 / k**2
    assert sufficient_size(_curve(value), 1e-2).k_star == 100
    nan = value.copy()
    nan[k == 150] = np.nan  # counted as "above" it would move k* to 151
    with pytest.raises(
        ValueError,
        match=r"curve.value holds 1 NaN or infinite entry \(first: nan at k = 150\)"
        r": expected finite values >= 0",
    ):
        sufficient_size(_curve(nan), 1e-2)
    inf = value.copy()
    inf[[10, 20]] = np.inf
    with pytest.raises(ValueError, match="2 NaN or infinite entries"):
        sufficient_size(_curve(inf), 1e-2)
    negative = value.copy()
    negative[k >= 500] *= -1.0
    with pytest.raises(ValueError, match=r"curve.value holds 501 negative entries"):
        sufficient_size(_curve(negative), 1e-2)
    with pytest.raises(ValueError, match=r"curve.se holds 1 negative entry"):
        sufficient_size(_curve(value, se=np.where(k == 3, -1.0, 0.0)), 1e-2)
    per = np.stack([value, value])
    per[1, 7] = np.nan
    with pytest.raises(ValueError, match=r"curve.per_ordering holds 1 NaN .* k = 9\)"):
        sufficient_size(_curve(value, per=per), 1e-2)


def test_sufficient_size_refuses_non_increasing_k() -> None:
    k = np.arange(2, 1001)
    value = 100.0 / k.astype(float) ** 2
    backwards = DeltaCurve(k[::-1], value, np.zeros_like(value), value[None])
    with pytest.raises(
        ValueError,
        match=r"curve.k must be strictly increasing dataset sizes >= 1 .* got "
        r"k\[1\] = 999 after k\[0\] = 1000; sort the curve by k",
    ):
        sufficient_size(backwards, 1e-2)
    repeated = np.where(k == 5, 4, k)
    with pytest.raises(ValueError, match=r"k\[3\] = 4 after k\[2\] = 4"):
        sufficient_size(DeltaCurve(repeated, value, 0 * value, value[None]), 1e-2)
    with pytest.raises(ValueError, match=r"got k\[0\] = 0"):
        sufficient_size(DeltaCurve(k - 2, value, 0 * value, value[None]), 1e-2)


def test_zero_orderings() -> None:
    k = np.arange(2, 1001)
    value = 100.0 / k.astype(float) ** 2
    curve = DeltaCurve(k, value, np.zeros_like(value), np.empty((0, k.size)))
    with pytest.raises(
        ValueError,
        match=r"curve has no orderings \(per_ordering of shape \(0, 999\)\): .* "
        r"or pass value\[None\] as per_ordering",
    ):
        sufficient_size(curve, 1e-2)
    slopes = ordering_slopes(curve)
    assert slopes.shape == (0,)


def test_ordering_slopes_refuses_bad_curves() -> None:
    k = np.arange(2, 1001)
    value = 100.0 / k.astype(float) ** 2
    per = np.stack([value, value])
    per[0, 500] = np.nan  # would be dropped from the fit silently
    with pytest.raises(ValueError, match="curve.per_ordering holds 1 NaN"):
        ordering_slopes(DeltaCurve(k, value, 0 * value, per))
    per[0, 500] = -1.0  # would be dropped from the fit silently
    with pytest.raises(ValueError, match="curve.per_ordering holds 1 negative"):
        ordering_slopes(DeltaCurve(k, value, 0 * value, per))
    with pytest.raises(ValueError, match="curve.k must be strictly increasing"):
        ordering_slopes(DeltaCurve(k[::-1], value, 0 * value, value[None]))
