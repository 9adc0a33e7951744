"""Tests of lsutils.sampling: shapes, seeds, covariances and every error path."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lsutils.sampling import DISTRIBUTIONS, covariance, draw, is_gaussian


def _curvature(d: int, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with both signs of eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    evals = torch.linspace(-1.0, 5.0, d, dtype=torch.float64)
    return (Q * evals) @ Q.T


def _kwargs(distribution: str, d: int) -> dict:
    return {"curvature": _curvature(d)} if distribution == "curvature" else {}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_shape_dtype_and_seeds(distribution: str) -> None:
    kw = _kwargs(distribution, 3)
    a = draw(distribution, 64, 3, 0.2, seed=1, **kw)
    b = draw(distribution, 64, 3, 0.2, seed=1, **kw)
    c = draw(distribution, 64, 3, 0.2, seed=2, **kw)
    assert a.shape == (64, 3) and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_empirical_covariance_matches(distribution: str) -> None:
    d, sigma, S = 3, 0.3, 2**16
    kw = _kwargs(distribution, d)
    theta = draw(distribution, S, d, sigma, seed=0, **kw)
    emp = theta.T @ theta / S
    exact = covariance(distribution, d, sigma, **kw)
    assert exact.shape == (d, d) and exact.dtype == torch.float64
    assert torch.allclose(emp, exact, atol=0.03 * sigma**2)
    assert theta.mean(dim=0).abs().max() < 0.02 * sigma


def test_curvature_covariance_is_laplace_shaped() -> None:
    d, sigma, lam = 4, 0.5, 0.1
    A = _curvature(d)
    cov = covariance("curvature", d, sigma, curvature=A, lam=lam)
    # same average variance as the isotropic sampler
    assert math.isclose(float(cov.trace()), sigma**2 * d, rel_tol=1e-12)
    # Sigma_c is proportional to (A_+ + lam I)^{-1}
    evals, V = torch.linalg.eigh(A)
    A_plus = (V * evals.clamp(min=0)) @ V.T
    prod = cov @ (A_plus + lam * torch.eye(d, dtype=torch.float64))
    scale = prod[0, 0]
    assert torch.allclose(prod, scale * torch.eye(d, dtype=torch.float64), atol=1e-12)
    # the flattest direction (clipped eigenvalue) gets the largest variance
    flat = V[:, 0]
    assert math.isclose(
        float(flat @ cov @ flat), float(torch.linalg.eigvalsh(cov).max()), rel_tol=1e-9
    )


def test_ball_radius_and_uniformity() -> None:
    d, sigma, S = 3, 0.2, 20_000
    theta = draw("ball", S, d, sigma, seed=0)
    radius = theta.norm(dim=1)
    R = sigma * math.sqrt(d + 2)
    assert radius.max() <= R
    assert radius.max() > 0.99 * R
    # uniform in the ball: P(|theta| < R/2) = 2^-d
    frac = float((radius < R / 2).double().mean())
    assert abs(frac - 2.0**-d) < 4 * math.sqrt(2.0**-d / S)


def test_sobol_power_of_two_no_warning_and_balanced_mean() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theta = draw("sobol", 2**12, 2, 1.0, seed=0)
    # plain Monte Carlo would give |mean| ~ 1/sqrt(4096) = 0.016
    assert theta.mean(dim=0).abs().max() < 2e-3


def test_sobol_warns_when_not_power_of_two() -> None:
    with pytest.warns(UserWarning, match="not a power of two.*2\\*\\*n") as rec:
        theta = draw("sobol", 100, 2, 1.0, seed=0)
    assert theta.shape == (100, 2)
    assert len(rec) == 1
    assert rec[0].filename == __file__


def test_is_gaussian() -> None:
    assert [is_gaussian(x) for x in DISTRIBUTIONS] == [True, False, True, True]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distribution": "uniform"}, "unknown distribution 'uniform'.*'gaussian'"),
        ({"S": 0}, "S=0 is out of range: expected 1 <= S"),
        ({"d": 0}, "d=0 is out of range: expected 1 <= d"),
        ({"sigma": 0.0}, "sigma must be finite and > 0, got 0.0"),
        ({"sigma": -1.0}, "sigma must be finite and > 0"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"distribution": "curvature"}, "needs a curvature matrix"),
        (
            {"distribution": "curvature", "curvature": torch.eye(3)},
            r"curvature must have shape \(2, 2\) to match d=2, got \(3, 3\)",
        ),
        (
            {
                "distribution": "curvature",
                "curvature": torch.tensor([[1, 2], [0, 1.0]]),
            },
            "curvature must be symmetric",
        ),
        (
            {
                "distribution": "curvature",
                "curvature": torch.tensor([[1, float("nan")], [0, 1.0]]),
            },
            "curvature has 1 non-finite value",
        ),
        (
            {"distribution": "curvature", "curvature": torch.eye(2), "lam": 0.0},
            "lam must be finite and > 0",
        ),
    ],
)
def test_draw_errors(kwargs: dict, match: str) -> None:
    args = {"distribution": "gaussian", "S": 8, "d": 2, "sigma": 1.0, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        draw(**args)


def test_covariance_errors() -> None:
    with pytest.raises(ValueError, match="unknown distribution 'x'"):
        covariance("x", 2, 1.0)
    with pytest.raises(ValueError, match="needs a curvature matrix"):
        covariance("curvature", 2, 1.0)
    with pytest.raises(ValueError, match="unknown distribution 'x'"):
        is_gaussian("x")
