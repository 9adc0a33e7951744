r"""Curvature from BackPACK: Hessian and GGN diagonals, GGN top eigenspace.

The generalised Gauss-Newton matrix of the mean cross-entropy over ``m``
samples drops the second derivatives of the network from the Hessian:

.. math::

    G = \frac{1}{m} \sum_{i=1}^{m} J_i^\top \nabla_f^2 \ell_i \, J_i,
    \qquad J_i = \partial f_w(x_i) / \partial w \in \mathbb{R}^{C \times N},

with ``C`` classes. BackPACK (Dangel, Kunstner, Hennig 2020) computes, in one
backward pass, the diagonals of ``H`` (``DiagHessian``) and of ``G``
(``DiagGGNExact``), and a per-sample square root ``S_i in R^{N x C}`` with
``G = sum_i S_i S_i^T`` (``SqrtGGNExact``). Stacking ``V = [S_1, ..., S_m]``
(``N x mC``) gives ``G = V V^T``, whose nonzero eigenvalues are those of the
small Gram matrix ``V^T V`` (book chapter 3).

All routes run on a float64 deep copy of the model extended by BackPACK, so the
user's model is left untouched, and process the data in chunks.

Examples
--------
For a linear network the GGN is the Hessian, so the two diagonals agree:

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(3, 2)).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.arange(8) % 2
>>> bool(torch.allclose(diag_ggn(model, X, y), diag_hessian(model, X, y)))
True
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from backpack import backpack, extend
from backpack.extensions import DiagGGNExact, DiagHessian, SqrtGGNExact
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from lsutils._checks import check_int_range, check_positive_float
from lsutils.hessian import (
    Eigenpairs,
    check_data,
    check_eval_mode,
    check_labels,
    check_params_used_by_loss,
    fix_signs,
    relative_residuals,
)
from lsutils.models import check_backpack_extendable
from lsutils.params import ParamSpec

_JIT_WARNING = "`torch.jit.script` is deprecated"

with warnings.catch_warnings():
    # curvlinops imports linear_operator, which calls torch.jit.script at import
    # time; torch 2.14 deprecates it. Nothing a user of lsutils can act on.
    warnings.filterwarnings("ignore", _JIT_WARNING, FutureWarning)
    from curvlinops import GGNLinearOperator

__all__ = ["diag_ggn", "diag_hessian", "ggn_operator", "ggn_top_eigenpairs", "MAX_GRAM"]

logger = logging.getLogger(__name__)

MAX_GRAM = 4096
"""Largest ``min(N, mC)`` for which :func:`ggn_top_eigenpairs` uses a dense
eigendecomposition (of ``V^T V`` or ``V V^T``) instead of Lanczos."""


def _checked_copy(model: nn.Module, X: Tensor, y: Tensor) -> tuple[nn.Module, int]:
    """Check ``model`` against ``(X, y)``; return a float64 deep copy and ``C``.

    Every route of this module starts here (after :func:`check_data`): eval
    mode, every parameter used by the loss, labels within the ``C`` outputs.
    """
    check_eval_mode(model)
    check_params_used_by_loss(model, X, y)
    net = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        n_classes = int(net(X[:1].to(torch.float64)).shape[1])
    check_labels(y, n_classes)
    return net, n_classes


def _extended_copy(model: nn.Module, X: Tensor, y: Tensor, extension: str) -> nn.Module:
    """Validate, then return a float64 deep copy of ``model`` extended by BackPACK."""
    check_data(X, y)
    check_backpack_extendable(model, extension)
    return extend(_checked_copy(model, X, y)[0])


def _chunks(
    net: nn.Module, X: Tensor, y: Tensor, extension: object, chunk_size: int
) -> Iterator[tuple[list[Tensor], float]]:
    """Run BackPACK on each chunk; yield its parameters and weight ``b / m``.

    The loss of a chunk of ``b`` samples is its mean, so the quantities BackPACK
    stores refer to that mean; multiplied by ``b / m`` they add up to those of
    the mean over all ``m`` samples.
    """
    m = X.shape[0]
    device = next(net.parameters()).device
    lossf = extend(nn.CrossEntropyLoss(reduction="mean"))
    params = [p for p in net.parameters() if p.requires_grad]
    for Xc, yc in zip(X.split(chunk_size), y.split(chunk_size), strict=True):
        with torch.enable_grad():
            loss = lossf(net(Xc.to(device, torch.float64)), yc.to(device))
            with backpack(extension), warnings.catch_warnings():
                # inputs need no gradient; torch's note on module hooks is noise
                warnings.filterwarnings("ignore", "Full backward hook is firing")
                loss.backward()
        yield params, Xc.shape[0] / m


def _diag(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    name: str,
    extension: type,
    field: str,
    chunk_size: int,
) -> Tensor:
    chunk_size = check_int_range("chunk_size", chunk_size, 1)
    net = _extended_copy(model, X, y, name)
    out = 0.0
    for params, weight in _chunks(net, X, y, extension(), chunk_size):
        out = out + weight * torch.cat([getattr(p, field).reshape(-1) for p in params])
    return out.detach()


def diag_hessian(
    model: nn.Module, X: Tensor, y: Tensor, chunk_size: int = 2048
) -> Tensor:
    r"""Diagonal of the Hessian of the mean cross-entropy, by BackPACK.

    ``diag(H)_j = d^2 L / dw_j^2`` from BackPACK's ``DiagHessian``, which
    backpropagates the exact Hessian diagonal through the layers (including the
    second derivatives of the activations).

    Parameters
    ----------
    model
        An ``nn.Sequential`` of BackPACK-supported layers (see
        :func:`lsutils.models.check_backpack_extendable`); not modified.
    X, y
        Inputs ``(m, ...)`` and labels ``(m,)``.
    chunk_size
        Samples per backward pass.

    Returns
    -------
    Tensor
        ``(N,)`` float64, flat parameter order.
    """
    return _diag(model, X, y, "DiagHessian", DiagHessian, "diag_h", chunk_size)


def diag_ggn(model: nn.Module, X: Tensor, y: Tensor, chunk_size: int = 2048) -> Tensor:
    r"""Diagonal of the generalised Gauss-Newton matrix, by BackPACK.

    ``diag(G)_j = (1/m) sum_i (J_i^T grad_f^2 l_i J_i)_{jj}`` from BackPACK's
    ``DiagGGNExact``.

    Parameters
    ----------
    model, X, y, chunk_size
        As in :func:`diag_hessian`.

    Returns
    -------
    Tensor
        ``(N,)`` float64, flat parameter order.
    """
    return _diag(
        model, X, y, "DiagGGNExact", DiagGGNExact, "diag_ggn_exact", chunk_size
    )


def _sqrt_blocks(
    net: nn.Module, X: Tensor, y: Tensor, chunk_size: int
) -> Iterator[Tensor]:
    """Yield ``V_c`` of shape ``(N, b C)`` per chunk, with ``G = sum_c V_c V_c^T``."""
    for params, weight in _chunks(net, X, y, SqrtGGNExact(), chunk_size):
        # BackPACK stores [C, b, *shape]; sqrt(b/m) rescales the chunk mean
        cols = [p.sqrt_ggn_exact.flatten(start_dim=2) for p in params]
        yield (torch.cat(cols, dim=2).flatten(end_dim=1) * weight**0.5).T.detach()


def ggn_operator(
    model: nn.Module, X: Tensor, y: Tensor, chunk_size: int = 2048
) -> GGNLinearOperator:
    r"""The GGN of the mean cross-entropy as a matrix-free curvlinops operator.

    Each product ``G v = (1/m) sum_i J_i^T (nabla_f^2 l_i) J_i v`` is one
    Jacobian-vector product, one softmax-Hessian product and one
    vector-Jacobian product per chunk (``torch.func``, through
    ``curvlinops.GGNLinearOperator``), so memory stays flat in ``m``. It runs
    on a float64 deep copy of the model and, unlike the other routes of this
    module, needs no BackPACK support for its layers.

    Parameters
    ----------
    model, X, y
        Network and data (``m`` samples).
    chunk_size
        Samples per chunk (``>= 1``).

    Returns
    -------
    curvlinops.GGNLinearOperator
        ``op @ v`` takes and returns flat float64 tensors in
        :class:`~lsutils.params.ParamSpec` order; ``op.to_scipy()`` gives a
        SciPy operator.

    Examples
    --------
    For a linear network the GGN is the Hessian:

    >>> from lsutils.hessian import hvp_operator
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 2)).double()
    >>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.arange(8) % 2
    >>> v = torch.randn(8, dtype=torch.float64)
    >>> Gv = ggn_operator(model, X, y) @ v
    >>> bool(torch.allclose(Gv, hvp_operator(model, X, y).hvp(v)))
    True
    """
    check_data(X, y)
    chunk_size = check_int_range("chunk_size", chunk_size, 1)
    return _ggn_operator(_checked_copy(model, X, y)[0], X, y, chunk_size)


def _ggn_operator(
    net: nn.Module, X: Tensor, y: Tensor, chunk_size: int
) -> GGNLinearOperator:
    """:func:`ggn_operator` on a checked float64 copy ``net`` of the model."""
    names = ParamSpec.from_module(net).names
    params = dict(net.named_parameters())
    data = [
        (Xc.to(torch.float64), yc)
        for Xc, yc in zip(X.split(chunk_size), y.split(chunk_size), strict=True)
    ]
    return GGNLinearOperator(
        net,
        nn.CrossEntropyLoss(reduction="mean"),
        [params[name] for name in names],
        data,
        check_deterministic=False,  # eval mode, fixed chunks: nothing random
        num_data=int(X.shape[0]),
    )


def ggn_top_eigenpairs(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    d: int,
    tol: float = 1e-6,
    chunk_size: int = 256,
    seed: int = 0,
    memory_budget: int = 2**30,
) -> Eigenpairs:
    r"""Top-``d`` eigenpairs of the GGN, from BackPACK's square roots or matrix-free.

    With ``G = V V^T`` and ``V`` of shape ``(N, mC)`` (see the module notes):

    * if ``V`` fits in ``memory_budget`` bytes and ``min(N, mC) <= MAX_GRAM``,
      eigendecompose the smaller of ``V^T V`` (then ``u = V a / sqrt(lambda)``)
      and ``V V^T``;
    * if ``V`` fits but is large, Lanczos on ``v -> V (V^T v)``;
    * otherwise Lanczos on the matrix-free product of :func:`ggn_operator`
      (flat memory; each product costs about two Hessian-vector products;
      layers need no BackPACK support on this route).

    Parameters
    ----------
    model, X, y
        As in :func:`diag_hessian`.
    d
        Number of eigenpairs, ``1 <= d < N`` and ``d <= m (C - 1)`` (the rank
        of ``G`` is at most ``m (C - 1)``: the softmax Hessian has rank
        ``C - 1``).
    tol
        Relative accuracy for Lanczos (unused by the dense route).
    chunk_size
        Samples per BackPACK pass (lowered automatically so that one chunk's
        ``V_c`` fits in ``memory_budget``), or per chunk of the matrix-free
        product.
    seed
        Seed of the Lanczos starting vector.
    memory_budget
        Bytes allowed for ``V`` (float64).

    Returns
    -------
    Eigenpairs
        Descending values, orthonormal vectors, residuals
        ``||G u - lambda u|| / lambda`` from fresh products ``V (V^T u)``.
    """
    t0 = time.perf_counter()
    n_params = ParamSpec.from_module(model).num_params
    m = check_data(X, y)
    chunk_size = check_int_range("chunk_size", chunk_size, 1)
    tol = check_positive_float("tol", tol, allow_zero=True)
    memory_budget = check_int_range("memory_budget", memory_budget, 1)
    net, n_classes = _checked_copy(model, X, y)
    rank = m * (n_classes - 1)
    d = check_int_range(
        "d",
        d,
        1,
        min(n_params - 1, rank),
        hint=f"d must be smaller than the parameter count N={n_params} and at "
        f"most the GGN rank bound m(C-1)={rank} (m={m} samples, C={n_classes} "
        "classes); use a smaller d or more samples",
    )
    n_cols = m * n_classes
    bytes_v = 8 * n_params * n_cols
    free_chunk = chunk_size  # the matrix-free route stores no V_c
    chunk_size = max(1, min(chunk_size, memory_budget // (8 * n_params * n_classes)))
    n_matvec = 0

    if bytes_v <= memory_budget:
        check_backpack_extendable(model, "SqrtGGNExact")  # V needs BackPACK
        net = extend(net)
        V = torch.cat(list(_sqrt_blocks(net, X, y, chunk_size)), dim=1)

        def apply(v: Tensor) -> Tensor:
            return V @ (V.T @ v)

        if min(n_params, n_cols) <= MAX_GRAM:
            route = "dense"
            small = V.T @ V if n_cols <= n_params else V @ V.T
            evals, evecs = torch.linalg.eigh(small)
            values, top = evals.flip(0)[:d], evecs.flip(1)[:, :d]
            if n_cols <= n_params:
                # u = V a / sqrt(lambda) is orthonormal up to rounding; QR
                # (signs fixed) removes the rounding without changing the span
                Q, R = torch.linalg.qr(V @ top / values.sqrt())
                vectors = Q * torch.sign(R.diagonal())
            else:
                vectors = top
        else:
            route = "lanczos"
    else:
        route = "lanczos, matrix-free"
        logger.info(
            "V would take %.2f GiB > memory_budget=%.2f GiB: GGN products are "
            "matrix-free (curvlinops)", bytes_v / 2**30, memory_budget / 2**30,
        )  # fmt: skip
        ggn_op = _ggn_operator(net, X, y, free_chunk)

        def apply(v: Tensor) -> Tensor:
            with warnings.catch_warnings():
                # torch's forward-mode AD (the Jacobian-vector product) calls
                # the deprecated torch.jit.script on first use; not ours to fix
                warnings.filterwarnings("ignore", _JIT_WARNING, FutureWarning)
                return ggn_op @ v

    if route != "dense":
        counter = [0]

        def matvec(x: np.ndarray) -> np.ndarray:  # CPU tensors assumed (no .to)
            counter[0] += 1
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).ravel())
            return apply(v).numpy()

        op = LinearOperator((n_params, n_params), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n_params)
        with threadpool_limits(limits=1, user_api="blas"):  # see top_eigenpairs
            vals, vecs = eigsh(op, k=d, which="LA", tol=tol, v0=v0)
        order = np.argsort(-vals)
        values = torch.from_numpy(vals[order].copy())
        vectors = torch.from_numpy(vecs[:, order].copy())
        n_matvec = counter[0]
    vectors = fix_signs(vectors)
    residuals = relative_residuals(apply, values, vectors)
    seconds = time.perf_counter() - t0
    logger.info(
        "GGN top-%d eigenpairs (%s) in %.2f s, max residual %.1e",
        d, route, seconds, float(residuals.max()),
    )  # fmt: skip
    return Eigenpairs(values, vectors, residuals, n_matvec + d, seconds)
