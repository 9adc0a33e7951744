r"""The weighted loss difference ``Delta_k``: Monte Carlo, closed form, bound, k*.

Book chapter 6 (DESIGN section 7). With ``L_k(w) = (1/k) sum_{i<=k} l_i(w)`` and

.. math::

    D_k(\theta) = L_k(\theta) - L_{k-1}(\theta)
                = \frac{l_k(\theta) - L_{k-1}(\theta)}{k},
    \qquad \Delta_k = \mathbb{E}_{\theta \sim p}\big[D_k(\theta)^2\big],

this module estimates ``Delta_k`` for every ``k = 2..m`` at once:

* :func:`delta_mc` from the ``S x m`` matrix of per-sample losses at ``S`` points
  (cumulative means along the samples, ``O(R S m)`` work for ``R`` orderings);
* :func:`delta_taylor` in closed form from the per-sample Taylor terms of
  :func:`lsutils.taylor.taylor_terms` and the covariance of ``theta``;
* :func:`curvature_bound` and :func:`empirical_range_bound`, rigorous bounds of
  the form ``C / k^2``;
* :func:`fit_slope` (the log-log slope, about ``-2``) and :func:`sufficient_size`
  (the practical rule for ``k*`` with its uncertainty).

``Delta_k`` depends on which sample arrives ``k``-th, so every estimator takes
``R`` orderings (rows of :func:`orderings`) and averages over them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from lsutils._checks import check_finite, check_int_range, check_positive_float
from lsutils.taylor import TaylorTerms

__all__ = [
    # orderings and cumulative means
    "orderings",
    "cumulative_means",
    # estimators
    "DeltaCurve",
    "DeltaComponents",
    "delta_mc",
    "delta_taylor",
    "delta_taylor_components",
    # bounds
    "Bound",
    "RangeBound",
    "curvature_bound",
    "empirical_range_bound",
    "loss_difference_bound",
    # rates and sufficient size
    "SlopeFit",
    "fit_slope",
    "KStar",
    "sufficient_size",
    "window_complete",
]

# Work arrays of the vectorised passes are kept under this many float64 entries.
_BLOCK_ENTRIES = 2**22


# ---------------------------------------------------------------------------
# orderings and cumulative means
# ---------------------------------------------------------------------------


def orderings(m: int, R: int, seed: int) -> Tensor:
    """``R`` independent uniformly random permutations of ``0..m-1``.

    Parameters
    ----------
    m
        Number of samples.
    R
        Number of orderings.
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same rows.

    Returns
    -------
    torch.Tensor
        ``(R, m)`` int64; row ``r`` lists the sample that arrives first, second...

    Examples
    --------
    >>> order = orderings(5, 3, seed=0)
    >>> order.shape, bool((order.sort(dim=1).values == torch.arange(5)).all())
    (torch.Size([3, 5]), True)
    """
    m = check_int_range("m", m, 1, hint="m is the number of samples")
    R = check_int_range("R", R, 1, hint="R is the number of orderings")
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.permutation(m) for _ in range(R)])
    return torch.from_numpy(rows.astype(np.int64))


def _check_order(order: ArrayLike | Tensor, m: int) -> Tensor:
    """Return ``order`` as ``(R, m)`` int64, checking every row is a permutation."""
    out = torch.as_tensor(order)
    if out.ndim == 1:
        out = out[None, :]
    if out.ndim != 2 or out.shape[1] != m or out.shape[0] < 1:
        raise ValueError(
            f"order must have shape (R, {m}) (or ({m},)) to match the {m} samples, "
            f"got {tuple(torch.as_tensor(order).shape)}; use orderings(m, R, seed)"
        )
    out = out.to(torch.int64)
    if not torch.equal(out.sort(dim=1).values, torch.arange(m).expand_as(out)):
        raise ValueError(
            f"every row of order must be a permutation of 0..{m - 1}; "
            "use orderings(m, R, seed)"
        )
    return out


def cumulative_means(
    values: ArrayLike | Tensor, order: ArrayLike | Tensor | None = None
) -> Tensor:
    """Compute the running means ``L_k = (1/k) sum_{i<=k} v_i`` on the last axis.

    Parameters
    ----------
    values
        ``(..., m)`` per-sample values (for example the ``S x m`` loss matrix).
    order
        Optional permutation ``(m,)``: sample ``order[j]`` is taken ``j``-th.

    Returns
    -------
    torch.Tensor
        ``(..., m)`` float64; entry ``k - 1`` is ``L_k``.

    Examples
    --------
    >>> cumulative_means(torch.tensor([1.0, 3.0, 5.0]), order=[2, 0, 1])
    tensor([5., 3., 3.], dtype=torch.float64)
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(
            f"values must have at least one sample on the last axis, "
            f"got shape {tuple(v.shape)}"
        )
    m = v.shape[-1]
    if order is not None:
        o = torch.as_tensor(order)
        if o.ndim != 1:
            raise ValueError(
                f"cumulative_means takes one ordering of shape ({m},), got shape "
                f"{tuple(o.shape)}; loop over the rows of orderings(...)"
            )
        v = v[..., _check_order(o, m)[0]]
    k = torch.arange(1, m + 1, dtype=torch.float64)
    return v.cumsum(dim=-1) / k


# ---------------------------------------------------------------------------
# curves
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DeltaCurve:
    """An estimate of ``Delta_k`` for ``k = 2..m``.

    Attributes
    ----------
    k
        ``(K,)`` int64 dataset sizes (``2..m``).
    value
        ``(K,)`` estimate of ``Delta_k`` averaged over the orderings.
    se
        ``(K,)`` standard error of ``value`` (Monte Carlo over ``theta``; zero
        for the closed form).
    per_ordering
        ``(R, K)`` the estimate for each ordering separately.
    """

    k: NDArray[np.int64]
    value: NDArray[np.float64]
    se: NDArray[np.float64]
    per_ordering: NDArray[np.float64]

    def __post_init__(self) -> None:
        for name in ("k", "value", "se", "per_ordering"):
            dtype = np.int64 if name == "k" else np.float64
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype))
        K = self.k.shape[0] if self.k.ndim == 1 else -1
        if (
            K < 1
            or self.value.shape != (K,)
            or self.se.shape != (K,)
            or self.per_ordering.ndim != 2
            or self.per_ordering.shape[1] != K
        ):
            raise ValueError(
                "DeltaCurve expects k, value, se of shape (K,) and per_ordering "
                f"(R, K), got {self.k.shape}, {self.value.shape}, {self.se.shape}, "
                f"{self.per_ordering.shape}"
            )

    def __len__(self) -> int:
        return int(self.k.shape[0])

    def at(self, k: int) -> float:
        """Value of the curve at dataset size ``k``."""
        hit = np.flatnonzero(self.k == k)
        if hit.size == 0:
            raise ValueError(
                f"k={k} is not on the curve: expected an integer in "
                f"[{self.k[0]}, {self.k[-1]}]"
            )
        return float(self.value[hit[0]])

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, ready for JSON (``DeltaCurve(**d)`` rebuilds the curve)."""
        return {
            "k": self.k.tolist(),
            "value": self.value.tolist(),
            "se": self.se.tolist(),
            "per_ordering": self.per_ordering.tolist(),
        }


def _check_losses(losses: ArrayLike | Tensor) -> Tensor:
    L = torch.as_tensor(losses, dtype=torch.float64)
    if L.ndim != 2 or L.shape[0] < 2 or L.shape[1] < 2:
        raise ValueError(
            "losses must be an (S, m) matrix with S >= 2 points and m >= 2 "
            f"samples, got shape {tuple(L.shape)}"
        )
    return check_finite("loss matrix", L, hint="lower sigma or check the model")


def delta_mc(losses: ArrayLike | Tensor, order: ArrayLike | Tensor) -> DeltaCurve:
    """Monte Carlo estimate of ``Delta_k`` for ``k = 2..m`` from a loss matrix.

    For ordering ``r`` and point ``theta_s``,
    ``D_{k,r}(theta_s) = (l_{pi_r(k)}(theta_s) - L_{k-1,r}(theta_s)) / k`` with
    ``L_{k-1,r}`` the running mean of the first ``k-1`` samples in that order
    (one cumulative sum per row, so ``O(R S m)`` work, never ``O(S m^2)``). Then

    * ``v_{s,k} = (1/R) sum_r D_{k,r}(theta_s)^2`` and ``value_k = mean_s v_{s,k}``;
    * ``se_k = std_s(v_{s,k}, ddof=1) / sqrt(S)``: the standard error of the
      Monte Carlo average over ``theta``, *conditional on the orderings*. The
      closed form :func:`delta_taylor` averages over the same orderings, so this
      is the error bar to compare it with; the spread across orderings is in
      ``per_ordering``. (For Sobol' points the formula treats the points as
      independent and overstates the error.)

    Parameters
    ----------
    losses
        ``(S, m)`` per-sample losses ``l_i(w* + P^T theta_s)``
        (:func:`lsutils.engine.loss_matrix`).
    order
        ``(R, m)`` orderings (:func:`orderings`), or one ordering ``(m,)``.

    Returns
    -------
    DeltaCurve
        ``k = 2..m``; ``per_ordering[r] = mean_s D_{k,r}^2``.

    Examples
    --------
    Two samples whose losses differ by ``theta``: ``D_2 = theta / 2`` and
    ``Delta_2 = E[theta^2] / 4``.

    >>> theta = torch.tensor([[-1.0], [1.0], [2.0]])
    >>> losses = torch.cat([torch.zeros(3, 1), theta], dim=1)
    >>> delta_mc(losses, torch.tensor([[0, 1]])).at(2)  # (1 + 1 + 4) / 3 / 4
    0.5
    """
    L = _check_losses(losses)
    S, m = L.shape
    order = _check_order(order, m)
    R = order.shape[0]
    K = m - 1
    k = torch.arange(2, m + 1, dtype=torch.float64)
    per_ordering = torch.zeros(R, K, dtype=torch.float64)
    # Chan et al.'s pairwise update of the mean and centred sum of squares of
    # v_{s,k} over blocks of points keeps memory at (block, m) per ordering.
    mean = torch.zeros(K, dtype=torch.float64)
    m2 = torch.zeros(K, dtype=torch.float64)
    n = 0
    rows = max(1, _BLOCK_ENTRIES // m)
    for lo in range(0, S, rows):
        block = L[lo : lo + rows]
        v = torch.zeros(block.shape[0], K, dtype=torch.float64)
        for r in range(R):
            lp = block[:, order[r]]
            prev = lp.cumsum(dim=1)[:, :-1] / (k - 1)
            d2 = ((lp[:, 1:] - prev) / k).square()
            v += d2
            per_ordering[r] += d2.sum(dim=0)
        v /= R
        nb = v.shape[0]
        mb = v.mean(dim=0)
        m2b = (v - mb).square().sum(dim=0)
        delta = mb - mean
        total = n + nb
        mean = mean + delta * nb / total
        m2 = m2 + m2b + delta.square() * n * nb / total
        n = total
    se = (m2 / (S - 1)).sqrt() / math.sqrt(S)
    return DeltaCurve(
        k=np.arange(2, m + 1),
        value=mean.numpy(),
        se=se.numpy(),
        per_ordering=(per_ordering / S).numpy(),
    )


# ---------------------------------------------------------------------------
# closed form under the quadratic model
# ---------------------------------------------------------------------------


def _check_cov(cov: ArrayLike | Tensor, d: int) -> Tensor:
    """Return ``cov`` as a symmetric PSD ``(d, d)`` float64 tensor."""
    C = torch.as_tensor(cov, dtype=torch.float64)
    if C.shape != (d, d):
        raise ValueError(
            f"cov must be a ({d}, {d}) covariance matrix to match the terms' "
            f"dimension d={d}, got shape {tuple(C.shape)}; use "
            "lsutils.sampling.covariance"
        )
    check_finite("cov", C)
    scale = max(float(C.abs().max()), 1e-300)
    if float((C - C.T).abs().max()) > 1e-10 * scale:
        raise ValueError("cov must be symmetric; pass (cov + cov.T) / 2")
    C = (C + C.T) / 2
    if float(torch.linalg.eigvalsh(C).min()) < -1e-10 * scale:
        raise ValueError(
            "cov must be positive semi-definite, got a negative eigenvalue "
            f"{float(torch.linalg.eigvalsh(C).min()):.3g}"
        )
    return C


@dataclass(frozen=True, eq=False)
class DeltaComponents:
    """The three parts of the closed-form ``Delta_k``, averaged over orderings.

    ``Delta_k = mean_sq + var_linear + var_quadratic`` with
    ``mean_sq = E[D_k]^2``, ``var_linear = b^T Sigma b`` and
    ``var_quadratic = tr(B Sigma B Sigma) / 2`` (see :func:`delta_taylor`).
    """

    k: NDArray[np.int64]
    mean_sq: NDArray[np.float64]
    var_linear: NDArray[np.float64]
    var_quadratic: NDArray[np.float64]

    @property
    def total(self) -> NDArray[np.float64]:
        """``Delta_k``, the sum of the three parts."""
        return self.mean_sq + self.var_linear + self.var_quadratic


def _taylor_parts(
    terms: TaylorTerms,
    cov: ArrayLike | Tensor,
    order: ArrayLike | Tensor,
    diagonal: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-ordering ``E[D_k]^2``, ``b^T Sigma b``, ``tr(B Sigma B Sigma)/2``.

    Each is ``(R, m - 1)`` for ``k = 2..m``. With a factor ``Sigma = F F^T``
    (``F = V diag(sqrt(lambda))``) the terms are whitened once,
    ``g~_i = F^T g_i`` and ``A~_i = F^T A_i F``; then ``b^T Sigma b = |b~|^2``,
    ``tr(B Sigma) = tr(B~)`` and ``tr(B Sigma B Sigma) = |B~|_F^2``, so each
    ordering costs ``O(m d^2)`` (cumulative sums) instead of ``O(m d^3)``.
    """
    if not isinstance(terms, TaylorTerms):
        raise ValueError(
            f"terms must be a TaylorTerms (from taylor_terms), got {type(terms)}"
        )
    m, d = len(terms), terms.d
    if m < 2:
        raise ValueError(f"Delta_k needs m >= 2 samples, got m={m}")
    Sigma = _check_cov(cov, d)
    order = _check_order(order, m)
    if diagonal:
        # the shortcut: keep only the diagonals of A_i (hence of B) and of Sigma
        s = Sigma.diagonal().sqrt()
        grad = terms.grad * s
        quad = terms.hess.diagonal(dim1=1, dim2=2) * s.square()
        on_diag = torch.ones(d, dtype=torch.bool)
    else:
        lam, V = torch.linalg.eigh(Sigma)
        Fac = V * lam.clamp(min=0.0).sqrt()
        grad = terms.grad @ Fac
        # B~ is symmetric: keep its upper triangle, off-diagonal entries count twice
        rows_, cols_ = torch.triu_indices(d, d)
        # F^T A_i F as two plain matrix products over all samples (no broadcasting)
        AF = (terms.hess.reshape(m * d, d) @ Fac).reshape(m, d, d)
        FAF = (AF.mT.reshape(m * d, d) @ Fac).reshape(m, d, d).mT
        quad = FAF[:, rows_, cols_]
        on_diag = rows_ == cols_
    frob_weight = torch.where(on_diag, 1.0, 2.0).to(torch.float64)
    loss = terms.loss
    R = order.shape[0]
    mean_sq = torch.empty(R, m - 1, dtype=torch.float64)
    var_lin = torch.empty_like(mean_sq)
    var_quad = torch.empty_like(mean_sq)
    width = 1 + grad.shape[1] + quad.shape[1]
    rows = max(2, _BLOCK_ENTRIES // width)
    for r in range(R):
        sums = (
            torch.zeros((), dtype=torch.float64),
            torch.zeros(grad.shape[1], dtype=torch.float64),
            torch.zeros(quad.shape[1], dtype=torch.float64),
        )
        for lo in range(0, m, rows):
            idx = order[r, lo : lo + rows]
            # k is 1-based; sums over the first k - 1 samples give L_{k-1} etc.
            k = torch.arange(lo + 1, lo + idx.shape[0] + 1, dtype=torch.float64)
            prev_k = (k - 1).clamp(min=1.0)
            diffs = []
            new_sums = []
            for total, part in zip(
                sums, (loss[idx], grad[idx], quad[idx]), strict=True
            ):
                cs = total + part.cumsum(dim=0)
                prev = torch.cat([total[None], cs[:-1]])
                shape = (-1,) + (1,) * (part.ndim - 1)
                diffs.append((part - prev / prev_k.view(shape)) / k.view(shape))
                new_sums.append(cs[-1])
            sums = tuple(new_sums)
            c, b, B = diffs
            mean = c + 0.5 * B[:, on_diag].sum(dim=1)
            keep = slice(1, None) if lo == 0 else slice(None)  # drop k = 1
            cols = slice(max(lo - 1, 0), lo - 1 + idx.shape[0])
            mean_sq[r, cols] = mean[keep].square()
            var_lin[r, cols] = b[keep].square().sum(dim=1)
            var_quad[r, cols] = 0.5 * (B[keep].square() @ frob_weight)
    return mean_sq, var_lin, var_quad


def delta_taylor_components(
    terms: TaylorTerms,
    cov: ArrayLike | Tensor,
    order: ArrayLike | Tensor,
    diagonal: bool = False,
) -> DeltaComponents:
    """Split the closed-form ``Delta_k`` into its squared mean and two variances.

    Same arguments as :func:`delta_taylor`; each part is averaged over the
    orderings, so ``components.total`` equals ``delta_taylor(...).value``.
    Chapter 6 uses it to show which part dominates.
    """
    mean_sq, var_lin, var_quad = _taylor_parts(terms, cov, order, diagonal)
    return DeltaComponents(
        k=np.arange(2, len(terms) + 1),
        mean_sq=mean_sq.mean(dim=0).numpy(),
        var_linear=var_lin.mean(dim=0).numpy(),
        var_quadratic=var_quad.mean(dim=0).numpy(),
    )


def delta_taylor(
    terms: TaylorTerms,
    cov: ArrayLike | Tensor,
    order: ArrayLike | Tensor,
    diagonal: bool = False,
) -> DeltaCurve:
    r"""Closed-form ``Delta_k`` under the quadratic model and Gaussian ``theta``.

    Along an ordering, cumulative means of the Taylor terms give ``L_k^*``,
    ``g_k`` and ``A_k`` for every ``k``; with ``c = L_k^* - L_{k-1}^*``,
    ``b = g_k - g_{k-1}`` and ``B = A_k - A_{k-1}`` the difference is
    ``D_k(theta) = c + b^T theta + theta^T B theta / 2``, and for
    ``theta ~ N(0, Sigma)``

    .. math::

        \mathbb{E}[D_k] = c + \tfrac12 \operatorname{tr}(B\Sigma), \qquad
        \operatorname{Var}[D_k] = b^\top \Sigma b
            + \tfrac12 \operatorname{tr}(B\Sigma B\Sigma),

    (the odd moments vanish and ``Var(theta^T B theta) = 2 tr(B Sigma B Sigma)``
    for a Gaussian), so ``Delta_k = E[D_k]^2 + Var[D_k]``. No diagonal
    assumption is made. For a non-Gaussian ``theta`` with the same covariance
    (the ``"ball"`` sampler) the mean is still exact but the variance is not.

    Parameters
    ----------
    terms
        Per-sample Taylor terms (:func:`lsutils.taylor.taylor_terms`).
    cov
        ``(d, d)`` covariance ``Sigma`` of ``theta``
        (:func:`lsutils.sampling.covariance`), symmetric positive semi-definite.
    order
        ``(R, m)`` orderings (:func:`orderings`); the curve is their average.
    diagonal
        The diagonal shortcut: keep only the diagonals of ``B`` and ``Sigma``,
        i.e. ``E[D] = c + sum_j B_jj Sigma_jj / 2`` and
        ``Var[D] = sum_j b_j^2 Sigma_jj + sum_j B_jj^2 Sigma_jj^2 / 2``. Exact
        when every ``A_i`` and ``Sigma`` are diagonal, an approximation
        otherwise.

    Returns
    -------
    DeltaCurve
        ``k = 2..m``, ``se = 0``, ``per_ordering`` the closed form per ordering.

    Examples
    --------
    Two samples in one dimension, ``theta ~ N(0, 1/4)``: ``c = 1/2``, ``b = 1``,
    ``B = 2``, so ``E[D_2] = 3/4``, ``Var[D_2] = 1/4 + 1/8`` and
    ``Delta_2 = 15/16``. A scrambled Sobol' Monte Carlo agrees.

    >>> from lsutils.sampling import draw
    >>> from lsutils.taylor import quadratic_losses
    >>> terms = TaylorTerms(loss=torch.tensor([0.0, 1.0]),
    ...                     grad=torch.tensor([[0.0], [2.0]]),
    ...                     hess=torch.tensor([[[0.0]], [[4.0]]]))
    >>> order = torch.tensor([[0, 1]])
    >>> delta_taylor(terms, torch.tensor([[0.25]]), order).at(2)
    0.9375
    >>> theta = draw("sobol", 2**14, 1, sigma=0.5, seed=0)
    >>> mc = delta_mc(quadratic_losses(terms, theta), order)
    >>> abs(mc.at(2) / 0.9375 - 1) < 1e-3
    True
    """
    mean_sq, var_lin, var_quad = _taylor_parts(terms, cov, order, diagonal)
    per_ordering = (mean_sq + var_lin + var_quad).numpy()
    K = per_ordering.shape[1]
    return DeltaCurve(
        k=np.arange(2, K + 2),
        value=per_ordering.mean(axis=0),
        se=np.zeros(K),
        per_ordering=per_ordering,
    )


# ---------------------------------------------------------------------------
# bounds
# ---------------------------------------------------------------------------


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
    theta^T B theta / 2`` as in :func:`delta_taylor`, with
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


# ---------------------------------------------------------------------------
# slope and sufficient size
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit ``log Delta_k = intercept + slope * log k``.

    Attributes
    ----------
    slope, intercept
        The fitted line in natural logarithms.
    slope_se
        Ordinary least-squares standard error of the slope.
    k_min
        Smallest ``k`` used.
    n_points
        Number of points fitted.
    """

    slope: float
    intercept: float
    slope_se: float
    k_min: int
    n_points: int

    def predict(self, k: ArrayLike) -> NDArray[np.float64]:
        """``exp(intercept) * k ** slope``."""
        return np.exp(self.intercept) * np.asarray(k, dtype=np.float64) ** self.slope


def fit_slope(k: ArrayLike, value: ArrayLike, k_min: int = 100) -> SlopeFit:
    """Fit the power law ``Delta_k ~ a k^slope`` by least squares in log-log.

    Only points with ``k >= k_min`` and ``value > 0`` are used. The quadratic
    theory predicts ``slope = -2`` (:func:`curvature_bound`).

    Parameters
    ----------
    k
        Dataset sizes.
    value
        ``Delta_k`` at those sizes.
    k_min
        Smallest ``k`` in the fit (small ``k`` are off the asymptotic regime).

    Returns
    -------
    SlopeFit

    Raises
    ------
    ValueError
        If fewer than 3 usable points remain.

    Notes
    -----
    ``slope_se`` is the textbook value for independent residuals. Neighbouring
    ``Delta_k`` share almost all their samples, so residuals are strongly
    correlated and the real uncertainty is larger; compare fits over orderings
    (``per_ordering``) for an honest spread.

    Examples
    --------
    >>> kk = np.arange(100, 1000)
    >>> fit = fit_slope(kk, 3.0 / kk**2)
    >>> round(fit.slope, 6), round(float(np.exp(fit.intercept)), 6)
    (-2.0, 3.0)
    """
    k_min = check_int_range("k_min", k_min, 1)
    kk = np.asarray(k, dtype=np.float64)
    vv = np.asarray(value, dtype=np.float64)
    if kk.shape != vv.shape or kk.ndim != 1:
        raise ValueError(
            f"k and value must be 1-D of the same length, got {kk.shape} and {vv.shape}"
        )
    use = (kk >= k_min) & (vv > 0) & np.isfinite(vv)
    n = int(use.sum())
    if n < 3 or np.unique(kk[use]).size < 2:
        raise ValueError(
            f"fit_slope needs at least 3 points with k >= k_min={k_min} and "
            f"value > 0, got {n}"
            + (f" (k runs from {kk.min():g} to {kk.max():g})" if kk.size else "")
            + "; lower k_min or pass a longer curve"
        )
    x, yv = np.log(kk[use]), np.log(vv[use])
    xm, ym = x.mean(), yv.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (yv - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    resid = yv - intercept - slope * x
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx) if n > 2 else math.nan
    return SlopeFit(slope, intercept, se, k_min, n)


@dataclass(frozen=True, eq=False)
class KStar:
    """The sufficient dataset size for one threshold, with its uncertainty.

    Attributes
    ----------
    threshold
        ``Delta`` in "first ``k`` with ``Delta_k <= Delta``".
    k_star
        The rule applied to ``curve.value`` (``None`` if never reached).
    reached
        Whether ``k_star`` exists.
    k_lo, k_hi
        The rule applied to ``value - z se`` and ``value + z se`` (``None``
        if not reached).
    per_ordering
        ``(R,)`` ``k*`` of each ordering's curve, ``inf`` where not reached.
    ordering_median, ordering_p10, ordering_p90
        Median and 10th/90th percentiles of ``per_ordering`` (``inf`` when
        that share of orderings never reaches the threshold).
    window
        The ``window`` argument (``None``: until ``2 k``, at least 10 more).
    window_complete
        Whether the whole window after ``k_star`` lies on the curve
        (``k_star + window <= m``); ``False`` means the check was cut at ``m``
        and ``k_star`` says that ``m`` is too small to decide. ``None`` when
        not reached. See :func:`window_complete`.
    k_extrapolated
        When not reached: where the power-law fit of the tail crosses the
        threshold (``None`` if it cannot be extrapolated).
    fit
        The :class:`SlopeFit` used for the extrapolation.
    reason
        One sentence saying how ``k_star`` was decided.
    """

    threshold: float
    k_star: int | None
    reached: bool
    k_lo: int | None
    k_hi: int | None
    per_ordering: NDArray[np.float64]
    ordering_median: float
    ordering_p10: float
    ordering_p90: float
    window: int | None
    window_complete: bool | None
    k_extrapolated: float | None
    fit: SlopeFit | None
    reason: str


def window_complete(k_star: int, m: int, window: int | None = None) -> bool:
    """Whether the stability window after ``k_star`` fits inside ``m`` samples.

    :func:`sufficient_size` checks ``Delta_k`` on ``[k*, min(m, k* + w)]``,
    with ``w = max(10, k*)`` by default or a fixed ``window``. When
    ``k* + w > m`` the check was cut short and ``k*`` is only a lower limit
    of what a larger data set would show.

    Parameters
    ----------
    k_star
        The sufficient size found (``>= 1``).
    m
        The number of samples of the curve (its last ``k``).
    window
        The ``window`` given to :func:`sufficient_size`.

    Returns
    -------
    bool

    Examples
    --------
    >>> window_complete(100, 1000), window_complete(600, 1000)
    (True, False)
    >>> window_complete(600, 1000, window=50)
    True
    """
    k_star = check_int_range("k_star", k_star, 1)
    m = check_int_range("m", m, 1)
    if window is not None:
        window = check_int_range("window", window, 0, hint="or None for k -> 2k")
    w = max(10, k_star) if window is None else window
    return k_star + w <= m


def _first_stable(
    k: NDArray[np.int64], v: NDArray[np.float64], threshold: float, window: int | None
) -> int | None:
    """First ``k_j`` with ``v <= threshold`` on every point of its window."""
    below = v <= threshold
    K = k.shape[0]
    idx = np.arange(K)
    # next_fail[j]: first index >= j where the curve is above the threshold
    fails = np.where(below, K, idx)
    next_fail = np.minimum.accumulate(fails[::-1])[::-1]
    w = np.maximum(10, k) if window is None else np.full(K, window)
    end = np.minimum(k[-1], k + w)
    fail_k = np.where(
        next_fail < K, k[np.minimum(next_fail, K - 1)], np.iinfo(np.int64).max
    )
    ok = below & (fail_k > end)
    hit = np.flatnonzero(ok)
    return int(k[hit[0]]) if hit.size else None


def sufficient_size(
    curve: DeltaCurve,
    threshold: float,
    window: int | None = None,
    z: float = 2.0,
    k_min: int | None = None,
) -> KStar:
    """Find the practical sufficient size ``k*`` of a ``Delta_k`` curve.

    Rule: ``k*`` is the first ``k`` on the curve such that
    ``Delta_{k'} <= threshold`` for every ``k'`` in
    ``[k, min(m, k + window(k))]``, with ``window(k) = max(10, k)`` by default
    (the estimate must stay below until the dataset has doubled, and for at
    least 10 more samples) or a fixed number of samples. Near the end of the
    curve the window is cut at ``m``, so a ``k*`` close to ``m`` rests on fewer
    points; ``KStar.window_complete`` says whether that happened.

    Uncertainty: ``k_lo`` and ``k_hi`` apply the same rule to the band
    ``value -+ z se`` (Monte Carlo error over ``theta``), and the rule applied
    to each ordering's curve gives the spread over orderings (median and
    10th/90th percentiles).

    Parameters
    ----------
    curve
        Output of :func:`delta_mc` or :func:`delta_taylor`.
    threshold
        ``Delta > 0``.
    window
        Fixed window in samples (``>= 0``), or ``None`` for the doubling rule.
    z
        Width of the band in standard errors (``>= 0``).
    k_min
        First ``k`` of the power-law fit used to extrapolate when the threshold
        is not reached; default the last decade, ``max(2, m // 10)``.

    Returns
    -------
    KStar

    Examples
    --------
    >>> kk = np.arange(2, 1001)
    >>> value = 100.0 / kk**2
    >>> curve = DeltaCurve(kk, value, np.zeros_like(value), value[None])
    >>> sufficient_size(curve, 1e-2).k_star
    100
    >>> res = sufficient_size(curve, 1e-5)
    >>> res.reached, round(res.k_extrapolated)
    (False, 3162)
    """
    if not isinstance(curve, DeltaCurve):
        raise ValueError(
            f"curve must be a DeltaCurve (from delta_mc or delta_taylor), got "
            f"{type(curve)}"
        )
    threshold = check_positive_float("threshold", threshold)
    if window is not None:
        window = check_int_range("window", window, 0, hint="or None for k -> 2k")
    z = check_positive_float("z", z, allow_zero=True)
    k, v = curve.k, curve.value
    k_star = _first_stable(k, v, threshold, window)
    k_lo = _first_stable(k, v - z * curve.se, threshold, window)
    k_hi = _first_stable(k, v + z * curve.se, threshold, window)
    per = np.array(
        [_first_stable(k, row, threshold, window) for row in curve.per_ordering],
        dtype=object,
    )
    per_ordering = np.array([np.inf if x is None else float(x) for x in per])
    p10, median, p90 = np.percentile(per_ordering, [10, 50, 90], method="lower")
    rule = (
        "doubling window (k to 2k, at least 10)"
        if window is None
        else f"window of {window}"
    )
    fit = None
    k_ext = None
    complete = None
    if k_star is not None:
        complete = window_complete(k_star, int(k[-1]), window)
        reason = (
            f"Delta_k <= {threshold:.3g} for every k in [k*, k* + window] "
            f"({rule}) first at k* = {k_star}"
        )
        if not complete:
            reason += (
                f"; the window is cut at m = {k[-1]}, so m is too small to confirm it"
            )
    else:
        below = np.flatnonzero(v <= threshold)
        reason = (
            f"Delta_k stays above {threshold:.3g} up to m = {k[-1]} "
            f"(smallest value {v.min():.3g})"
            if below.size == 0
            else f"Delta_k dips below {threshold:.3g} at k = {k[below[0]]} but "
            f"does not stay below over the {rule} before m = {k[-1]}"
        )
        fit_k_min = max(2, int(k[-1]) // 10) if k_min is None else k_min
        try:
            fit = fit_slope(k, v, k_min=fit_k_min)
        except ValueError as err:
            reason += f"; no extrapolation: {err}"
        else:
            if fit.slope < 0:
                k_ext = math.exp((math.log(threshold) - fit.intercept) / fit.slope)
                reason += (
                    f"; the power-law fit (slope {fit.slope:.2f} for "
                    f"k >= {fit_k_min}) crosses it near k = {k_ext:.3g}"
                )
            else:
                reason += (
                    f"; no extrapolation: the fitted slope {fit.slope:.2f} for "
                    f"k >= {fit_k_min} is not negative"
                )
    return KStar(
        threshold=threshold,
        k_star=k_star,
        reached=k_star is not None,
        k_lo=k_lo,
        k_hi=k_hi,
        per_ordering=per_ordering,
        ordering_median=float(median),
        ordering_p10=float(p10),
        ordering_p90=float(p90),
        window=window,
        window_complete=complete,
        k_extrapolated=k_ext,
        fit=fit,
        reason=reason,
    )
