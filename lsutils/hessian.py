r"""Hessian of the empirical loss: products, top eigenpairs, dense reference.

The object of book chapter 3 is the Hessian of the mean cross-entropy over the
first ``k`` samples at the trained weights ``w*``,

.. math::

    H_k(w) = \nabla^2 L_k(w)
           = \frac{1}{k} \sum_{i=1}^{k} \nabla^2 \ell_i(w) \in \mathbb{R}^{N \times N},

with ``N`` the number of trainable parameters (flat order of
``model.named_parameters()``, see :mod:`lsutils.params`). Pass ``X[:k], y[:k]``
to get ``H_k``; any ``(X, y)`` works.

Routes
------
:func:`hvp_operator`
    ``v -> H v`` as a :class:`scipy.sparse.linalg.LinearOperator`. The data are
    cut into chunks of ``chunk_size`` samples and
    ``H v = sum_c (1/k) sum_{i in c} grad^2 l_i v``, so memory is bounded by the
    chunk and does not grow with ``k``.
:func:`top_eigenpairs`
    Top-``d`` eigenpairs by implicitly restarted Lanczos
    (:func:`scipy.sparse.linalg.eigsh`, ARPACK) on that operator, with the
    residual ``||H v - lambda v|| / |lambda|`` recomputed for every pair.
:func:`explicit_hessian`
    The dense ``(N, N)`` matrix by :func:`torch.autograd.functional.hessian` in
    float64: the reference every other route is tested against (tiny nets).
:mod:`lsutils.ggn`
    BackPACK routes (Dangel, Kunstner, Hennig 2020): ``DiagHessian``,
    ``DiagGGNExact`` and the GGN eigenspace from ``SqrtGGNExact``; re-exported
    here as :func:`diag_hessian`, :func:`diag_ggn`, :func:`ggn_top_eigenpairs`.

Implementation choice
---------------------
Products use reverse-over-reverse autodiff (``torch.autograd.grad`` of the
gradient, built with ``create_graph=True`` through
:func:`torch.func.functional_call` on a cast copy of the parameters). On the
2-core CPU of this project, for the MNIST MLP 784-128-10 on 5,000 samples, one
float64 product took about 70 ms this way against about 125 ms for
forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), which is
also what ``curvlinops.HessianLinearOperator`` 3.0.1 does. When all data fit
in one chunk the gradient graph is built once and every product is a single
backward pass through it (about 45 ms in float64, 17 ms in float32); the
memory is then that of one chunk, as in the chunked case. During
:func:`scipy.sparse.linalg.eigsh` NumPy's BLAS is held to one thread
(``threadpoolctl``): ARPACK's own vector work is small, and threaded BLAS
between products competed with torch's threads.

Examples
--------
>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
>>> X, y = torch.randn(20, 3, dtype=torch.float64), torch.arange(20) % 2
>>> H = explicit_hessian(model, X, y)
>>> eig = top_eigenpairs(model, X, y, d=2)
>>> bool(torch.allclose(eig.values, torch.linalg.eigvalsh(H).flip(0)[:2]))
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from lsutils._checks import (
    check_choice,
    check_finite,
    check_int_range,
    check_labels,
    check_positive_float,
)
from lsutils.params import ParamSpec, flat_params

__all__ = [
    # operators
    "HessianOperator",
    "hvp_operator",
    # eigenpairs
    "Eigenpairs",
    "fix_signs",
    "top_eigenpairs",
    "subspace_angles",
    # dense reference
    "explicit_hessian",
    "MAX_EXPLICIT_PARAMS",
    # BackPACK routes (lsutils.ggn)
    "diag_ggn",  # noqa: F822 (lazy re-export, see __getattr__)
    "diag_hessian",  # noqa: F822
    "ggn_operator",  # noqa: F822
    "ggn_top_eigenpairs",  # noqa: F822
]

logger = logging.getLogger(__name__)

WHICH: tuple[str, ...] = ("LA", "LM")
"""Eigenvalue selections of :func:`top_eigenpairs`: largest algebraic, largest
magnitude."""

DTYPES: tuple[torch.dtype, ...] = (torch.float64, torch.float32)
"""Precisions in which Hessian-vector products can be computed."""

MAX_EXPLICIT_PARAMS = 5000
"""Largest ``N`` for which :func:`explicit_hessian` builds the dense matrix."""


# ---------------------------------------------------------------- validation
def check_data(X: Tensor, y: Tensor) -> int:
    """Check inputs ``X`` and integer labels ``y`` of one data set; return ``m``."""
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise ValueError(
            f"X and y must be torch tensors, got {type(X).__name__} and "
            f"{type(y).__name__}"
        )
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            f"y must be a 1-d tensor of integer class labels, got shape "
            f"{tuple(y.shape)} and dtype {y.dtype}; convert with y.long()"
        )
    if X.ndim < 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(
            f"X and y must hold the same number (>= 1) of samples, got X of shape "
            f"{tuple(X.shape)} and y of shape {tuple(y.shape)}"
        )
    check_finite("X", X, hint="clean the inputs before computing curvature")
    return int(X.shape[0])


def check_eval_mode(model: nn.Module) -> None:
    """Refuse layers whose train-mode output is not a function of ``w`` alone.

    BatchNorm in train mode couples the samples of a batch (so ``L_k`` is not a
    mean of per-sample losses and would depend on the chunking) and Dropout in
    train mode is random.
    """
    for name, module in model.named_modules():
        coupled = isinstance(module, nn.modules.batchnorm._BatchNorm)
        random = isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
        if module.training and (coupled or random):
            why = "batch statistics" if coupled else "random masks"
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) is in train mode: its "
                f"{why} make the loss not a fixed function of w, so its Hessian "
                "is undefined; call model.eval() first"
            )


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(
            f"unknown dtype {dtype!r}: expected one of "
            f"{', '.join(map(repr, DTYPES))} (float32 is faster, float64 exact)"
        )
    return dtype


def _check_d(d: int, n_params: int) -> int:
    hint = (
        f"d must be smaller than the parameter count N={n_params} because eigsh "
        "needs d < N; use a smaller d, or the full-space sampler "
        "(lsutils.projection.full_space) to work in all N dimensions"
    )
    return check_int_range("d", d, 1, n_params - 1, hint=hint)


def _raise_unused(names: Sequence[str]) -> None:
    if names:
        raise ValueError(
            f"parameter(s) {', '.join(names)} are not used by the loss (autograd "
            "gives them no gradient), so their Hessian rows would be undefined; "
            "remove them, freeze them with requires_grad_(False), or use them in "
            "forward"
        )


def _forward(model: nn.Module, state: dict[str, Tensor], X: Tensor) -> Tensor:
    """``model`` applied to ``X`` with ``state``; a shape error names ``X``."""
    try:
        out = functional_call(model, state, (X,))
    except RuntimeError as err:
        if "shape" not in str(err) and "size" not in str(err):
            raise
        raise ValueError(
            f"the model cannot be applied to inputs of shape {tuple(X.shape)} "
            f"({err}); pass X shaped as in training, e.g. (m, 1, 28, 28) for "
            "the MNIST networks of lsutils.models"
        ) from err
    if out.ndim != 2:
        raise ValueError(
            f"the model's output must be (m, C) class scores, got shape "
            f"{tuple(out.shape)}; end the network with a Linear layer to C classes"
        )
    return out


def check_params_used_by_loss(model: nn.Module, X: Tensor, y: Tensor) -> None:
    """Raise ``ValueError`` naming parameters that get no gradient from the loss.

    Differentiates the loss of the first sample (``allow_unused=True``); a
    parameter whose gradient is absent is not used by the loss.
    """
    # Known limitation: a forward whose use of parameters depends on the sample
    # (not the case for nn.Sequential) could pass here and fail later.
    HessianOperator(model, X[:1], y[:1], torch.float64, 1, log=False)


# ---------------------------------------------------------------- operator
class HessianOperator(LinearOperator):
    """The Hessian of the mean cross-entropy as a SciPy linear operator.

    Built by :func:`hvp_operator`; see there for the parameters. Products take
    and return float64 NumPy vectors of length ``N``; :meth:`hvp` does the same
    for torch tensors. The parameters are copied at construction, so later
    changes to ``model`` do not affect the operator.

    Attributes
    ----------
    spec
        Names and shapes of the parameters (flat order).
    n_matvec
        Number of Hessian-vector products computed so far.
    """

    def __init__(
        self,
        model: nn.Module,
        X: Tensor,
        y: Tensor,
        dtype: torch.dtype,
        chunk_size: int,
        log: bool = True,
    ) -> None:
        self.spec = ParamSpec.from_module(model)
        n = self.spec.num_params
        super().__init__(dtype=np.float64, shape=(n, n))
        self.n_matvec = 0
        self._model = model
        self._dtype = dtype
        self._m = int(X.shape[0])
        self._device = next(p.device for p in model.parameters())
        params = dict(model.named_parameters())
        self._params = [
            params[name].detach().to(self._device, dtype).clone()
            for name in self.spec.names
        ]
        # buffers and frozen parameters enter the forward pass as constants
        self._buffers = {
            name: b.to(dtype) if b.is_floating_point() else b
            for name, b in model.named_buffers()
        } | {
            name: p.detach().to(dtype)
            for name, p in params.items()
            if name not in self.spec.names
        }
        self._chunks = list(zip(X.split(chunk_size), y.split(chunk_size), strict=True))
        # One chunk: keep its graph, every product is then one backward pass.
        self._cached = self._graph(*self._chunks[0]) if len(self._chunks) == 1 else None
        if self._cached is None:
            self._graph(*self._chunks[0])  # checks unused parameters early
        if log:
            logger.info(
                "Hessian operator: N=%d, m=%d, %d chunk(s), %s", n, self._m,
                len(self._chunks), dtype,
            )  # fmt: skip

    def _graph(self, Xc: Tensor, yc: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Leaves and the gradient of this chunk's share of ``L`` (with graph)."""
        leaves = [p.detach().requires_grad_() for p in self._params]
        named = dict(zip(self.spec.names, leaves, strict=True))
        with torch.enable_grad():
            Xc = Xc.to(self._device, self._dtype)
            out = _forward(self._model, {**self._buffers, **named}, Xc)
            yc = check_labels(yc.to(self._device), out.shape[1])
            loss = F.cross_entropy(out, yc, reduction="sum") / self._m
            grads = torch.autograd.grad(
                loss, leaves, create_graph=True, allow_unused=True
            )
        _raise_unused(
            [n for n, g in zip(self.spec.names, grads, strict=True) if g is None]
        )
        return leaves, list(grads)

    def hvp(self, v: Tensor) -> Tensor:
        """Return ``H v`` in float64 for ``v`` of shape ``(N,)``."""
        parts = [
            p.to(self._device, self._dtype)
            for p in self.spec.unflatten(v.reshape(-1)).values()
        ]
        out = torch.zeros(self.shape[0], dtype=torch.float64, device=self._device)
        for chunk in self._chunks:
            leaves, grads = self._cached or self._graph(*chunk)
            # gradients constant in w (no graph) contribute nothing to H v
            live = [i for i, g in enumerate(grads) if g.requires_grad]
            if not live:
                continue
            with torch.enable_grad():
                hv = torch.autograd.grad(
                    [grads[i] for i in live],
                    leaves,
                    grad_outputs=[parts[i] for i in live],
                    retain_graph=self._cached is not None,
                    allow_unused=True,
                    materialize_grads=True,
                )
            out += torch.cat([h.reshape(-1) for h in hv]).to(torch.float64)
        self.n_matvec += 1
        return out

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return self.hvp(v).cpu().numpy()

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)

    def _adjoint(self) -> HessianOperator:
        return self


def hvp_operator(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 2048,
) -> HessianOperator:
    r"""Hessian of the mean cross-entropy over ``(X, y)`` as a linear operator.

    .. math::

        v \mapsto H v = \sum_{c} \nabla_w \big( \nabla_w L^{(c)}(w)^\top v \big),
        \qquad L^{(c)}(w) = \frac{1}{m} \sum_{i \in c} \ell_i(w),

    summed over chunks ``c`` of at most ``chunk_size`` samples, at the current
    parameters of ``model`` (pass ``X[:k], y[:k]`` for ``H_k``).

    Parameters
    ----------
    model
        The network; not modified (a cast copy of its parameters is used).
    X, y
        Inputs ``(m, ...)`` and integer labels ``(m,)``.
    dtype
        Precision of the products, ``torch.float64`` (default, exact to
        rounding) or ``torch.float32`` (about 2x faster on CPU, relative error
        around ``1e-6`` of ``||H||``). Results are float64 either way.
    chunk_size
        Samples per chunk; peak memory scales with it, not with ``m``. With a
        single chunk (``m <= chunk_size``) the gradient graph is kept and each
        product costs one backward pass instead of three.

    Returns
    -------
    HessianOperator
        A symmetric ``(N, N)`` :class:`~scipy.sparse.linalg.LinearOperator`
        whose ``n_matvec`` attribute counts products.

    Raises
    ------
    ValueError
        For mismatched data, a model in train mode with BatchNorm or Dropout, or
        parameters the loss does not use.
    """
    check_data(X, y)
    check_eval_mode(model)
    chunk_size = check_int_range("chunk_size", chunk_size, 1)
    return HessianOperator(model, X, y, _check_dtype(dtype), chunk_size)


# ---------------------------------------------------------------- eigenpairs
def fix_signs(vectors: Tensor) -> Tensor:
    """Flip columns so that each one's entry of largest magnitude is positive.

    An eigenvector is defined up to its sign, and which sign Lanczos returns
    depends on the starting vector. Points drawn around ``w*`` in the subspace
    change with the signs of its basis, so fixing them makes results repeat
    across runs that differ only there (for example a sweep's top-50 run cut
    to ``d`` and a top-``d`` run).

    Examples
    --------
    >>> fix_signs(torch.tensor([[0.6, 0.1], [-0.8, -0.9]]))
    tensor([[-0.6000, -0.1000],
            [ 0.8000,  0.9000]])
    """
    big = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[big, torch.arange(vectors.shape[1])])
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


@dataclass
class Eigenpairs:
    """Eigenvalues, eigenvectors and their quality.

    Attributes
    ----------
    values
        ``(d,)`` float64, in descending order.
    vectors
        ``(N, d)`` float64 with orthonormal columns; column ``j`` belongs to
        ``values[j]``. Signs are fixed (:func:`fix_signs`), so runs that differ
        only in their starting vector give the same vectors, not their negatives.
    residuals
        ``(d,)`` relative residuals ``||H v_j - lambda_j v_j|| / |lambda_j|``,
        recomputed with fresh matrix-vector products.
    n_matvec
        Matrix-vector products used, the ``d`` residual products included.
    seconds
        Wall-clock time of the whole computation.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    n_matvec: int
    seconds: float


def relative_residuals(
    apply: Callable[[Tensor], Tensor], values: Tensor, vectors: Tensor
) -> Tensor:
    """Return ``||A v_j - lambda_j v_j|| / |lambda_j|`` for each column ``v_j``.

    ``apply`` maps an ``(N,)`` float64 vector to ``A v``; it is called once per
    column.
    """
    res = [
        torch.linalg.vector_norm(apply(vectors[:, j]) - values[j] * vectors[:, j])
        / values[j].abs()
        for j in range(values.shape[0])
    ]
    return torch.stack(res).to(torch.float64)


def top_eigenpairs(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    d: int,
    which: str = "LA",
    tol: float = 1e-6,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 2048,
    seed: int = 0,
    maxiter: int | None = None,
) -> Eigenpairs:
    r"""Top-``d`` eigenpairs of the Hessian of the mean loss over ``(X, y)``.

    Implicitly restarted Lanczos (ARPACK through
    :func:`scipy.sparse.linalg.eigsh`) on :func:`hvp_operator`, started from a
    seeded Gaussian vector. ARPACK stops when every Ritz pair satisfies
    ``||H v - lambda v|| <= tol * |lambda|`` (its own estimate); the residuals
    returned are recomputed afterwards with ``d`` fresh products.

    Parameters
    ----------
    model, X, y
        Network and data defining ``L`` (``X[:k], y[:k]`` for ``H_k``).
    d
        Number of eigenpairs, ``1 <= d < N``.
    which
        ``"LA"``: largest algebraic eigenvalues (the top of the spectrum).
        ``"LM"``: largest magnitude, which also finds negative curvature when it
        dominates (a finite sample's loss is rarely exactly convex at ``w*``).
        Either way ``values`` are returned in descending algebraic order.
    tol
        Relative accuracy asked of ARPACK (``0`` means machine precision). The
        default ``1e-6`` gives recomputed residuals far below ``1e-4`` in
        float64; in float32 rounding limits residuals to about
        ``1e-6 ||H|| / |lambda|``, so keep ``tol >= 1e-5`` there.
    dtype, chunk_size
        See :func:`hvp_operator`.
    seed
        Seed of the starting vector.
    maxiter
        Maximum number of ARPACK restarts (``None``: SciPy's default ``10 N``).

    Returns
    -------
    Eigenpairs
        Values, orthonormal float64 vectors, residuals and cost.

    Raises
    ------
    ValueError
        For invalid arguments (see also :func:`hvp_operator`).
    RuntimeError
        If ARPACK does not converge.
    """
    t0 = time.perf_counter()
    n_params = ParamSpec.from_module(model).num_params
    d = _check_d(d, n_params)
    which = check_choice("which", which, WHICH)
    tol = check_positive_float("tol", tol, allow_zero=True)
    if maxiter is not None:
        maxiter = check_int_range("maxiter", maxiter, 1)
    op = hvp_operator(model, X, y, dtype=dtype, chunk_size=chunk_size)
    v0 = np.random.default_rng(seed).standard_normal(n_params)
    try:
        # ARPACK's vector work is small and memory bound; threaded BLAS there only
        # fights torch's threads between products (several times slower on a
        # busy 2-core machine), so it runs single-threaded for this call
        with threadpool_limits(limits=1, user_api="blas"):
            vals, vecs = eigsh(op, k=d, which=which, tol=tol, v0=v0, maxiter=maxiter)
    except ArpackNoConvergence as err:
        raise RuntimeError(
            f"Lanczos found only {len(err.eigenvalues)} of d={d} eigenpairs after "
            f"{op.n_matvec} Hessian-vector products (tol={tol:g}, {dtype}); raise "
            "maxiter, loosen tol, or use dtype=torch.float64"
        ) from err
    order = np.argsort(-vals)
    values = torch.from_numpy(vals[order].copy())
    vectors = fix_signs(torch.from_numpy(vecs[:, order].copy()))
    residuals = relative_residuals(op.hvp, values, vectors)
    seconds = time.perf_counter() - t0
    logger.info(
        "top-%d eigenpairs (%s) in %.2f s, %d products, max residual %.1e",
        d, which, seconds, op.n_matvec, float(residuals.max()),
    )  # fmt: skip
    return Eigenpairs(values, vectors, residuals, op.n_matvec, seconds)


def subspace_angles(U: Tensor, V: Tensor) -> Tensor:
    r"""Principal angles between the column spaces of ``U`` and ``V``, in radians.

    For orthonormal bases the cosines of the angles are the singular values of
    ``U^T V``; :func:`scipy.linalg.subspace_angles` computes them stably (and
    orthonormalises the inputs itself). All angles are zero iff one space
    contains the other.

    Parameters
    ----------
    U, V
        ``(N, d1)`` and ``(N, d2)`` matrices.

    Returns
    -------
    Tensor
        ``(min(d1, d2),)`` float64 angles in ``[0, pi/2]``, largest first.
    """
    if U.ndim != 2 or V.ndim != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(
            "U and V must be matrices with the same number of rows (N, d), got "
            f"shapes {tuple(U.shape)} and {tuple(V.shape)}; pass eigenvectors as "
            "columns, e.g. Eigenpairs.vectors"
        )
    angles = scipy.linalg.subspace_angles(
        U.detach().cpu().double().numpy(), V.detach().cpu().double().numpy()
    )
    return torch.from_numpy(angles)


# ---------------------------------------------------------------- reference
def explicit_hessian(model: nn.Module, X: Tensor, y: Tensor) -> Tensor:
    """Dense Hessian of the mean cross-entropy, in float64 (tiny networks only).

    ``torch.autograd.functional.hessian`` of ``w -> L(w)`` on the flat
    parameter vector, with parameters and inputs cast to float64. This is the
    reference the other routes are tested against.

    Parameters
    ----------
    model, X, y
        Network (``N <= 5000`` parameters) and data.

    Returns
    -------
    Tensor
        ``(N, N)`` float64, symmetric.
    """
    check_data(X, y)
    check_eval_mode(model)
    spec = ParamSpec.from_module(model)
    if spec.num_params > MAX_EXPLICIT_PARAMS:
        raise ValueError(
            f"explicit_hessian is a dense reference for tiny networks (N <= "
            f"{MAX_EXPLICIT_PARAMS}), the model has N={spec.num_params}; use "
            "hvp_operator or top_eigenpairs instead"
        )
    check_params_used_by_loss(model, X, y)
    buffers = {  # and frozen parameters: constants of the forward pass
        n: b.double() if b.is_floating_point() else b for n, b in model.named_buffers()
    } | {
        n: p.detach().double()
        for n, p in model.named_parameters()
        if not p.requires_grad
    }
    X64 = X.to(torch.float64)

    def loss(w: Tensor) -> Tensor:
        out = functional_call(model, {**buffers, **spec.unflatten(w)}, (X64,))
        return F.cross_entropy(out, y)

    w0 = flat_params(model).to(torch.float64)
    with torch.enable_grad():
        return torch.autograd.functional.hessian(loss, w0).detach()


_GGN_NAMES = ("diag_ggn", "diag_hessian", "ggn_operator", "ggn_top_eigenpairs")


def __getattr__(name: str) -> object:
    """Re-export the BackPACK routes of :mod:`lsutils.ggn` (imported lazily).

    :mod:`lsutils.ggn` builds on :class:`Eigenpairs` from this module, so it is
    imported on first use rather than at the top (which would be circular).
    """
    if name in _GGN_NAMES:
        from lsutils import ggn

        return getattr(ggn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
