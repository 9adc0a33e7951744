r"""Loss landscapes of chapter 4: slices and planes through the loss engine.

The pictures of chapter 4 show the per-sample losses
``l_i(w* + P^T theta)`` on a grid of subspace coordinates ``theta``:

* :func:`landscape_slices` along single basis rows ``p_j``
  (``theta = t e_j``);
* :func:`landscape_plane` on the plane spanned by two basis rows, with
  :func:`lsutils.projection.filter_normalized_subspace` the two-dimensional
  plots of Li et al. (2018).

Each picture is one call of :func:`lsutils.engine.loss_matrix` on all grid
points at once, returned as a :class:`Landscape` whose
:meth:`Landscape.mean_loss` gives the empirical loss ``L_k`` for any ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lsutils._checks import check_int_range, check_positive_float
from lsutils.engine import loss_matrix
from lsutils.projection import Subspace

__all__ = [
    # pictures of chapter 4
    "Landscape",
    "landscape_slices",
    "landscape_plane",
]


@dataclass(frozen=True)
class Landscape:
    """Per-sample losses on a grid of subspace coordinates.

    Attributes
    ----------
    t
        The grid along each axis, shape ``(n,)`` (``linspace(-radius, radius)``).
    losses
        Float64 per-sample losses ``(..., n, m)`` for slices (leading axis: the
        direction) or ``(n, n, m)`` for a plane (``losses[a, b]`` is at
        ``t[a] e_i + t[b] e_j``).
    directions
        Indices of the basis rows used.
    """

    t: Tensor
    losses: Tensor
    directions: tuple[int, ...]

    def mean_loss(self, k: int | Sequence[int] | None = None) -> Tensor:
        """Empirical loss ``L_k`` on the grid: mean of the first ``k`` samples.

        Parameters
        ----------
        k
            One size, several sizes, or ``None`` for all ``m`` samples.

        Returns
        -------
        Tensor
            Shape of the grid, with a leading ``len(k)`` axis for several sizes.
        """
        m = self.losses.shape[-1]
        if k is None:
            return self.losses.mean(-1)
        if isinstance(k, Sequence):
            return torch.stack([self.mean_loss(int(kk)) for kk in k])
        k = check_int_range("k", k, 1, m, hint=f"the landscape has m={m} samples")
        return self.losses[..., :k].mean(-1)


def _grid(radius: float, n_points: int) -> Tensor:
    radius = check_positive_float("radius", radius)
    n_points = check_int_range("n_points", n_points, 2)
    return torch.linspace(-radius, radius, n_points, dtype=torch.float64)


def _check_direction(j: int, d: int) -> int:
    return check_int_range(
        "direction", j, 0, d - 1, hint=f"the subspace has d={d} basis rows"
    )


def landscape_slices(
    model: nn.Module,
    subspace: Subspace,
    X: Tensor,
    y: Tensor,
    radius: float,
    n_points: int = 41,
    directions: Sequence[int] | None = None,
    **engine_kwargs: object,
) -> Landscape:
    r"""One-dimensional slices ``l_i(w* + t p_j)`` along basis rows ``p_j``.

    All slices go through one :func:`loss_matrix` call with the
    ``len(directions) * n_points`` points ``theta = t e_j``.

    Parameters
    ----------
    model, subspace, X, y
        As for :func:`loss_matrix`; ``subspace`` needs a basis.
    radius
        The slices cover ``t`` in ``[-radius, radius]``.
    n_points
        Grid points per slice (odd numbers include ``t = 0``).
    directions
        Basis rows to slice along (default: all ``d``).
    **engine_kwargs
        Passed on to :func:`loss_matrix` (``method``, ``dtype``, ...).

    Returns
    -------
    Landscape
        ``losses`` of shape ``(len(directions), n_points, m)``.
    """
    if subspace.basis is None:
        raise ValueError(
            "landscape slices need a basis: use a Hessian or random subspace, not "
            "the full space"
        )
    d = subspace.dim
    dirs = tuple(range(d)) if directions is None else tuple(directions)
    if not dirs:
        raise ValueError("directions is empty: pass at least one basis index")
    dirs = tuple(_check_direction(j, d) for j in dirs)
    t = _grid(radius, n_points)
    theta = torch.zeros(len(dirs), len(t), d, dtype=torch.float64)
    for a, j in enumerate(dirs):
        theta[a, :, j] = t
    losses = loss_matrix(model, subspace, theta.view(-1, d), X, y, **engine_kwargs)
    return Landscape(t, losses.view(len(dirs), len(t), -1), dirs)


def landscape_plane(
    model: nn.Module,
    subspace: Subspace,
    X: Tensor,
    y: Tensor,
    radius: float,
    n_points: int = 25,
    plane: tuple[int, int] = (0, 1),
    **engine_kwargs: object,
) -> Landscape:
    r"""Losses on the square grid ``w* + a p_i + b p_j``, ``|a|, |b| <= radius``.

    With :func:`lsutils.projection.filter_normalized_subspace` as ``subspace``
    this gives the two-dimensional plots of Li et al. (2018).

    Parameters
    ----------
    model, subspace, X, y
        As for :func:`loss_matrix`; ``subspace`` needs a basis with ``d >= 2``.
    radius
        Half-width of the square.
    n_points
        Grid points per axis.
    plane
        The two basis rows ``(i, j)`` spanning the plane.
    **engine_kwargs
        Passed on to :func:`loss_matrix`.

    Returns
    -------
    Landscape
        ``losses`` of shape ``(n_points, n_points, m)``.
    """
    if subspace.basis is None or subspace.dim < 2:
        got = "the full space" if subspace.basis is None else f"d={subspace.dim}"
        raise ValueError(
            f"a landscape plane needs a subspace with two or more basis rows, got {got}"
        )
    d = subspace.dim
    i, j = (_check_direction(int(q), d) for q in plane)
    if i == j:
        raise ValueError(f"plane needs two different basis rows, got {plane}")
    t = _grid(radius, n_points)
    a, b = torch.meshgrid(t, t, indexing="ij")
    theta = torch.zeros(len(t) ** 2, d, dtype=torch.float64)
    theta[:, i] = a.reshape(-1)
    theta[:, j] = b.reshape(-1)
    losses = loss_matrix(model, subspace, theta, X, y, **engine_kwargs)
    return Landscape(t, losses.view(len(t), len(t), -1), (i, j))
