r"""The weighted loss difference ``Delta_k``: Monte Carlo and closed form.

Book chapter 6 (DESIGN section 7). With ``L_k(w) = (1/k) sum_{i<=k} l_i(w)`` and

.. math::

    D_k(\theta) = L_k(\theta) - L_{k-1}(\theta)
                = \frac{l_k(\theta) - L_{k-1}(\theta)}{k},
    \qquad \Delta_k = \mathbb{E}_{\theta \sim p}\big[D_k(\theta)^2\big],

this module estimates ``Delta_k`` for every ``k = 2..m`` at once:

* :func:`delta_mc` from the ``S x m`` matrix of per-sample losses at ``S`` points
  (cumulative means along the samples, ``O(R S m)`` work for ``R`` orderings);
* :func:`delta_taylor` in closed form from the per-sample Taylor terms of
  :func:`lsutils.taylor.taylor_terms` and the covariance of ``theta``.

Rigorous bounds of the form ``C / k^2`` are in :mod:`lsutils.bounds`; the
log-log slope (about ``-2``) and the practical rule for ``k*`` with its
uncertainty are in :mod:`lsutils.kstar`.

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

from lsutils._checks import check_finite, check_int_range
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
    seed = check_int_range("seed", seed, 0)
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
