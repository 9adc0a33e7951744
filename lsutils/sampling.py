"""Distributions of the subspace coordinates ``theta`` (book chapter 5).

``Delta_k`` is an average over points ``w = w* + P^T theta`` near the minimum,
with ``theta`` drawn from a distribution ``p`` of the ``d`` subspace coordinates
(DESIGN section 6). Every distribution here has a scale ``sigma`` and a known
covariance, which is what the closed form of :func:`lsutils.delta.delta_taylor`
needs:

``"gaussian"``
    ``theta ~ N(0, sigma^2 I_d)``.
``"ball"``
    uniform in the ``d``-ball of radius ``R = sigma * sqrt(d + 2)``. A uniform
    point of the ball of radius ``R`` has ``E[|theta|^2] = R^2 d / (d + 2)``,
    spread evenly over the ``d`` coordinates, so its covariance is
    ``R^2 / (d + 2) I_d = sigma^2 I_d``: the same second moments as the Gaussian.
    It is *not* Gaussian (its fourth moments are smaller), so the Gaussian closed
    form of ``Var[D_k]`` is only an approximation for it; the mean ``E[D_k]`` is
    exact because it depends on second moments only.
``"curvature"``
    a Laplace-style Gaussian ``N(0, Sigma_c)`` shaped by a curvature matrix
    ``A`` (for instance the projected Hessian ``A_m``):
    ``Sigma_c = sigma^2 d M / tr(M)`` with ``M = (A_+ + lam I)^{-1}`` and ``A_+``
    the matrix ``A`` with its negative eigenvalues set to zero. The scaling gives
    ``tr(Sigma_c) = sigma^2 d``, the average variance of the isotropic sampler,
    so the two are compared at the same overall spread.
``"sobol"``
    scrambled Sobol' points (quasi-Monte Carlo, ``scipy.stats.qmc.Sobol``) mapped
    through the Gaussian inverse CDF and multiplied by ``sigma``. Each point is
    marginally ``N(0, sigma^2 I_d)`` (scrambling makes every point uniform on the
    cube); the points are not independent, which is what reduces the variance of
    averages over them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import stats
from scipy.stats import qmc

from lsutils._checks import (
    check_choice,
    check_finite,
    check_int_range,
    check_positive_float,
)

__all__ = [
    "DISTRIBUTIONS",
    "covariance",
    "draw",
    "is_gaussian",
]

DISTRIBUTIONS = ("gaussian", "ball", "curvature", "sobol")

# Uniform numbers from the Sobol' sequence are kept this far from 0 and 1 before
# the inverse normal CDF, so no point is mapped to an infinite coordinate.
_SOBOL_EPS = 1e-12


def is_gaussian(distribution: str) -> bool:
    """Whether points of ``distribution`` are (marginally) Gaussian.

    The closed form of ``Delta_k`` (:func:`lsutils.delta.delta_taylor`) uses the
    Gaussian fourth moments of ``theta``. It is exact for ``"gaussian"``,
    ``"curvature"`` and ``"sobol"`` (each Sobol' point is marginally Gaussian).
    For ``"ball"`` only the second moments match, so the closed form of
    ``E[D_k]`` is exact but the one of ``Var[D_k]`` is an approximation.

    Parameters
    ----------
    distribution
        One of :data:`DISTRIBUTIONS`.

    Returns
    -------
    bool
        ``False`` for ``"ball"``, ``True`` otherwise.

    Examples
    --------
    >>> is_gaussian("ball"), is_gaussian("sobol")
    (False, True)
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    return distribution != "ball"


def _check_curvature(curvature: torch.Tensor | None, d: int) -> torch.Tensor:
    """Validate the curvature matrix of the ``"curvature"`` sampler."""
    if curvature is None:
        raise ValueError(
            "distribution 'curvature' needs a curvature matrix: pass curvature="
            f"a symmetric ({d}, {d}) tensor such as the projected Hessian A_m"
        )
    A = torch.as_tensor(curvature, dtype=torch.float64)
    if A.shape != (d, d):
        raise ValueError(
            f"curvature must have shape ({d}, {d}) to match d={d}, got {tuple(A.shape)}"
        )
    check_finite("curvature", A)
    asym = float((A - A.T).abs().max())
    scale = max(float(A.abs().max()), 1e-300)
    if asym > 1e-8 * scale:
        raise ValueError(
            f"curvature must be symmetric, got max |A - A^T| = {asym:.3g}; "
            "pass (A + A.T) / 2"
        )
    return (A + A.T) / 2


def _curvature_factor(
    curvature: torch.Tensor | None, d: int, sigma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors ``V`` and variances ``s`` with ``Sigma_c = V diag(s) V^T``."""
    A = _check_curvature(curvature, d)
    lam = check_positive_float("lam", lam)
    evals, V = torch.linalg.eigh(A)
    inv = 1.0 / (evals.clamp(min=0.0) + lam)
    s = sigma**2 * d * inv / inv.sum()
    return V, s


def _check_common(distribution: str, d: int, sigma: float) -> tuple[int, float]:
    check_choice("distribution", distribution, DISTRIBUTIONS)
    d = check_int_range("d", d, 1, hint="d is the subspace dimension")
    sigma = check_positive_float("sigma", sigma)
    return d, sigma


def covariance(
    distribution: str,
    d: int,
    sigma: float,
    curvature: torch.Tensor | None = None,
    lam: float = 1e-3,
) -> torch.Tensor:
    """Exact covariance matrix of the points drawn by :func:`draw`.

    Parameters
    ----------
    distribution
        One of :data:`DISTRIBUTIONS`.
    d
        Subspace dimension.
    sigma
        Scale; the average variance per coordinate is ``sigma**2`` for every
        distribution.
    curvature
        ``(d, d)`` symmetric matrix, needed for ``"curvature"`` only (ignored
        otherwise).
    lam
        Damping added to the clipped curvature before inversion.

    Returns
    -------
    torch.Tensor
        ``(d, d)`` float64: ``sigma^2 I`` for ``"gaussian"``, ``"ball"`` and
        ``"sobol"``; ``Sigma_c = sigma^2 d M / tr(M)``,
        ``M = (A_+ + lam I)^{-1}``, for ``"curvature"``.

    Examples
    --------
    >>> covariance("ball", 2, 0.5)
    tensor([[0.2500, 0.0000],
            [0.0000, 0.2500]], dtype=torch.float64)
    >>> A = torch.diag(torch.tensor([3.0, -1.0]))  # -1 is clipped to 0
    >>> covariance("curvature", 2, 1.0, curvature=A, lam=1.0).diag()
    tensor([0.4000, 1.6000], dtype=torch.float64)
    """
    d, sigma = _check_common(distribution, d, sigma)
    if distribution == "curvature":
        V, s = _curvature_factor(curvature, d, sigma, lam)
        cov = (V * s) @ V.T
        return (cov + cov.T) / 2
    return sigma**2 * torch.eye(d, dtype=torch.float64)


def _is_power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


def _sobol_uniform(S: int, d: int, seed: int) -> np.ndarray:
    """``S`` scrambled Sobol' points in ``[0, 1)^d``."""
    try:
        sampler = qmc.Sobol(d, scramble=True, rng=seed)
    except TypeError:  # scipy < 1.15 calls the argument ``seed``
        sampler = qmc.Sobol(d, scramble=True, seed=seed)
    if _is_power_of_two(S):
        return sampler.random_base2(int(math.log2(S)))
    with warnings.catch_warnings():
        # scipy warns from inside its own code; we warn at the caller instead.
        warnings.simplefilter("ignore", UserWarning)
        return sampler.random(S)


def draw(
    distribution: str,
    S: int,
    d: int,
    sigma: float,
    seed: int,
    curvature: torch.Tensor | None = None,
    lam: float = 1e-3,
) -> torch.Tensor:
    """Draw ``S`` points ``theta`` in ``R^d`` from ``distribution``.

    Parameters
    ----------
    distribution
        One of :data:`DISTRIBUTIONS` (see the module docstring for each law).
    S
        Number of points. For ``"sobol"`` a power of two keeps the balance
        properties of the sequence; other values work but warn.
    d
        Subspace dimension.
    sigma
        Scale: every distribution has average variance ``sigma**2`` per
        coordinate (covariance :func:`covariance`).
    seed
        Seed of ``numpy.random.default_rng`` (or of the Sobol' scrambling); the
        same seed gives the same points.
    curvature
        ``(d, d)`` symmetric curvature matrix, required for ``"curvature"``
        (ignored otherwise).
    lam
        Damping of the curvature sampler, ``M = (A_+ + lam I)^{-1}``.

    Returns
    -------
    torch.Tensor
        ``(S, d)`` float64.

    Raises
    ------
    ValueError
        Unknown distribution, ``S < 1``, ``d < 1``, ``sigma <= 0``, or a missing
        or malformed curvature matrix.

    Examples
    --------
    >>> theta = draw("ball", 1000, 3, 0.1, seed=0)
    >>> theta.shape, bool(theta.norm(dim=1).max() <= 0.1 * 5**0.5)
    (torch.Size([1000, 3]), True)
    """
    d, sigma = _check_common(distribution, d, sigma)
    S = check_int_range("S", S, 1, hint="S is the number of points to draw")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if distribution == "sobol":
        if not _is_power_of_two(S):
            warnings.warn(
                f"S={S} is not a power of two: scrambled Sobol' points lose their "
                "balance properties; use S = 2**n (for instance "
                f"{2 ** math.ceil(math.log2(S))})",
                UserWarning,
                stacklevel=2,
            )
        u = np.clip(_sobol_uniform(S, d, int(seed)), _SOBOL_EPS, 1 - _SOBOL_EPS)
        return sigma * torch.from_numpy(stats.norm.ppf(u)).to(torch.float64)
    rng = np.random.default_rng(seed)
    if distribution == "curvature":
        V, s = _curvature_factor(curvature, d, sigma, lam)
        z = torch.from_numpy(rng.standard_normal((S, d)))
        return (z * s.sqrt()) @ V.T
    z = rng.standard_normal((S, d))
    if distribution == "gaussian":
        return sigma * torch.from_numpy(z)
    # ball: a uniform direction times a radius with density proportional to r^(d-1)
    direction = z / np.linalg.norm(z, axis=1, keepdims=True)
    radius = sigma * math.sqrt(d + 2) * rng.random(S) ** (1.0 / d)
    return torch.from_numpy(direction * radius[:, None])
