r"""Rigorous bounds ``Delta_k <= C / k^2`` on the loss difference.

Book chapter 6. Two bounds of the same form, for two different quantities:

* :func:`curvature_bound` bounds the closed form
  :func:`lsutils.delta.delta_taylor` of the quadratic model by the ranges of
  the per-sample losses, gradients and curvatures in the subspace (the
  constant is attained, so it cannot be lowered);
* :func:`empirical_range_bound` bounds the Monte Carlo estimate
  :func:`lsutils.delta.delta_mc` by the loss ranges at the sampled points,
  with no quadratic model, through the pointwise bound
  :func:`loss_difference_bound` on ``|L_k - L_{k-1}|``.

Both results give ``values(k) = C / k^2`` and ``k_star(threshold) =
sqrt(C / threshold)``, an upper bound on the ``k*`` of :mod:`lsutils.kstar`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from lsutils._checks import check_positive_float
from lsutils.delta import _check_cov, _check_losses
from lsutils.taylor import TaylorTerms

__all__ = [
    # the closed form (quadratic model)
    "Bound",
    "curvature_bound",
    # the Monte Carlo estimate (loss ranges)
    "RangeBound",
    "empirical_range_bound",
    "loss_difference_bound",
]


class _InverseSquare:
    """Shared methods of bounds of the form ``C / k^2``."""

    C: float

    def values(self, k: ArrayLike) -> NDArray[np.float64]:
        """Evaluate the bound ``C / k^2`` at dataset sizes ``k``."""
        return self.C / np.asarray(k, dtype=np.float64) ** 2

    def k_star(self, threshold: float) -> float:
        """``sqrt(C / threshold)``: past it the bound is below ``threshold``.

        Hence an upper bound on the ``k*`` of the quantity being bounded.
        """
        threshold = check_positive_float("threshold", threshold)
        return math.sqrt(self.C / threshold)


@dataclass(frozen=True)
class Bound(_InverseSquare):
    """``Delta_k <= C / k^2`` from the curvature of the per-sample losses.

    Attributes
    ----------
    C
        The constant (see :func:`curvature_bound`).
    l_range
        ``max_i l_i^* - min_i l_i^*``.
    G
        ``max_i |g_i|``, the largest projected per-sample gradient.
    M
        ``max_i |A_i|_2``, the largest projected per-sample Hessian norm.
    d
        Subspace dimension.
    sigma_trace, sigma_op, sigma_fro
        ``tr(Sigma)``, ``|Sigma|_2`` and ``|Sigma|_F``.
    """

    C: float
    l_range: float
    G: float
    M: float
    d: int
    sigma_trace: float
    sigma_op: float
    sigma_fro: float


def curvature_bound(terms: TaylorTerms, cov: ArrayLike | Tensor) -> Bound:
    r"""Bound ``Delta_k <= C / k^2`` on the closed form, for every ordering and k.

    Derivation (for ``k >= 2`` and any ordering). Write ``D_k = c + b^T theta +
    theta^T B theta / 2`` as in :func:`lsutils.delta.delta_taylor`, with
    ``c = (l_k^* - L_{k-1}^*) / k``, ``b = (g_k - \bar g_{k-1}) / k``,
    ``B = (A_k - \bar A_{k-1}) / k`` (bars are means over the first ``k - 1``
    samples).

    1. ``l_k^*`` and the mean ``L_{k-1}^*`` both lie in ``[min_i l_i^*, max_i
       l_i^*]``, so ``|c| <= l_range / k``.
    2. ``|g_k| <= G`` and ``|\bar g_{k-1}| <= G`` (a mean of vectors of norm at
       most ``G``), so ``|b| <= 2 G / k``; likewise ``|B|_2 <= 2 M / k``.
    3. For PSD ``Sigma``, ``|tr(B Sigma)| <= |B|_2 tr(Sigma)`` (write ``Sigma =
       sum_j lambda_j u_j u_j^T`` with ``lambda_j >= 0``), so
       ``|E D_k| <= |c| + |B|_2 tr(Sigma) / 2 <= (l_range + M tr Sigma) / k``.
    4. ``b^T Sigma b <= |Sigma|_2 |b|^2 <= 4 G^2 |Sigma|_2 / k^2``.
    5. In the eigenbasis of ``Sigma`` (eigenvalues ``lambda``, ``B`` becomes
       ``B'`` with the same spectral norm),
       ``tr(B Sigma B Sigma) = sum_ij B'_ij^2 lambda_i lambda_j
       <= sum_ij B'_ij^2 (lambda_i^2 + lambda_j^2) / 2
       = sum_i lambda_i^2 (B'^2)_ii <= |B|_2^2 |Sigma|_F^2``, so the quadratic
       variance is at most ``2 M^2 |Sigma|_F^2 / k^2``.

    Adding up, ``Delta_k = E[D_k]^2 + Var[D_k] <= C / k^2`` with

    .. math::

        C = (l_{range} + M \operatorname{tr}\Sigma)^2
            + 4 G^2 \|\Sigma\|_2 + 2 M^2 \|\Sigma\|_F^2 .

    The bound is attained (two samples, ``d = 1``, opposite gradients and
    curvatures, see the example), so no constant can be lowered. It bounds the
    Gaussian closed form of the quadratic model; for the Monte Carlo estimate
    on the true losses use :func:`empirical_range_bound`.

    Parameters
    ----------
    terms
        Per-sample Taylor terms.
    cov
        ``(d, d)`` covariance of ``theta``, symmetric positive semi-definite.

    Returns
    -------
    Bound
        With ``values(k) = C / k^2`` and ``k_star(threshold) = sqrt(C /
        threshold)``.

    Examples
    --------
    >>> from lsutils.delta import delta_taylor
    >>> terms = TaylorTerms(loss=torch.tensor([0.0, 1.0]),
    ...                     grad=torch.tensor([[-1.0], [1.0]]),
    ...                     hess=torch.tensor([[[-1.0]], [[1.0]]]))
    >>> cov = torch.tensor([[0.25]])
    >>> bound = curvature_bound(terms, cov)
    >>> bound.C  # (1 + 1/4)^2 + 4/4 + 2/16
    2.6875
    >>> float(bound.values(2)), delta_taylor(terms, cov, [[0, 1]]).at(2)
    (0.671875, 0.671875)
    """
    if not isinstance(terms, TaylorTerms):
        raise ValueError(
            f"terms must be a TaylorTerms (from taylor_terms), got {type(terms)}"
        )
    d = terms.d
    Sigma = _check_cov(cov, d)
    l_range = float(terms.loss.max() - terms.loss.min())
    G = float(terms.grad.norm(dim=1).max())
    M = float(torch.linalg.eigvalsh(terms.hess).abs().max())
    eig = torch.linalg.eigvalsh(Sigma).clamp(min=0.0)
    tr, op, fro = float(eig.sum()), float(eig.max()), float(eig.square().sum().sqrt())
    C = (l_range + M * tr) ** 2 + 4 * G**2 * op + 2 * M**2 * fro**2
    return Bound(C, l_range, G, M, d, tr, op, fro)


def loss_difference_bound(l_range: float, k: ArrayLike) -> NDArray[np.float64]:
    """``|L_k - L_{k-1}| <= l_range / k`` at any point, for ``k >= 2``.

    ``L_k - L_{k-1} = (l_k - L_{k-1}) / k`` and both ``l_k`` and the mean
    ``L_{k-1}`` lie in an interval of length ``l_range``.

    Parameters
    ----------
    l_range
        ``max_i l_i - min_i l_i`` at the point.
    k
        Dataset sizes, all ``>= 2``.

    Returns
    -------
    numpy.ndarray
        ``l_range / k``.

    Examples
    --------
    >>> loss_difference_bound(2.0, [2, 4])
    array([1. , 0.5])
    """
    l_range = check_positive_float("l_range", l_range, allow_zero=True)
    kk = np.asarray(k, dtype=np.float64)
    if kk.size == 0 or not np.all(kk >= 2):
        raise ValueError(
            f"k must be >= 2 (L_{{k-1}} needs a sample), got min k = "
            f"{kk.min() if kk.size else 'nothing'}"
        )
    return l_range / kk


@dataclass(frozen=True)
class RangeBound(_InverseSquare):
    """``Delta_k <= C / k^2`` for the Monte Carlo estimate, from loss ranges.

    Attributes
    ----------
    C
        ``mean_s r_s^2`` with ``r_s = max_i l_i(theta_s) - min_i l_i(theta_s)``.
    range_mean, range_max
        Mean and maximum of ``r_s`` over the points.
    S
        Number of points.
    """

    C: float
    range_mean: float
    range_max: float
    S: int


def empirical_range_bound(losses: ArrayLike | Tensor) -> RangeBound:
    """Rigorous bound on :func:`delta_mc` computed from the same loss matrix.

    At every point ``theta_s`` and for every ordering,
    ``|D_k(theta_s)| <= r_s / k`` (:func:`loss_difference_bound`), so the Monte
    Carlo estimate ``mean_s mean_r D_k(theta_s)^2`` is at most
    ``mean_s r_s^2 / k^2``: a deterministic inequality for the estimate itself,
    for every ``k``, with no quadratic model involved. It is loose because the
    worst case has the extreme samples arriving last.

    Parameters
    ----------
    losses
        ``(S, m)`` per-sample losses.

    Returns
    -------
    RangeBound

    Examples
    --------
    >>> empirical_range_bound(torch.tensor([[0.0, 1.0], [0.0, 3.0]])).C
    5.0
    """
    L = _check_losses(losses)
    r = L.max(dim=1).values - L.min(dim=1).values
    return RangeBound(
        C=float(r.square().mean()),
        range_mean=float(r.mean()),
        range_max=float(r.max()),
        S=int(L.shape[0]),
    )
