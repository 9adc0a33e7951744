r"""Per-sample second-order Taylor terms in a subspace (book chapters 2 and 6).

In subspace coordinates ``theta`` (``w = w* + P^T theta``, DESIGN section 5) each
per-sample loss is modelled by its second-order expansion at ``theta = 0``

.. math::

    l_i(\theta) \approx l_i^* + g_i^\top \theta
        + \tfrac12 \theta^\top A_i \theta,
    \qquad g_i = P \nabla l_i(w^*), \quad A_i = P \nabla^2 l_i(w^*) P^\top.

:func:`taylor_terms` computes ``l_i^*``, ``g_i`` and ``A_i`` for every sample at
once, exactly, without an ``N x N`` matrix or a per-sample ``N``-dimensional
gradient, by one of two routes:

``"sequential"``
    For ``nn.Sequential`` models of :data:`SEQUENTIAL_LAYERS`: the ``d``
    directional derivatives of every activation are carried forward layer by
    layer, and the second-order part ``sum_c r_c grad^2 z_c`` of the
    cross-entropy Hessian is collected from per-layer sources contracted with
    the adjoints of one backward pass, so no ``d x d``-fold activation tensor
    is formed (see :func:`taylor_terms`, Notes).
``"functorch"``
    Nested forward-mode derivatives of :mod:`torch.func` along the ``d`` basis
    vectors; any model, but minutes where the sequential route takes seconds.

Cumulative means of these terms give ``L_k^*``, ``g_k`` and ``A_k`` for every
``k`` (:mod:`lsutils.delta`).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap
from tqdm import tqdm

from lsutils._checks import check_choice, check_finite, check_int_range
from lsutils.params import ParamSpec

if TYPE_CHECKING:
    from lsutils.projection import Subspace

__all__ = [
    "METHODS",
    "SEQUENTIAL_LAYERS",
    "TaylorTerms",
    "quadratic_losses",
    "taylor_terms",
]

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
    # conv layers slowly, so d = 50 on the MLP and any d on the CNN take minutes.
    # nn.Sequential models take the "sequential" route instead.

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


# --------------------------------------------------------------------------
# The "sequential" route: layer-wise first-order tangents plus adjoints
# --------------------------------------------------------------------------
#
# For h_l = f_l(h_{l-1}; w_l) and w = w* + P^T theta, the first derivatives
# J_l = dh_l/dtheta (n, d, *shape_l) follow the layers forward (J_0 = 0), and the
# second derivatives obey K_l = (d f_l / d h_{l-1}) K_{l-1} + S_l with a source
# S_l that needs only J_{l-1}. With the adjoints delta_l = d(r . z)/dh_l of one
# backward pass (r fixed), r . K_L = sum_l <delta_l, S_l>, so the (n, d, d,
# *shape) tensors K are never formed.

#: Layers the ``"sequential"`` route handles, in the order named by its messages.
SEQUENTIAL_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)

# Chunks of the sequential route are sized so that the stacked tangents of one
# chunk (about four (n, d, width) tensors at the widest layer) take this many
# bytes at most.
_SEQUENTIAL_BUDGET = 256 * 2**20


# Entries of one im2col block of tangents (4 MiB in float64: stays in cache).
_UNFOLD_BLOCK = 2**19


class _Unsupported(Exception):
    """The sequential route cannot handle this model; the message says why."""


@dataclass
class _Step:
    """One leaf layer of the plan, with its slices of ``w*`` and of ``P``.

    ``kind`` is ``"linear"``, ``"conv"`` (weighted), ``"relu"``, ``"tanh"``,
    ``"sigmoid"`` (elementwise), ``"maxpool"`` or ``"map"`` (any other layer
    linear in its input: pooling by averages, flattening, identity). For
    weighted layers ``dirs`` stacks the ``d`` weight slices ``V_j`` as a
    ``(d * out, in * kh * kw)`` matrix for the forward product, ``adjoint``
    holds the same slices as ``(out, d * in, ...)`` for the adjoint product,
    and ``bias_dirs`` the ``(d * out,)`` bias slices.
    """

    module: nn.Module
    kind: str
    out_shape: tuple[int, ...] = ()
    weight: Tensor | None = None
    bias: Tensor | None = None
    dirs: Tensor | None = None
    adjoint: Tensor | None = None
    bias_dirs: Tensor | None = None

    @property
    def weighted(self) -> bool:
        return self.kind in ("linear", "conv")


def _sequential_names() -> str:
    return "nn.Sequential of " + ", ".join(c.__name__ for c in SEQUENTIAL_LAYERS)


def _leaf_layers(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Leaf modules of nested ``nn.Sequential`` containers with their names."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            out += _leaf_layers(child, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", child))
    return out


def _step_kind(name: str, mod: nn.Module) -> str:
    """Classify a leaf layer, raising ``_Unsupported`` with the reason."""
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1 or mod.padding_mode != "zeros":
            raise _Unsupported(
                f"layer {name} is a Conv2d with groups={mod.groups}, "
                f"padding_mode={mod.padding_mode!r} (needs groups=1, 'zeros')"
            )
        return "conv"
    if isinstance(mod, nn.Flatten) and mod.start_dim == 0:
        raise _Unsupported(f"layer {name} flattens the batch dimension")
    if isinstance(mod, nn.MaxPool2d) and mod.return_indices:
        raise _Unsupported(f"layer {name} returns pooling indices")
    for cls, kind in (
        (nn.ReLU, "relu"),
        (nn.Tanh, "tanh"),
        (nn.Sigmoid, "sigmoid"),
        (nn.MaxPool2d, "maxpool"),
        (nn.AvgPool2d | nn.Flatten | nn.Identity | nn.Dropout, "map"),
    ):
        if isinstance(mod, cls):
            return kind
    raise _Unsupported(f"layer {name} ({type(mod).__name__}) is not supported")


def _sequential_plan(
    net: nn.Module, spec: ParamSpec, origin: Tensor, basis: Tensor, sample: Tensor
) -> list[_Step]:
    """Split ``net`` into steps and slice ``w*`` and ``P`` per weighted layer.

    ``sample`` (one input) fixes the per-sample shapes. Parameters that are not
    trainable are constants: no direction moves them. Raises ``_Unsupported``.
    """
    if not isinstance(net, nn.Sequential):
        raise _Unsupported(f"the model is a {type(net).__name__}")
    starts = accumulate(spec.numels[:-1], initial=0)
    offsets = dict(zip(spec.names, starts, strict=True))
    d = basis.shape[0]

    def slices(name: str, p: Tensor) -> tuple[Tensor, Tensor]:
        """``w*`` part ``p.shape`` and basis part ``(d, *p.shape)`` of a tensor."""
        if name not in offsets:
            return p.detach(), torch.zeros(d, *p.shape, dtype=p.dtype)
        a, size = offsets[name], p.numel()
        return (
            origin[a : a + size].view(p.shape),
            basis[:, a : a + size].reshape(d, *p.shape),
        )

    steps: list[_Step] = []
    h = sample
    for name, mod in _leaf_layers(net):
        step = _Step(mod, _step_kind(name, mod))
        if step.kind == "linear" and h.ndim != 2:
            raise _Unsupported(
                f"layer {name} is a Linear layer on inputs of shape "
                f"{tuple(h.shape[1:])}; flatten them first"
            )
        if step.kind in ("conv", "maxpool") and h.ndim != 4:
            raise _Unsupported(
                f"layer {name} ({type(mod).__name__}) needs (C, H, W) inputs, "
                f"got {tuple(h.shape[1:])}"
            )
        if step.weighted:
            step.weight, V = slices(f"{name}.weight", mod.weight)
            out, fan_in = V.shape[1], V[0, 0].numel()
            step.dirs = V.reshape(d * out, fan_in)
            if mod.bias is not None:
                step.bias, vb = slices(f"{name}.bias", mod.bias)
                step.bias_dirs = vb.reshape(-1)
            # (out, d * in, ...): the d slices side by side along the inputs
            step.adjoint = V.transpose(0, 1).reshape(out, d * V.shape[2], *V.shape[3:])
        h, _ = _value_step(step, h)
        step.out_shape = tuple(h.shape[1:])
        steps.append(step)
    if not any(step.weighted for step in steps):
        raise _Unsupported("the model has no Linear or Conv2d layer")
    if len(steps[-1].out_shape) != 1:
        raise _Unsupported(f"the output per sample has shape {steps[-1].out_shape}")
    return steps


def _apply(step: _Step, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The weighted layer's operation with the given weight and bias."""
    if step.kind == "linear":
        return F.linear(h, weight, bias)
    m = step.module
    return F.conv2d(h, weight, bias, m.stride, m.padding, m.dilation)


def _value_step(step: _Step, h: Tensor) -> tuple[Tensor, Tensor | None]:
    """Output of a step at ``w*`` and what its tangent map needs (or None).

    The extra tensor is the ReLU mask, the tanh/sigmoid output or the max-pooling
    indices.
    """
    if step.weighted:
        return _apply(step, h, step.weight, step.bias), None
    if step.kind == "relu":
        return torch.relu(h), h > 0
    if step.kind == "tanh":
        out = torch.tanh(h)
        return out, out
    if step.kind == "sigmoid":
        out = torch.sigmoid(h)
        return out, out
    if step.kind == "maxpool":
        m = step.module
        return F.max_pool2d(
            h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True
        )
    if isinstance(step.module, nn.Dropout):  # evaluation mode: the identity
        return h, None
    return step.module(h), None


def _curvature(kind: str, out: Tensor) -> tuple[Tensor, Tensor]:
    """First and second derivative of tanh / sigmoid, from the output ``out``."""
    if kind == "tanh":
        slope = 1 - out * out
        return slope, -2 * out * slope
    slope = out * (1 - out)
    return slope, slope * (1 - 2 * out)


def _sequential_chunk(
    steps: list[_Step], x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Loss ``(n,)``, gradient ``(n, d)`` and Hessian ``(n, d, d)`` of a chunk.

    One value pass at ``w*`` keeps the inputs of the steps, the ReLU masks, the
    tanh/sigmoid outputs and the pooling indices; one backward pass gives the
    adjoints ``delta_l = d(r . z)/dh_l`` of the residual ``r = softmax(z) -
    onehot(y)`` (held fixed); one tangent pass carries ``J_l`` (``(n, d,
    *shape)``) and adds each second-order source contracted with its adjoint:

    * weighted layer ``o = op(h, W) + b``: ``J <- op(J, W*) + op(h, V_j) + c_j``
      and ``T_jk = <delta, op(J_k, V_j)> = <op^T(delta, V_j), J_k>``, added as
      ``T + T^T`` (zero for the first weighted layer, whose input is fixed);
    * ``tanh`` / ``sigmoid``: ``J <- sigma'(a) J`` and
      ``<delta, sigma''(a) J_j J_k>``;
    * ReLU, max pooling (same indices), average pooling, flattening: ``J`` is
      mapped like the value, no source (ReLU'' = 0 almost everywhere).

    Then ``g = J_z r`` and ``A = J_z (diag p - p p^T) J_z^T + sum_l <delta_l,
    S_l>`` on the logits ``z``.
    """
    n = x.shape[0]
    inputs: list[Tensor] = []
    extras: list[Tensor | None] = []
    tracked: list[Tensor] = []  # outputs from the first weighted layer on
    with torch.enable_grad():
        h = x
        for step in steps:
            inputs.append(h.detach())
            h, extra = _value_step(step, h)
            extras.append(None if extra is None else extra.detach())
            if step.weighted and not tracked:
                h = h.detach().requires_grad_(True)
            if tracked or h.requires_grad:
                tracked.append(h)
        z = h
        logp = torch.log_softmax(z.detach(), dim=1)
        p = logp.exp()
        r = p - F.one_hot(y, p.shape[1]).to(p.dtype)
        deltas = list(torch.autograd.grad(z, tracked, grad_outputs=r))
    first = len(steps) - len(tracked)  # index of the first weighted layer
    d = steps[first].dirs.shape[0] // steps[first].weight.shape[0]
    curv = torch.zeros(n, d, d, dtype=x.dtype, device=x.device)
    J: Tensor | None = None
    for i in range(first, len(steps)):
        step, h, extra, delta = steps[i], inputs[i], extras[i], deltas[i - first]
        if step.weighted:
            J, T = _weighted_terms(step, h, J, delta)
            if T is not None:
                curv += T + T.mT
        elif step.kind == "relu":
            J = J.mul_(extra.unsqueeze(1))  # J is a fresh tensor of this pass
        elif step.kind in ("tanh", "sigmoid"):
            slope, bend = _curvature(step.kind, extra)
            Jf = J.flatten(2)
            weights = (delta * bend).flatten(1).unsqueeze(1)
            curv += (Jf * weights) @ Jf.mT
            J = J * slope.unsqueeze(1)
        elif step.kind == "maxpool":
            idx = extra.flatten(2).unsqueeze(1).expand(-1, d, -1, -1)
            J = J.flatten(3).gather(3, idx).view(n, d, *step.out_shape)
        else:
            J = _value_step(step, J.flatten(0, 1))[0].view(n, d, *step.out_shape)
    loss = -logp.gather(1, y[:, None]).squeeze(1)
    grad = torch.einsum("ndc,nc->nd", J, r)
    Jp = torch.einsum("ndc,nc->nd", J, p)
    gauss_newton = (J * p.unsqueeze(1)) @ J.mT - Jp.unsqueeze(2) * Jp.unsqueeze(1)
    return loss, grad, gauss_newton + curv


def _weighted_terms(
    step: _Step, h: Tensor, J: Tensor | None, delta: Tensor
) -> tuple[Tensor, Tensor | None]:
    """New tangents ``(n, d, *out)`` and source ``T (n, d, d)`` of a weighted layer.

    ``J_out = op(h, V_j) + c_j + op(J_j, W*)`` and ``T`` with
    ``T[n, j, k] = <delta_n, op(J_{n,k}, V_j)>`` (or its transpose: only
    ``T + T^T`` is used); ``T`` is None when ``J`` is (the first weighted layer).
    For ``Linear`` the adjoints ``V_j^T delta`` of all ``d`` directions come from
    one product ``delta @ [V_1 ... V_d]``, then ``T = (V^T delta) J^T``.
    """
    if step.kind == "conv":
        return _conv_terms(step, h, J, delta)
    n = h.shape[0]
    new = F.linear(h, step.dirs, step.bias_dirs).view(n, -1, *step.out_shape)
    if J is None:
        return new, None
    new += J @ step.weight.T
    Y = (delta @ step.adjoint).view_as(J)
    return new, Y @ J.mT


def _conv_terms(
    step: _Step, h: Tensor, J: Tensor | None, delta: Tensor
) -> tuple[Tensor, Tensor | None]:
    """:func:`_weighted_terms` of a ``Conv2d`` layer.

    ``op(h, V_j) + c_j`` for all ``j`` is one convolution with the ``d * out``
    stacked kernels; ``op(J_k, W*)`` is im2col of blocks of tangents (about
    4 MiB each) times the ``(out, in kh kw)`` weight matrix, 2-3 times faster
    than :func:`torch.nn.functional.conv2d` on many small float64 images with
    few output channels (its CPU kernel does im2col one image at a time); the
    adjoints ``Y_j = op^T(delta, V_j)`` are one input gradient of a convolution
    with ``d * in`` input channels, and ``T = Y J^T``.
    """
    # Known shortcoming: float64 convolutions are the bottleneck of the CNN
    # (about 2.5 min for m = 8000, d = 50 on one loaded core). Conv -> ReLU ->
    # MaxPool blocks only need the tangents at the pooled positions; computing
    # them from gathered im2col columns would save about 4x on the first layer.
    m, n = step.module, h.shape[0]
    kernels = step.dirs.view(-1, *step.weight.shape[1:])
    new = F.conv2d(h, kernels, step.bias_dirs, m.stride, m.padding, m.dilation)
    new = new.view(n, -1, *step.out_shape)
    if J is None:
        return new, None
    d = J.shape[1]
    W = step.weight.flatten(1)
    flat, out = J.flatten(0, 1), new.view(n * d, W.shape[0], -1)
    block = max(1, _UNFOLD_BLOCK // (W.shape[1] * out.shape[2]))
    for lo in range(0, n * d, block):
        out[lo : lo + block] += W @ F.unfold(
            flat[lo : lo + block], m.kernel_size, m.dilation, m.padding, m.stride
        )
    Y = torch.nn.grad.conv2d_input(
        (n, d * J.shape[2], *J.shape[3:]),
        step.adjoint,
        delta,
        m.stride,
        m.padding,
        m.dilation,
    )
    return new, Y.view(n, d, -1) @ J.flatten(2).mT


METHODS = ("auto", "sequential", "functorch")


def taylor_terms(
    model: nn.Module,
    subspace: Subspace,
    X: Tensor,
    y: Tensor,
    chunk_size: int = 512,
    progressbar: bool = False,
    method: str = "auto",
) -> TaylorTerms:
    r"""Per-sample loss, projected gradient and projected Hessian at ``w*``.

    For ``f_i(theta) = CE(f_{w* + P^T theta}(x_i), y_i)`` this returns
    ``f_i(0) = l_i(w*)``, ``grad f_i(0) = P grad l_i(w*)`` and
    ``grad^2 f_i(0) = P grad^2 l_i(w*) P^T`` for every sample ``i``, exactly (no
    Gauss-Newton approximation), on whole chunks of samples at a time, without
    ever forming an ``N x N`` matrix or a per-sample ``N``-dimensional gradient.
    Everything runs in float64 on a copy of the model in evaluation mode (the
    caller's model is not touched); its parameters are replaced by
    ``subspace.origin``.

    With logits ``z``, ``p = softmax(z)``, ``r = p - e_{y}`` and
    ``J_z = dz/dtheta`` (``d x K``), the Hessian splits into

    .. math::

        A_i = J_z \bigl(\operatorname{diag}(p) - p p^\top\bigr) J_z^\top
            + \sum_{c} r_c \, \nabla^2_\theta z_c, \qquad g_i = J_z r.

    Parameters
    ----------
    model
        Network ``f_w``. The per-sample losses must not interact through the
        batch (the copy is put in evaluation mode).
    subspace
        :class:`lsutils.projection.Subspace` with ``origin`` ``(N,)`` and
        orthonormal ``basis`` ``(d, N)``.
    X, y
        Inputs ``(m, ...)`` and integer labels ``(m,)``.
    chunk_size
        Largest number of samples per vectorised call. Each method caps it
        further from the layer sizes: ``"sequential"`` keeps its stacked
        ``(chunk, d, width)`` tangents within about 256 MiB, ``"functorch"``
        its ``(d, d, chunk, width)`` second-order tangents within ``2**24``
        entries (``width`` the largest per-sample activation).
    progressbar
        Show a tqdm bar over chunks.
    method
        ``"sequential"``: layer-wise propagation for ``nn.Sequential`` models
        of :data:`SEQUENTIAL_LAYERS` (first derivatives forward, the
        second-order term through one backward pass of ``r``, see Notes);
        ``"functorch"``: nested forward-mode :func:`torch.func.jvp` under
        :func:`torch.func.vmap` along the ``d`` basis vectors (any model);
        ``"auto"``: ``"sequential"`` when it applies, else ``"functorch"``.

    Returns
    -------
    TaylorTerms
        ``loss (m,)``, ``grad (m, d)``, ``hess (m, d, d)``, float64.

    Raises
    ------
    ValueError
        If the subspace is the full space (``basis is None``), if shapes
        disagree, if ``method`` is unknown, or if a result is not finite.
    NotImplementedError
        For ``method="sequential"`` on a model it does not support; the message
        names the supported layers.

    Notes
    -----
    The sequential route carries ``J_l = dh_l/dtheta`` (``d`` tangents per
    activation) forward through the layers. The second derivatives obey
    ``K_l = (df_l/dh_{l-1}) K_{l-1} + S_l`` with a source ``S_l`` built from
    ``J_{l-1}`` alone (``op(J_k, V_j) + op(J_j, V_k)`` for a weighted layer
    with basis slices ``V_j``, ``sigma''(a) J_j J_k`` for tanh and sigmoid,
    nothing for ReLU and pooling), so with the adjoints
    ``delta_l = d(r^T z)/dh_l`` of one backward pass,
    ``sum_c r_c grad^2 z_c = sum_l <delta_l, S_l>``: no ``d x d``-fold
    tensor of activations is formed. Cost: about ``3 d`` forward passes
    per sample (first derivatives and the adjoint products) plus ``d^2``
    times the layer inputs. Measured with one thread on two heavily shared CPU
    cores (load 8-12): the 784-128-10 MLP with ``m = 8,000`` takes 2.7 s at
    ``d = 10`` and 7-13 s at ``d = 50``; the small CNN takes 3.4 s for
    ``m = 1,000``, ``d = 10`` but about 2.5 minutes for ``m = 8,000``,
    ``d = 50`` (float64 convolutions). The functorch route takes minutes for
    ``d = 50`` on the MLP and for any ``d`` on the CNN.

    Examples
    --------
    >>> from lsutils.projection import random_subspace
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> sub = random_subspace(net, d=2, seed=0)
    >>> X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    >>> y = torch.tensor([0, 1, 2, 0, 1])
    >>> fast = taylor_terms(net, sub, X, y)
    >>> ref = taylor_terms(net, sub, X, y, method="functorch")
    >>> fast.hess.shape, torch.allclose(fast.hess, ref.hess, rtol=1e-10)
    (torch.Size([5, 2, 2]), True)
    """
    check_choice("method", method, METHODS)
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
    origin = origin.to(device)
    net = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    spec = ParamSpec.from_module(net)
    m, d = X.shape[0], basis.shape[0]
    sample = X[:1].detach().to(device=device, dtype=torch.float64)

    steps: list[_Step] | None = None
    if method in ("auto", "sequential"):
        try:
            with torch.no_grad():
                steps = _sequential_plan(net, spec, origin, basis, sample)
        except _Unsupported as err:
            if method == "sequential":
                raise NotImplementedError(
                    f"method='sequential' does not support this model ({err}); it "
                    f"supports {_sequential_names()}. Use method='functorch' or "
                    "'auto'"
                ) from None
            logger.info("taylor terms: sequential route not applicable (%s)", err)
    if steps is not None:
        chosen = "sequential"
        widths = [torch.Size(s.out_shape).numel() for s in steps] + [sample[0].numel()]
        per_sample = 8 * d * (4 * max(widths) + 2 * d)
        chunk = min(chunk_size, max(1, _SEQUENTIAL_BUDGET // per_sample))

        def run(xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return _sequential_chunk(steps, xb, yb)

    else:
        chosen = "functorch"
        functorch_run = _chunk_terms(net, spec, origin, basis)
        width = _widest_activation(net, sample)
        chunk = min(chunk_size, max(1, _MAX_SECOND_ORDER // (d * d * width)))

        def run(xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            with warnings.catch_warnings():
                # torch registers its forward-mode decompositions with
                # torch.jit.script on first use and warns about its own
                # deprecated call; not ours to fix
                warnings.filterwarnings(
                    "ignore", message=".*torch.jit.script.*", category=FutureWarning
                )
                hb, (gb, lb) = functorch_run(xb, yb)
            return lb, gb.T, hb.permute(2, 0, 1)

    losses, grads, hessians = [], [], []
    start = time.perf_counter()
    for lo in tqdm(range(0, m, chunk), desc="taylor terms", disable=not progressbar):
        xb = X[lo : lo + chunk].detach().to(device=device, dtype=torch.float64)
        yb = y[lo : lo + chunk].to(device=device, dtype=torch.int64)
        with torch.no_grad():
            lb, gb, hb = run(xb, yb)
        losses.append(lb)
        grads.append(gb)
        hessians.append(hb)
    hess = torch.cat(hessians)
    terms = TaylorTerms(
        loss=check_finite("per-sample loss at w*", torch.cat(losses)),
        grad=check_finite("projected per-sample gradient", torch.cat(grads)),
        hess=check_finite("projected per-sample Hessian", (hess + hess.mT) / 2),
    )
    logger.info(
        "taylor terms: method=%s, m=%d samples, d=%d, N=%d parameters, chunk=%d, "
        "%.2f s",
        chosen,
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
