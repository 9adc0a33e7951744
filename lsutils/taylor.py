r"""Per-sample second-order Taylor terms in a subspace (book chapters 2 and 6).

In subspace coordinates ``theta`` (``w = w* + P^T theta``, DESIGN section 5) each
per-sample loss is modelled by its second-order expansion at ``theta = 0``

.. math::

    l_i(\theta) \approx l_i^* + g_i^\top \theta
        + \tfrac12 \theta^\top A_i \theta,
    \qquad g_i = P \nabla l_i(w^*), \quad A_i = P \nabla^2 l_i(w^*) P^\top.

:func:`taylor_terms` computes ``l_i^*``, ``g_i`` and ``A_i`` for every sample at
once with nested forward-mode derivatives of :mod:`torch.func` along the ``d``
basis vectors, so it never forms an ``N x N`` matrix nor a per-sample
``N``-dimensional gradient. Cumulative means of these terms give ``L_k^*``,
``g_k`` and ``A_k`` for every ``k`` (:mod:`lsutils.delta`).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap
from tqdm.auto import tqdm

from lsutils._checks import check_finite, check_int_range
from lsutils.params import ParamSpec

if TYPE_CHECKING:
    from lsutils.projection import Subspace

__all__ = ["TaylorTerms", "quadratic_losses", "taylor_terms"]

logger = logging.getLogger(__name__)


@dataclass
class TaylorTerms:
    """Per-sample Taylor terms ``l_i^*``, ``g_i``, ``A_i`` at ``theta = 0``.

    Attributes
    ----------
    loss
        ``(m,)`` float64, ``l_i(w*)``.
    grad
        ``(m, d)`` float64, ``g_i = P grad l_i(w*)``.
    hess
        ``(m, d, d)`` float64, ``A_i = P grad^2 l_i(w*) P^T`` (symmetric).
    """

    loss: Tensor
    grad: Tensor
    hess: Tensor

    def __post_init__(self) -> None:
        self.loss = torch.as_tensor(self.loss, dtype=torch.float64)
        self.grad = torch.as_tensor(self.grad, dtype=torch.float64)
        self.hess = torch.as_tensor(self.hess, dtype=torch.float64)
        m = self.loss.shape[0] if self.loss.ndim == 1 else -1
        d = self.grad.shape[-1] if self.grad.ndim == 2 else -1
        if m < 1 or d < 1 or self.grad.shape != (m, d) or self.hess.shape != (m, d, d):
            raise ValueError(
                "TaylorTerms expects loss (m,), grad (m, d), hess (m, d, d) with "
                f"m, d >= 1, got {tuple(self.loss.shape)}, "
                f"{tuple(self.grad.shape)}, {tuple(self.hess.shape)}"
            )

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    @property
    def d(self) -> int:
        """Subspace dimension."""
        return int(self.grad.shape[1])

    def subset(self, idx: Tensor) -> TaylorTerms:
        """Terms of the samples ``idx`` (indices or a boolean mask), in that order."""
        idx = torch.as_tensor(idx)
        return TaylorTerms(self.loss[idx], self.grad[idx], self.hess[idx])

    def permute(self, order: Tensor) -> TaylorTerms:
        """Terms reordered so that sample ``order[j]`` comes ``j``-th.

        ``order`` must be a permutation of ``0..m-1`` (one row of
        :func:`lsutils.delta.orderings`).
        """
        order = torch.as_tensor(order, dtype=torch.int64)
        m = len(self)
        if order.shape != (m,) or not torch.equal(
            torch.sort(order).values, torch.arange(m)
        ):
            raise ValueError(
                f"order must be a permutation of 0..{m - 1} with shape ({m},), "
                f"got shape {tuple(order.shape)}; use lsutils.delta.orderings"
            )
        return self.subset(order)


# The nested forward pass keeps tangents of shape (d, d, chunk, *activation) for
# every activation; the chunk is capped so that one such tensor has at most this
# many entries (128 MiB in float64).
_MAX_SECOND_ORDER = 2**24


def _widest_activation(model: nn.Module, x: Tensor) -> int:
    """Largest per-sample output size of a leaf module from the first layer on.

    Outputs before the first module with parameters (a ``Flatten`` of the input,
    say) carry no tangents and are skipped.
    """
    sizes: list[tuple[bool, int]] = []
    seen_params = False

    def hook(mod: nn.Module, _inp: object, out: object) -> None:
        nonlocal seen_params
        seen_params = seen_params or any(True for _ in mod.parameters(False))
        if isinstance(out, Tensor):
            sizes.append((seen_params, out[0].numel()))

    leaves = [mod for mod in model.modules() if not list(mod.children())]
    handles = [mod.register_forward_hook(hook) for mod in leaves]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return max([n for after, n in sizes if after] or [1])


def _chunk_terms(
    model: nn.Module, spec: ParamSpec, origin: Tensor, basis: Tensor
) -> Callable[[Tensor, Tensor], tuple[Tensor, tuple[Tensor, Tensor]]]:
    """Map a chunk ``(x, y)`` to ``(hess (d, d, c), (grad (d, c), loss (c,)))``.

    Forward-over-forward mode in the flat parameters: the inner level pushes the
    ``d`` tangents ``P^T e_j`` (rows of ``basis``) through the network, the outer
    level differentiates those directional derivatives along the same rows.
    Working in ``w`` rather than ``theta`` keeps the parameter tangents constant,
    so no ``(d, d, N)`` second-order tangent of the weights is ever formed; the
    cost is about ``2 d`` forward passes through the first (data-facing) layer
    plus ``d^2`` passes of second-order tangents through the later layers.
    """
    buffers = dict(model.named_buffers())
    # Known shortcoming: torch.func materialises the (d, d, chunk, width) second-
    # order tangents even where they are zero (after the first layer) and batches
    # conv layers slowly, so d = 50 on the MLP and any d on the CNN take minutes,
    # not seconds. A layer-wise propagation for nn.Sequential (as in the engine's
    # fast path) would make this m d N_1 + m d^2 width in plain matrix products.

    def run(x: Tensor, y: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        def losses(w: Tensor) -> Tensor:
            out = functional_call(model, {**spec.unflatten(w), **buffers}, (x,))
            return F.cross_entropy(out, y, reduction="none")

        def first(w: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            def along(v: Tensor) -> tuple[Tensor, Tensor]:
                value, slope = jvp(losses, (w,), (v,))
                return slope, value

            grad, value = vmap(along, out_dims=(0, None))(basis)
            return grad, (grad, value)

        def second(v: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            _, hess_v, aux = jvp(first, (origin,), (v,), has_aux=True)
            return hess_v, aux

        return vmap(second, out_dims=(0, None))(basis)

    return run


def taylor_terms(
    model: nn.Module,
    subspace: Subspace,
    X: Tensor,
    y: Tensor,
    chunk_size: int = 512,
    progressbar: bool = False,
) -> TaylorTerms:
    """Per-sample loss, projected gradient and projected Hessian at ``w*``.

    For ``f_i(theta) = CE(f_{w* + P^T theta}(x_i), y_i)`` this returns
    ``f_i(0) = l_i(w*)``, ``grad f_i(0) = P grad l_i(w*)`` and
    ``grad^2 f_i(0) = P grad^2 l_i(w*) P^T`` for every sample ``i``, exactly (no
    Gauss-Newton approximation): nested forward-mode derivatives
    (:func:`torch.func.jvp` under :func:`torch.func.vmap`) along the ``d`` basis
    vectors, on a whole chunk of samples per call. The batch dimension of the
    network carries the samples, so no per-sample ``N``-dimensional gradient is
    ever stored. Everything runs in float64 on a copy of the model in
    evaluation mode (the caller's model is not touched).

    Parameters
    ----------
    model
        Network ``f_w``; its parameters are replaced by ``w* + P^T theta``. The
        per-sample losses must not interact through the batch (no batch norm in
        training mode; the copy is put in evaluation mode).
    subspace
        :class:`lsutils.projection.Subspace` with ``origin`` ``(N,)`` and
        orthonormal ``basis`` ``(d, N)``.
    X, y
        Inputs ``(m, ...)`` and integer labels ``(m,)``.
    chunk_size
        Largest number of samples per vectorised call. The chunk is further
        capped at ``2**24 // (d**2 * width)`` samples, ``width`` the largest
        per-sample activation, because the second-order tangents take
        ``d**2 * chunk * width`` entries.
    progressbar
        Show a tqdm bar over chunks.

    Returns
    -------
    TaylorTerms
        ``loss (m,)``, ``grad (m, d)``, ``hess (m, d, d)``, float64.

    Raises
    ------
    ValueError
        If the subspace is the full space (``basis is None``), if shapes
        disagree, or if a result is not finite.

    Notes
    -----
    Cost: about ``2 m d N_1`` multiply-adds for a first layer with ``N_1``
    weights, plus ``m d^2`` times the size of the later layers. Measured on
    two busy CPU cores: the 784-128-10 MLP takes about 10 s for ``m = 2,000``
    or ``10,000`` at ``d = 10`` but minutes at ``d = 50``; the small CNN takes
    about a minute per 500 samples at ``d = 10``.
    """
    basis = getattr(subspace, "basis", None)
    if basis is None:
        raise ValueError(
            "taylor_terms needs a d-dimensional subspace (basis of shape (d, N)), "
            "got the full space (basis=None): the closed form stores d x d "
            "Hessians per sample; use a Hessian or random subspace instead"
        )
    chunk_size = check_int_range("chunk_size", chunk_size, 1)
    origin = subspace.origin.detach().to(torch.float64)
    basis = basis.detach().to(torch.float64)
    if basis.ndim != 2 or origin.shape != (basis.shape[1],):
        raise ValueError(
            f"subspace basis must be (d, N) and origin (N,), got "
            f"{tuple(basis.shape)} and {tuple(origin.shape)}"
        )
    if X.shape[0] != y.shape[0] or X.shape[0] < 1:
        raise ValueError(
            f"X and y must hold the same number (>= 1) of samples, got "
            f"{X.shape[0]} and {y.shape[0]}"
        )
    device = basis.device
    net = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    spec = ParamSpec.from_module(net)
    run = _chunk_terms(net, spec, origin.to(device), basis)
    m, d = X.shape[0], basis.shape[0]
    width = _widest_activation(net, X[:1].to(device=device, dtype=torch.float64))
    chunk = min(chunk_size, max(1, _MAX_SECOND_ORDER // (d * d * width)))
    losses, grads, hessians = [], [], []
    start = time.perf_counter()
    for lo in tqdm(range(0, m, chunk), desc="taylor terms", disable=not progressbar):
        xb = X[lo : lo + chunk].to(device=device, dtype=torch.float64)
        yb = y[lo : lo + chunk].to(device)
        with torch.no_grad(), warnings.catch_warnings():
            # torch registers its forward-mode decompositions with torch.jit.script
            # on first use and warns about its own deprecated call; not ours to fix
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.script.*", category=FutureWarning
            )
            hb, (gb, lb) = run(xb, yb)
        losses.append(lb)
        grads.append(gb.T)
        hessians.append(hb.permute(2, 0, 1))
    hess = torch.cat(hessians)
    terms = TaylorTerms(
        loss=check_finite("per-sample loss at w*", torch.cat(losses)),
        grad=check_finite("projected per-sample gradient", torch.cat(grads)),
        hess=check_finite("projected per-sample Hessian", (hess + hess.mT) / 2),
    )
    logger.info(
        "taylor terms: m=%d samples, d=%d, N=%d parameters, chunk=%d, %.2f s",
        m,
        d,
        origin.numel(),
        chunk,
        time.perf_counter() - start,
    )
    return terms


def quadratic_losses(terms: TaylorTerms, theta: Tensor) -> Tensor:
    """Quadratic model ``l_i^* + g_i^T theta + theta^T A_i theta / 2`` of each loss.

    Parameters
    ----------
    terms
        Output of :func:`taylor_terms` (``m`` samples, dimension ``d``).
    theta
        ``(S, d)`` subspace points.

    Returns
    -------
    torch.Tensor
        ``(S, m)`` float64, the model at every point for every sample (same
        layout as :func:`lsutils.engine.loss_matrix`).

    Examples
    --------
    >>> terms = TaylorTerms(torch.tensor([1.0]), torch.tensor([[2.0]]),
    ...                     torch.tensor([[[4.0]]]))
    >>> quadratic_losses(terms, torch.tensor([[0.5]]))  # 1 + 2*0.5 + 4*0.25/2
    tensor([[2.5000]], dtype=torch.float64)
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if theta.ndim != 2 or theta.shape[1] != terms.d:
        raise ValueError(
            f"theta must have shape (S, {terms.d}) to match the terms, "
            f"got {tuple(theta.shape)}"
        )
    S, d = theta.shape
    outer = (theta[:, :, None] * theta[:, None, :]).reshape(S, d * d)
    quad = outer @ terms.hess.reshape(len(terms), d * d).T
    return terms.loss[None, :] + theta @ terms.grad.T + 0.5 * quad
