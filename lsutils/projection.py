r"""Low-dimensional subspaces of parameter space and the map ``theta -> w``.

The study looks at a trained network near its minimum ``w*`` through an affine
subspace (book chapter 4). With ``P`` in ``R^{d x N}`` holding orthonormal rows,

.. math::

    w(\theta) = w^* + P^\top \theta, \qquad
    \theta(w) = P (w - w^*), \qquad
    L_k(\theta) := L_k(w^* + P^\top \theta).

Three kinds of subspace are compared: the top-``d`` Hessian eigenvectors of
``H_m(w*)`` (:func:`hessian_subspace`), a random orthonormal ``d``-dimensional
control (:func:`random_subspace`) and the whole space (:func:`full_space`, where
``P`` is the identity and ``theta`` has ``N`` entries). For the pictures of Li et
al. (2018), :func:`filter_normalized_direction` draws the filter-normalised
directions and :func:`filter_normalized_subspace` wraps two of them into a
(non-orthonormal) :class:`Subspace`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lsutils._checks import check_choice, check_int_range
from lsutils.params import flat_params

__all__ = [
    # subspace object
    "KINDS",
    "Subspace",
    # constructors
    "hessian_subspace",
    "random_subspace",
    "full_space",
    # Li et al. (2018) directions
    "filter_normalized_direction",
    "filter_normalized_subspace",
    "orthonormalize",
]

KINDS = ("hessian", "random", "full")

#: Largest entry of ``|B B^T - I|`` accepted for rows declared orthonormal.
_ORTHO_TOL = 1e-6


@dataclass(frozen=True)
class Subspace:
    """Affine subspace ``{w* + P^T theta}`` of the parameter space ``R^N``.

    Attributes
    ----------
    origin
        The centre ``w*``, shape ``(N,)``, stored as float64.
    basis
        ``P``, shape ``(d, N)`` float64 with orthonormal rows, or ``None`` for the
        full space (``P = I``, ``d = N``).
    kind
        ``"hessian"`` (top-``d`` eigenvectors), ``"random"`` (a control) or
        ``"full"`` (``basis`` must then be ``None``).
    eigenvalues
        The Hessian eigenvalues ``(d,)`` belonging to the rows of ``basis`` (for
        ``kind="hessian"``), else ``None``.
    orthonormal
        Whether the rows of ``basis`` are orthonormal (checked to within
        ``1e-6``). Pass ``False`` only for plotting directions that need not be
        orthogonal, such as the two filter-normalised directions of Li et al.
        (2018); :meth:`to_theta` then solves a least-squares problem instead of
        applying ``P``.

    Examples
    --------
    >>> import torch
    >>> sub = Subspace(torch.zeros(3), torch.eye(3)[:2], "random")
    >>> sub.dim
    2
    >>> sub.to_params(torch.tensor([[1.0, 2.0]]))
    tensor([[1., 2., 0.]], dtype=torch.float64)
    """

    origin: Tensor
    basis: Tensor | None
    kind: str
    eigenvalues: Tensor | None = None
    orthonormal: bool = True

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        origin = self.origin
        if not isinstance(origin, Tensor) or origin.dim() != 1 or len(origin) == 0:
            raise ValueError(
                "origin must be a non-empty 1-D tensor (the flat parameters w* of "
                f"shape (N,)), got {_describe(origin)}"
            )
        object.__setattr__(self, "origin", origin.detach().to(torch.float64))
        n = len(origin)
        if self.basis is None:
            if self.kind != "full":
                raise ValueError(
                    f"basis=None means the full space, but kind={self.kind!r}: "
                    "pass kind='full' or give a (d, N) basis"
                )
            if self.eigenvalues is not None:
                raise ValueError("eigenvalues must be None for the full space")
            return
        if self.kind == "full":
            raise ValueError(
                "kind='full' needs basis=None (the identity); use kind='random' or "
                "'hessian' for a (d, N) basis"
            )
        basis = self.basis
        if not isinstance(basis, Tensor) or basis.dim() != 2 or basis.shape[1] != n:
            raise ValueError(
                f"basis must be a (d, N={n}) tensor with one direction per row, "
                f"got {_describe(basis)}"
            )
        check_int_range(
            "d",
            basis.shape[0],
            1,
            n,
            hint=f"the basis has more rows than the N={n} parameters",
        )
        basis = basis.detach().to(torch.float64)
        object.__setattr__(self, "basis", basis)
        if self.orthonormal:
            gram = basis @ basis.T
            err = float((gram - torch.eye(len(basis), dtype=gram.dtype)).abs().max())
            if not err <= _ORTHO_TOL:
                raise ValueError(
                    f"the rows of basis are not orthonormal (max |B B^T - I| = "
                    f"{err:.2e} > {_ORTHO_TOL:g}): orthonormalise them with "
                    "lsutils.projection.orthonormalize, or pass orthonormal=False "
                    "for plotting directions"
                )
        if self.eigenvalues is not None:
            ev = self.eigenvalues
            if not isinstance(ev, Tensor) or ev.shape != (len(basis),):
                raise ValueError(
                    f"eigenvalues must have shape (d,) = ({len(basis)},), "
                    f"got {_describe(ev)}"
                )
            object.__setattr__(self, "eigenvalues", ev.detach().to(torch.float64))

    @property
    def num_params(self) -> int:
        """Dimension ``N`` of the parameter space."""
        return len(self.origin)

    @property
    def dim(self) -> int:
        """Number ``d`` of coordinates ``theta`` (``N`` for the full space)."""
        return self.num_params if self.basis is None else len(self.basis)

    def to_params(self, theta: Tensor) -> Tensor:
        """Map coordinates to parameters, ``w_s = w* + P^T theta_s``.

        Parameters
        ----------
        theta
            Coordinates, shape ``(S, d)``.

        Returns
        -------
        Tensor
            Flat parameters, shape ``(S, N)``, float64.
        """
        theta = self._check_rows("theta", theta, self.dim)
        if self.basis is None:
            return self.origin + theta
        return torch.addmm(self.origin[None], theta, self.basis)

    def to_theta(self, w: Tensor) -> Tensor:
        """Map parameters to coordinates, ``theta_s = P (w_s - w*)``.

        For a basis declared non-orthonormal the least-squares coordinates
        ``(B B^T)^{-1} B (w_s - w*)`` are returned instead.

        Parameters
        ----------
        w
            Flat parameters, shape ``(S, N)``.

        Returns
        -------
        Tensor
            Coordinates, shape ``(S, d)``, float64.
        """
        w = self._check_rows("w", w, self.num_params)
        delta = w - self.origin
        if self.basis is None:
            return delta
        proj = delta @ self.basis.T
        if self.orthonormal:
            return proj
        gram = self.basis @ self.basis.T
        return torch.linalg.solve(gram, proj.T).T

    @staticmethod
    def _check_rows(name: str, value: Tensor, width: int) -> Tensor:
        if not isinstance(value, Tensor) or value.dim() != 2:
            raise ValueError(
                f"{name} must be a 2-D tensor of shape (S, {width}), got "
                f"{_describe(value)}; for a single point use {name}[None]"
            )
        if value.shape[1] != width:
            raise ValueError(
                f"{name} has {value.shape[1]} columns, expected {width} "
                f"(shape (S, {width}))"
            )
        return value.to(torch.float64)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


def _check_dim(d: int, n: int) -> int:
    return check_int_range(
        "d",
        d,
        1,
        n - 1,
        hint=(
            f"d={d} must be smaller than the number of parameters N={n}; "
            "use the full-space sampler for the whole space"
        ),
    )


def hessian_subspace(
    model: nn.Module, X: Tensor, y: Tensor, d: int, **eig_kwargs: object
) -> Subspace:
    """Subspace spanned by the top-``d`` Hessian eigenvectors at the model's weights.

    The rows of ``P`` are the eigenvectors ``v_1, ..., v_d`` of
    ``H_m(w*) = grad^2 L_m(w*)`` for the largest eigenvalues
    ``lambda_1 >= ... >= lambda_d``, computed by
    :func:`lsutils.hessian.top_eigenpairs` (Lanczos on Hessian-vector products).

    Parameters
    ----------
    model
        The trained network; its current parameters are ``w*``.
    X, y
        Inputs ``(m, ...)`` and labels ``(m,)`` defining ``L_m``.
    d
        Subspace dimension, ``1 <= d < N``.
    **eig_kwargs
        Passed on to :func:`lsutils.hessian.top_eigenpairs` (``which``, ``tol``,
        ``dtype``, ``chunk_size``, ``seed``).

    Returns
    -------
    Subspace
        ``kind="hessian"`` with ``eigenvalues`` in descending order.
    """
    origin = flat_params(model).to(torch.float64)
    d = _check_dim(d, len(origin))
    from lsutils.hessian import top_eigenpairs  # lazy: hessian pulls in scipy

    eig = top_eigenpairs(model, X, y, d, **eig_kwargs)
    basis = eig.vectors.detach().to(torch.float64).T.contiguous()
    return Subspace(origin, basis, "hessian", eig.values.detach().clone())


def random_subspace(model: nn.Module, d: int, seed: int) -> Subspace:
    """Random orthonormal ``d``-dimensional subspace through the model's weights.

    ``P^T = Q`` from the QR decomposition ``G = Q R`` of a Gaussian matrix
    ``G`` in ``R^{N x d}`` (float64, seeded), so the span is uniformly
    distributed over the Grassmannian of ``d``-planes: the control for the
    Hessian subspace.

    Parameters
    ----------
    model
        The network; its current parameters are the origin ``w*``.
    d
        Subspace dimension, ``1 <= d < N``.
    seed
        Seed of the Gaussian matrix.

    Returns
    -------
    Subspace
        ``kind="random"``.

    Examples
    --------
    >>> from torch import nn
    >>> sub = random_subspace(nn.Linear(4, 3), d=2, seed=0)
    >>> sub.basis.shape
    torch.Size([2, 15])
    """
    origin = flat_params(model).to(torch.float64)
    d = _check_dim(d, len(origin))
    gen = torch.Generator().manual_seed(int(seed))
    gauss = torch.randn(len(origin), d, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)
    return Subspace(origin, q.T.contiguous(), "random")


def full_space(model: nn.Module) -> Subspace:
    """Return the whole parameter space around the model's weights (``P = I``)."""
    return Subspace(flat_params(model).to(torch.float64), None, "full")


def filter_normalized_direction(model: nn.Module, seed: int) -> Tensor:
    r"""Random direction with the filter normalisation of Li et al. (2018).

    A Gaussian direction ``delta`` is drawn with the shape of every parameter,
    then each *filter* is rescaled to the norm of the matching filter of the
    model's weights ``w*``:

    .. math::

        \delta_{i,j} \leftarrow
        \frac{\delta_{i,j}}{\lVert \delta_{i,j} \rVert}
        \lVert w^*_{i,j} \rVert,

    where a filter ``j`` of layer ``i`` is one output row of a ``Linear`` weight
    or one output channel (``weight[j]``) of a convolution weight; in general the
    slice along the first dimension of any parameter with two or more
    dimensions. Convention for one-dimensional parameters (biases): their entries
    are set to zero, as Li et al. do, so the direction only moves the weights.

    Parameters
    ----------
    model
        The network at ``w*``.
    seed
        Seed of the Gaussian draw.

    Returns
    -------
    Tensor
        The direction, shape ``(N,)`` float64, in ``model.named_parameters()``
        order.

    Examples
    --------
    >>> from torch import nn
    >>> lin = nn.Linear(3, 2)
    >>> delta = filter_normalized_direction(lin, seed=0)
    >>> torch.allclose(delta[:6].view(2, 3).norm(dim=1),
    ...                lin.weight.detach().double().norm(dim=1))
    True
    """
    gen = torch.Generator().manual_seed(int(seed))
    parts = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        w = p.detach().to(torch.float64)
        if w.dim() <= 1:
            parts.append(torch.zeros(w.numel(), dtype=torch.float64))
            continue
        g = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        rows_w = w.reshape(len(w), -1).norm(dim=1, keepdim=True)
        g = g.reshape(len(w), -1)
        rows_g = g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
        parts.append((g * (rows_w / rows_g)).reshape(-1))
    return torch.cat(parts)


def orthonormalize(directions: Tensor) -> Tensor:
    """Orthonormal rows spanning the same space as ``directions`` (Gram-Schmidt).

    Parameters
    ----------
    directions
        Shape ``(k, N)`` with ``k <= N`` linearly independent rows.

    Returns
    -------
    Tensor
        Shape ``(k, N)`` float64; row ``j`` lies in the span of rows ``1..j`` of
        the input and has a positive inner product with input row ``j``.
    """
    if not isinstance(directions, Tensor) or directions.dim() != 2:
        raise ValueError(
            f"directions must be a 2-D tensor (k, N), got {_describe(directions)}"
        )
    k, n = directions.shape
    check_int_range("k", k, 1, n, hint="more directions than parameters")
    q, r = torch.linalg.qr(directions.detach().to(torch.float64).T)
    diag = torch.diagonal(r)
    scale = directions.detach().to(torch.float64).norm(dim=1)
    if bool((diag.abs() <= 1e-10 * scale.clamp_min(1e-300)).any()):
        raise ValueError(
            "directions are linearly dependent (a row lies in the span of the "
            "previous ones): pass independent directions"
        )
    return (q * torch.sign(diag)).T.contiguous()


def filter_normalized_subspace(
    model: nn.Module, d: int = 2, seed: int = 0, orthonormal: bool = False
) -> Subspace:
    """Subspace spanned by ``d`` filter-normalised directions (Li et al. 2018).

    Row ``j`` of the basis is :func:`filter_normalized_direction` with seed
    ``seed + j``. By default the rows are kept as drawn (not orthogonal, each
    with the scale of ``w*``), as in the plots of Li et al.; the subspace is
    then marked ``orthonormal=False`` and meant for pictures, not for the
    samplers. With ``orthonormal=True`` the rows are orthonormalised with
    :func:`orthonormalize` (same span, unit norm).

    Parameters
    ----------
    model
        The network at ``w*``.
    d
        Number of directions, ``1 <= d < N``.
    seed
        Seed of the first direction.
    orthonormal
        Whether to orthonormalise the directions.

    Returns
    -------
    Subspace
        ``kind="random"``.
    """
    origin = flat_params(model).to(torch.float64)
    d = _check_dim(d, len(origin))
    rows = torch.stack(
        [filter_normalized_direction(model, seed=int(seed) + j) for j in range(d)]
    )
    if orthonormal:
        rows = orthonormalize(rows)
    return Subspace(origin, rows, "random", orthonormal=orthonormal)
