r"""The ``S x m`` matrix of per-sample losses at points of a subspace.

Monte Carlo estimates of ``Delta_k`` (book chapter 6) and the landscape pictures
of chapter 4 (:mod:`lsutils.landscape`) need, for ``S`` points ``theta_s`` and
``m`` samples ``(x_i, y_i)``, the per-sample cross-entropy

.. math::

    \ell_{s i} = \ell_i\bigl(w^* + P^\top \theta_s\bigr),
    \qquad s = 1..S, \; i = 1..m.

Cumulative means of a row then give ``L_k(theta_s)`` for every ``k`` at once, so
the cost is ``O(S m)`` forward evaluations. :func:`loss_matrix` offers three
methods that compute the same matrix:

``"loop"``
    For each point: load its parameters into the network, then forward the data
    in batches of 128. The pattern of loss-landscape tools; the reference.
``"vmap"``
    :func:`torch.func.functional_call` vectorised with :func:`torch.vmap` over
    chunks of points, on chunks of samples. Works for any model and for the
    full-space sampler.
``"fast"``
    Uses the subspace structure of ``nn.Sequential`` networks built from
    ``Linear`` / ``Conv2d`` layers and parameter-free layers. A layer that is
    linear in its weights sees ``W(theta) = W^* + sum_j theta_j V_j`` with ``V_j``
    its slice of basis row ``j``. For the *first* such layer the input ``a`` is the
    fixed data, hence

    .. math::

        a W(\theta)^\top + b(\theta)
        = \underbrace{a W^{*\top} + b^*}_{\text{once}}
        + \sum_{j=1}^d \theta_j
          \underbrace{\bigl(a V_j^\top + c_j\bigr)}_{\text{once}},

    so its ``S`` outputs cost a rank-``d`` update instead of ``S`` products with
    the ``in``-dimensional input (``d = 10`` against ``in = 784`` for MNIST).
    Later layers form the ``S`` weight tensors ``W(theta_s)`` (cheap:
    ``S x out x in``) and apply them with one batched matrix product
    (``Linear``) or one grouped convolution with ``groups = S`` (``Conv2d``).
    The alternative ``a W^{*T} + sum_j theta_j (a V_j^T)`` for later layers costs
    ``d + 1`` products instead of one and was about six times slower on the
    output layer of the MNIST MLP.

    The work is split into blocks of points and samples whose largest activation
    takes about 4 MiB per intra-op thread, so that a block stays in cache from
    one layer to the next; the first-layer terms of a chunk of samples are kept
    in memory (half of ``memory_budget`` at most). Non-overlapping max pooling is
    computed as the maximum of strided views, with the same values as
    :class:`torch.nn.MaxPool2d` but an order of magnitude faster on CPU for the
    study's small feature maps.

All methods work in ``dtype`` (float32 by default) and return float64.

Known limitation: the fast path issues many small operations; with several
intra-op threads on an oversubscribed machine (more busy threads than cores) the
threads of each operation wait for each other and it can become several times
slower, more than the per-point methods do. One thread per process avoids this.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from lsutils._checks import (
    check_choice,
    check_finite,
    check_positive_float,
)
from lsutils.params import ParamSpec
from lsutils.projection import Subspace

__all__ = [
    # the S x m matrix
    "METHODS",
    "SUPPORTED_LAYERS",
    "PARAMETER_FREE_LAYERS",
    "loss_matrix",
]

logger = logging.getLogger(__name__)

METHODS = ("auto", "fast", "vmap", "loop")

#: Layers with weights that the ``"fast"`` method handles (linear in the weights).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

#: Layers without parameters that act on each sample separately.
PARAMETER_FREE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)

#: Batch size of the ``"loop"`` reference (the loss-landscape tool pattern).
LOOP_BATCH = 128

_DTYPES = (torch.float32, torch.float64)
_NAN_HINT = (
    "the loss is NaN/inf at some parameter points: lower sigma or check the model"
)


def _supported_names() -> str:
    names = [c.__name__ for c in SUPPORTED_LAYERS + PARAMETER_FREE_LAYERS]
    return "nn.Sequential of " + ", ".join(names)


class _Unsupported(Exception):
    """The fast path cannot handle this model; the message says why."""


# --------------------------------------------------------------------------
# The fast path: a plan of layers with their subspace slices
# --------------------------------------------------------------------------
#
# Activations of a block of S_b points and m_b samples are kept in one of two
# layouts: "ms" = (m_b, S_b, *features), the batch layout that convolutions
# (grouped over the points) and pooling want, and "sfm" = (S_b, F, m_b) with 1-D
# features, so that a Linear layer is one batched product W(theta_s) @ a_s whose
# long dimension is the samples (about twice as fast as a_s @ W(theta_s)^T for
# the narrow output layer). Elementwise layers work in either layout.

#: Parameter-free layers that act elementwise (any layout).
_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
)


@dataclass
class _Layer:
    """One leaf module; weighted layers carry ``[W*; V_1; ...; V_d]`` flattened.

    ``w_aug`` has shape ``(d + 1, numel(W))`` (row 0 is ``W*``), so that the
    weights at a point are ``[1, theta] @ w_aug``; likewise ``b_aug``.
    """

    module: nn.Module
    kind: str  # "linear" | "conv" | "free"
    in_shape: tuple[int, ...]  # per-sample input shape
    out_shape: tuple[int, ...]  # per-sample output shape
    w_aug: Tensor | None = None
    b_aug: Tensor | None = None

    @property
    def in_numel(self) -> int:
        return int(torch.Size(self.in_shape).numel())

    @property
    def out_numel(self) -> int:
        return int(torch.Size(self.out_shape).numel())

    @property
    def layout(self) -> str:
        """Layout of this layer's output (and, for weighted layers, its input)."""
        return "ms" if self.kind == "conv" else "sfm"

    def weights(self, theta_aug: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-point ``W* + sum_j theta_sj V_j`` of shape ``(S, *W.shape)``."""
        shape = self.module.weight.shape
        w = (theta_aug @ self.w_aug).view(len(theta_aug), *shape)
        b = None if self.b_aug is None else theta_aug @ self.b_aug
        return w, b


@dataclass
class _Plan:
    pre: list[_Layer]  # parameter-free layers before the first weighted layer
    first: _Layer
    rest: list[_Layer]
    d: int


def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _build_plan(
    model: nn.Module,
    subspace: Subspace,
    sample: Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> _Plan:
    """Split ``model`` into layers and slice ``w*`` and ``P`` per layer.

    Raises ``_Unsupported`` (with the reason) when the fast path does not apply.
    """
    if subspace.basis is None:
        raise _Unsupported("the full space has no low-dimensional basis")
    if not isinstance(model, nn.Sequential):
        raise _Unsupported(f"the model is a {type(model).__name__}")
    spec = ParamSpec.from_module(model)
    starts = accumulate(spec.numels[:-1], initial=0)
    offsets = dict(zip(spec.names, starts, strict=True))
    origin = subspace.origin.to(device=device, dtype=dtype)
    basis = subspace.basis.to(device=device, dtype=dtype)
    d = basis.shape[0]

    def augmented(name: str, p: Tensor | None) -> Tensor | None:
        """``[w*; V_1; ...; V_d]`` of one parameter, shape ``(d + 1, numel)``."""
        if p is None:
            return None
        out = torch.zeros(d + 1, p.numel(), device=device, dtype=dtype)
        if name in offsets:
            a = offsets[name]
            out[0] = origin[a : a + p.numel()]
            out[1:] = basis[:, a : a + p.numel()]
        else:  # frozen parameter: a constant, no direction moves it
            out[0] = p.detach().reshape(-1).to(device=device, dtype=dtype)
        return out

    layers: list[_Layer] = []
    x = sample.to(device=device, dtype=dtype)
    with torch.inference_mode():
        for name, mod in _leaves(model):
            in_shape = tuple(x.shape[1:])
            if isinstance(mod, SUPPORTED_LAYERS):
                if isinstance(mod, nn.Conv2d) and mod.padding_mode != "zeros":
                    raise _Unsupported(
                        f"layer {name} uses padding_mode={mod.padding_mode!r}"
                    )
                if isinstance(mod, nn.Linear) and len(in_shape) != 1:
                    raise _Unsupported(
                        f"layer {name} is a Linear layer on inputs of shape "
                        f"{in_shape}; flatten them first"
                    )
                kind = "linear" if isinstance(mod, nn.Linear) else "conv"
                layer = _Layer(mod, kind, in_shape, ())
                layer.w_aug = augmented(f"{name}.weight", mod.weight)
                layer.b_aug = augmented(f"{name}.bias", mod.bias)
                w, b = layer.weights(torch.eye(1, d + 1, device=device, dtype=dtype))
                x = _apply(layer, x, w[0], None if b is None else b[0])
            elif isinstance(mod, PARAMETER_FREE_LAYERS):
                if isinstance(mod, nn.Flatten) and not _keeps_batch(mod):
                    raise _Unsupported(f"layer {name} flattens the batch dimension")
                if isinstance(mod, nn.MaxPool2d) and mod.return_indices:
                    raise _Unsupported(f"layer {name} returns pooling indices")
                layer = _Layer(mod, "free", in_shape, ())
                x = _free(mod, x, inplace=False)
            else:
                has = "with" if any(True for _ in mod.parameters()) else "without"
                raise _Unsupported(
                    f"layer {name} ({type(mod).__name__}, {has} parameters) "
                    "is not supported"
                )
            layer.out_shape = tuple(x.shape[1:])
            layers.append(layer)
    weighted = [i for i, layer in enumerate(layers) if layer.kind != "free"]
    if not weighted:
        raise _Unsupported("the model has no Linear or Conv2d layer")
    if len(layers[-1].out_shape) != 1:
        raise _Unsupported(f"the output per sample has shape {layers[-1].out_shape}")
    i0 = weighted[0]
    return _Plan(layers[:i0], layers[i0], layers[i0 + 1 :], d)


def _keeps_batch(mod: nn.Flatten) -> bool:
    return mod.start_dim >= 1 and (mod.end_dim == -1 or mod.end_dim >= mod.start_dim)


def _free(mod: nn.Module, x: Tensor, inplace: bool = True) -> Tensor:
    """Apply a parameter-free layer; ``inplace`` only if this code owns ``x``."""
    if isinstance(mod, nn.ReLU):
        return x.relu_() if inplace else torch.relu(x)
    if isinstance(mod, nn.Dropout | nn.Identity):  # dropout is off at evaluation
        return x
    if isinstance(mod, nn.MaxPool2d):
        return _max_pool(mod, x)
    return mod(x)


def _max_pool(mod: nn.MaxPool2d, x: Tensor) -> Tensor:
    """Non-overlapping max pooling as a maximum over ``k_h k_w`` strided views.

    Same values as ``mod(x)`` (NaN propagates as in :func:`torch.maximum`), and
    an order of magnitude faster on CPU for the small feature maps of the
    study; other pooling configurations fall back to ``mod(x)``.
    """
    kh, kw = _pair(mod.kernel_size)
    stride = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
    plain = (
        stride == (kh, kw)
        and _pair(mod.padding) == (0, 0)
        and _pair(mod.dilation) == (1, 1)
        and not mod.ceil_mode
        and not mod.return_indices
        and x.dim() >= 3
    )
    if not plain:
        return mod(x)
    oh, ow = x.shape[-2] // kh, x.shape[-1] // kw
    x = x[..., : oh * kh, : ow * kw]
    views = [x[..., i::kh, j::kw] for i in range(kh) for j in range(kw)]
    if len(views) == 1:
        return views[0].clone()
    out = torch.maximum(views[0], views[1])
    for v in views[2:]:
        torch.maximum(out, v, out=out)
    return out


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _apply(layer: _Layer, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Forward a batch ``x`` through a weighted layer with weights ``w``, ``b``."""
    mod = layer.module
    if layer.kind == "linear":
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)


def _first_terms(plan: _Plan, x: Tensor, block: int) -> list[Tensor]:
    """Output of layer one at ``W*`` and along each ``V_j``, split into blocks.

    For the inputs ``a`` (the data after any parameter-free front layers) the
    terms are ``a W*^T + b*`` and ``a V_j^T + c_j``, ``j = 1..d``. Each block of
    ``block`` samples is returned as ``(d + 1, F * m_b)`` for a ``Linear``
    first layer (``"sfm"`` layout after the product with ``[1, theta]``) and as
    ``(m_b, d + 1, F)`` for a ``Conv2d`` first layer (``"ms"`` layout).
    """
    layer, d = plan.first, plan.d
    for pre in plan.pre:  # not in place: x may be the caller's data
        x = _free(pre.module, x, inplace=False)
    m, shape = x.shape[0], layer.module.weight.shape
    w_aug = layer.w_aug.view(d + 1, *shape)
    b_aug = layer.b_aug
    if layer.kind == "conv" and layer.module.groups > 1:
        # stacking the directions as output channels would mix the groups
        terms = torch.stack(
            [
                _apply(layer, x, w_aug[j], None if b_aug is None else b_aug[j])
                for j in range(d + 1)
            ],
            dim=1,
        ).reshape(m, d + 1, -1)
    else:
        stacked_w = w_aug.reshape((d + 1) * shape[0], *shape[1:])
        stacked_b = None if b_aug is None else b_aug.reshape(-1)
        terms = _apply(layer, x, stacked_w, stacked_b).reshape(m, d + 1, -1)
    blocks = terms.split(block)
    if layer.layout == "ms":
        return list(blocks)
    return [t.permute(1, 2, 0).reshape(d + 1, -1) for t in blocks]


def _to_layout(act: Tensor, layout: str, target: str) -> Tensor:
    """Convert between ``(m, S, F)`` ("ms", 1-D features) and ``(S, F, m)``."""
    if layout == target:
        return act
    if target == "sfm":
        return act.permute(1, 2, 0).contiguous()
    return act.permute(2, 0, 1).contiguous()


def _fast_block(
    plan: _Plan,
    term: Tensor,
    theta_aug: Tensor,
    weights: list[tuple[Tensor, Tensor | None] | None],
    y: Tensor,
) -> Tensor:
    """Per-sample losses ``(S_b, m_b)`` for one block of points and samples."""
    s = theta_aug.shape[0]
    if plan.first.layout == "sfm":  # (S_b, F, m_b)
        act = (theta_aug @ term).view(s, plan.first.out_numel, -1)
    else:  # (m_b, S_b, *features)
        act = torch.matmul(theta_aug, term).view(-1, s, *plan.first.out_shape)
    layout = plan.first.layout
    for layer, wb in zip(plan.rest, weights, strict=True):
        if wb is None:
            if isinstance(layer.module, _ELEMENTWISE):
                act = _free(layer.module, act)
            elif layout == "sfm" and isinstance(layer.module, nn.Flatten):
                pass  # features are already one-dimensional
            else:
                act = _to_layout(act, layout, "ms")
                layout = "ms"
                lead = act.shape[:2]
                act = _free(layer.module, act.flatten(0, 1)).unflatten(0, lead)
            continue
        act = _to_layout(act, layout, layer.layout)
        layout = layer.layout
        act = _weighted_forward(layer, act, *wb)
    return _cross_entropy(act, y, layout)


def _weighted_forward(
    layer: _Layer, act: Tensor, w: Tensor, b: Tensor | None
) -> Tensor:
    """Apply a later weighted layer with per-point weights ``w`` and ``b``.

    ``Linear``: ``(S, in, m) -> (S, out, m)`` by ``W(theta_s) @ a_s``.
    ``Conv2d``: ``(m, S, C, H, W) -> (m, S, C', H', W')`` by one convolution with
    ``groups = S`` (the points stacked along the channels).
    """
    if layer.kind == "linear":
        if b is None:
            return torch.bmm(w, act)
        return torch.baddbmm(b.unsqueeze(2), w, act)
    # Known limitation: a later convolution costs about as much per (point,
    # sample) as in a per-point forward (measured: grouped, channels-last and
    # per-point loops are all within 30%); the CNN gains in layer one and pooling.
    mod, s, m = layer.module, w.shape[0], act.shape[0]
    out = F.conv2d(
        act.reshape(m, -1, *act.shape[3:]),
        w.reshape(-1, *w.shape[2:]),
        None if b is None else b.reshape(-1),
        mod.stride,
        mod.padding,
        mod.dilation,
        mod.groups * s,
    )
    return out.view(m, s, -1, *out.shape[2:])


def _cross_entropy(logits: Tensor, y: Tensor, layout: str) -> Tensor:
    """Cross-entropy per (point, sample) from logits ``z``, shape ``(S, m)``.

    Computed as ``(max_j z_j - z_y) + log sum_j exp(z_j - max_j z_j)``: for a
    confidently classified sample the first term is exactly zero, so the small
    loss keeps its relative accuracy (``logsumexp(z) - z_y`` would lose it to the
    rounding of the large logits), as in
    :func:`torch.nn.functional.cross_entropy`, which this replaces because it is
    several times faster on the small blocks used here.
    """
    if layout == "ms":  # (m, S, K)
        logits = logits.permute(1, 2, 0)
    s, m = logits.shape[0], logits.shape[2]
    top = logits.amax(1, keepdim=True)
    target = logits.gather(1, y.view(1, 1, m).expand(s, 1, m))
    log_sum = (logits - top).exp_().sum(1, keepdim=True).log_()
    return ((top - target) + log_sum).squeeze(1)


@dataclass(frozen=True)
class _FastChunks:
    samples: int  # samples whose first-layer terms are held at once
    block_points: int  # points per block
    block_samples: int  # samples per block

    def n_updates(self, S: int, m: int) -> int:
        return -(-m // self.samples) * -(-S // self.block_points)


#: Target bytes per thread of the largest activation of one block of the fast
#: path: small enough to stay in cache between the layers of a block, large
#: enough that the threads of each operation are worth starting (measured on
#: the MNIST MLP of the benchmark).
# Known limitation: many small operations per block; with several threads on an
# oversubscribed machine each one waits for the slowest thread (module docstring).
_BLOCK_BYTES = 4 * 2**20
#: Largest number of points per block of the fast path.
_BLOCK_POINTS = 128


def _fast_chunks(
    plan: _Plan, S: int, m: int, itemsize: int, budget: int
) -> _FastChunks:
    """Chunk sizes of the fast path with estimated extra memory within ``budget``.

    Half the budget may hold the first-layer terms of a chunk of samples
    (``(d + 1) F`` values per sample, twice while they are split into blocks);
    a block of points and samples is sized for the cache and kept under a
    quarter of the budget, as are the per-point weights.
    """
    d, f1 = plan.d, plan.first.out_numel
    front = max((layer.in_numel + layer.out_numel for layer in plan.pre), default=0)
    per_sample = itemsize * (plan.first.in_numel + front + 2 * (d + 1) * f1)
    samples = min(m, max(1, budget // (2 * per_sample)))
    acts = [plan.first.out_numel] + [layer.out_numel for layer in plan.rest]
    target = _BLOCK_BYTES * torch.get_num_threads()
    pairs = max(1, min(target, budget // 4) // (itemsize * max(acts)))
    per_point = itemsize * sum(
        layer.w_aug.shape[1] + (0 if layer.b_aug is None else layer.b_aug.shape[1])
        for layer in plan.rest
        if layer.w_aug is not None
    )
    points = min(S, _BLOCK_POINTS, pairs, max(1, budget // (4 * per_point + 1)))
    block_samples = min(samples, max(1, pairs // points))
    return _FastChunks(int(samples), int(points), int(block_samples))


def _fast_losses(
    plan: _Plan,
    theta: Tensor,
    X: Tensor,
    y: Tensor,
    chunks: _FastChunks,
    bar: tqdm | None,
) -> Tensor:
    S, m = theta.shape[0], X.shape[0]
    theta_aug = torch.cat([torch.ones_like(theta[:, :1]), theta], dim=1)
    out = torch.empty(S, m, dtype=torch.float64)
    mb = chunks.block_samples
    # samples outside: the first-layer terms of a sample chunk are computed once,
    # the per-point weights once per chunk of points, then cache-sized blocks
    for m0 in range(0, m, chunks.samples):
        xs, ys = X[m0 : m0 + chunks.samples], y[m0 : m0 + chunks.samples]
        terms = _first_terms(plan, xs, mb)
        for s0 in range(0, S, chunks.block_points):
            th = theta_aug[s0 : s0 + chunks.block_points]
            weights = [
                None if layer.kind == "free" else layer.weights(th)
                for layer in plan.rest
            ]
            for i, term in enumerate(terms):
                block = _fast_block(plan, term, th, weights, ys[i * mb : (i + 1) * mb])
                cols = slice(m0 + i * mb, m0 + i * mb + block.shape[1])
                out[s0 : s0 + len(th), cols] = block
            if bar is not None:
                bar.update(1)
    return out


# --------------------------------------------------------------------------
# The generic paths
# --------------------------------------------------------------------------


def _activation_numels(model: nn.Module, sample: Tensor) -> list[int]:
    """Per-sample output sizes of every leaf module, in call order."""
    sizes: list[int] = []

    def hook(_mod: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, Tensor):
            sizes.append(out[0].numel())

    handles = [
        mod.register_forward_hook(hook)
        for mod in model.modules()
        if next(mod.children(), None) is None
    ]
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return sizes


def _vmap_losses(
    model: nn.Module,
    subspace: Subspace,
    theta: Tensor,
    X: Tensor,
    y: Tensor,
    chunks: tuple[int, int],
    dtype: torch.dtype,
    bar: tqdm | None,
) -> Tensor:
    spec = ParamSpec.from_module(model)

    def forward(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(model, params, (x,))

    batched = torch.vmap(forward, in_dims=(0, None))
    S, m = theta.shape[0], X.shape[0]
    s_c, m_c = chunks
    out = torch.empty(S, m, dtype=torch.float64)
    for s0 in range(0, S, s_c):
        w = subspace.to_params(theta[s0 : s0 + s_c]).to(device=X.device, dtype=dtype)
        params = spec.unflatten(w)
        n = w.shape[0]
        for m0 in range(0, m, m_c):
            logits = batched(params, X[m0 : m0 + m_c])
            k = logits.shape[1]
            yc = y[m0 : m0 + m_c]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), yc.repeat(n), reduction="none"
            )
            out[s0 : s0 + n, m0 : m0 + k] = loss.view(n, k).to("cpu", torch.float64)
            if bar is not None:
                bar.update(1)
    return out


def _loop_losses(
    model: nn.Module,
    subspace: Subspace,
    theta: Tensor,
    X: Tensor,
    y: Tensor,
    dtype: torch.dtype,
    bar: tqdm | None,
) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    S, m = theta.shape[0], X.shape[0]
    out = torch.empty(S, m, dtype=torch.float64)
    for s in range(S):
        w = subspace.to_params(theta[s : s + 1])[0].to(device=X.device, dtype=dtype)
        for p, chunk in zip(params, w.split([p.numel() for p in params]), strict=True):
            p.copy_(chunk.view_as(p))
        for b0 in range(0, m, LOOP_BATCH):
            logits = model(X[b0 : b0 + LOOP_BATCH])
            loss = F.cross_entropy(logits, y[b0 : b0 + LOOP_BATCH], reduction="none")
            out[s, b0 : b0 + LOOP_BATCH] = loss.to("cpu", torch.float64)
        if bar is not None:
            bar.update(1)
    return out


def _vmap_chunks(
    model: nn.Module, X: Tensor, S: int, itemsize: int, n_params: int, budget: int
) -> tuple[int, int]:
    """Chunk sizes ``(S_c, m_c)`` of the vmap path within ``budget``.

    A (point, sample) pair needs about twice the largest input plus output of a
    layer; a point its ``N`` parameters (twice: flat and unflattened). Chunks
    of samples take at most half of the budget for one point.
    """
    sizes = _activation_numels(model, X[:1])
    pairs = zip(sizes, sizes[1:] + [0], strict=True)
    per_pair = 2 * itemsize * max(a + b for a, b in pairs)
    per_point = 2 * itemsize * n_params
    m_c = min(len(X), max(1, budget // (2 * per_pair)))
    s_c = min(S, max(1, budget // (m_c * per_pair + per_point)))
    return int(s_c), int(m_c)


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def _check_inputs(
    model: nn.Module, subspace: Subspace, theta: Tensor, X: Tensor, y: Tensor
) -> None:
    if not isinstance(subspace, Subspace):
        raise ValueError(
            f"subspace must be an lsutils.projection.Subspace, got "
            f"{type(subspace).__name__}"
        )
    n = ParamSpec.from_module(model).num_params
    if subspace.num_params != n:
        raise ValueError(
            f"the subspace lives in R^{subspace.num_params} but the model has "
            f"N={n} trainable parameters: build the subspace from this model"
        )
    d = subspace.dim
    if not isinstance(theta, Tensor) or theta.dim() != 2 or theta.shape[1] != d:
        got = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta)
        raise ValueError(
            f"theta must have shape (S, d) with d = subspace.dim = {d} "
            f"({subspace.kind} subspace), got {got}"
        )
    if theta.shape[0] == 0:
        raise ValueError("theta has no rows: pass at least one point (S >= 1)")
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise ValueError("X and y must be tensors")
    if X.dim() < 2 or len(X) == 0:
        raise ValueError(
            f"X must be a batch (m, ...) with m >= 1, got {tuple(X.shape)}"
        )
    if y.shape != (len(X),):
        raise ValueError(
            f"y must have shape (m,) = ({len(X)},) to match X, got {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")


def loss_matrix(
    model: nn.Module,
    subspace: Subspace,
    theta: Tensor,
    X: Tensor,
    y: Tensor,
    method: str = "auto",
    dtype: torch.dtype = torch.float32,
    memory_budget: int = 2 * 2**30,
    device: str | torch.device | None = None,
    progressbar: bool = False,
) -> Tensor:
    r"""Per-sample cross-entropy at ``S`` points of a subspace, shape ``(S, m)``.

    .. math::

        \text{out}[s, i] = \ell_i\bigl(w^* + P^\top \theta_s\bigr)
        = -\log \operatorname{softmax}\bigl(f_{w^* + P^\top\theta_s}(x_i)\bigr)_{y_i}

    Rows follow the points ``theta``, columns the samples in the given order, so
    ``out[:, :k].mean(1)`` is ``L_k(theta_s)``. The model's own parameters are not
    used: the centre is ``subspace.origin``. The model is evaluated in eval mode
    (dropout off).

    Parameters
    ----------
    model
        The network (not modified; a copy is evaluated).
    subspace
        The subspace; ``subspace.origin`` is ``w*``.
    theta
        Coordinates of the points, shape ``(S, d)`` with ``d = subspace.dim``
        (``d = N`` for the full space).
    X, y
        Inputs ``(m, ...)`` and integer labels ``(m,)``.
    method
        ``"fast"`` (subspace trick, ``nn.Sequential`` of :data:`SUPPORTED_LAYERS`
        and :data:`PARAMETER_FREE_LAYERS`), ``"vmap"`` (any model, full space),
        ``"loop"`` (reference: one point at a time, batches of 128) or
        ``"auto"`` (``"fast"`` when it applies, else ``"vmap"``).
    dtype
        ``torch.float32`` or ``torch.float64``; all computation happens in it.
    memory_budget
        Bytes of extra memory the chunks of points and samples may take
        (an estimate from the layer sizes; the data and the model come on top).
    device
        Where to compute (default: the device of ``X``).
    progressbar
        Show a tqdm bar over the chunks.

    Returns
    -------
    Tensor
        Float64 ``(S, m)`` on the CPU.

    Raises
    ------
    ValueError
        On inconsistent shapes, or when a loss is NaN or infinite.
    NotImplementedError
        For ``method="fast"`` on a model it does not support; the message names
        the supported layers.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from lsutils.projection import random_subspace
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> sub = random_subspace(net, d=2, seed=0)
    >>> X, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    >>> theta = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    >>> fast = loss_matrix(net, sub, theta, X, y, dtype=torch.float64)
    >>> loop = loss_matrix(net, sub, theta, X, y, method="loop", dtype=torch.float64)
    >>> fast.shape, torch.allclose(fast, loop)
    (torch.Size([6, 5]), True)
    """
    check_choice("method", method, METHODS)
    check_choice("dtype", dtype, _DTYPES)
    check_positive_float("memory_budget", memory_budget)
    budget = int(memory_budget)
    _check_inputs(model, subspace, theta, X, y)
    dev = X.device if device is None else torch.device(device)
    t0 = time.perf_counter()
    net = copy.deepcopy(model).to(device=dev, dtype=dtype).eval()
    Xd = X.to(device=dev, dtype=dtype)
    yd = y.to(device=dev, dtype=torch.int64)
    S, m = theta.shape[0], len(X)
    itemsize = torch.empty((), dtype=dtype).element_size()

    plan: _Plan | None = None
    if method in ("auto", "fast"):
        try:
            plan = _build_plan(net, subspace, Xd[:1], dtype, dev)
        except _Unsupported as err:
            if method == "fast":
                raise NotImplementedError(
                    f"method='fast' does not support this model ({err}); it "
                    f"supports {_supported_names()}. Use method='vmap' or 'auto'"
                ) from None
            logger.info("fast path not applicable (%s): using vmap", err)
    chosen = "fast" if plan is not None else ("vmap" if method == "auto" else method)

    if chosen == "fast":
        fast_chunks = _fast_chunks(plan, S, m, itemsize, budget)
        n_blocks = fast_chunks.n_updates(S, m)
        sizes = (
            f"blocks of {fast_chunks.block_points} points x "
            f"{fast_chunks.block_samples} samples, first-layer terms of "
            f"{fast_chunks.samples} samples at a time"
        )
    elif chosen == "vmap":
        chunks = _vmap_chunks(net, Xd, S, itemsize, subspace.num_params, budget)
        n_blocks = -(-S // chunks[0]) * -(-m // chunks[1])
        sizes = f"chunks of {chunks[0]} points x {chunks[1]} samples"
    else:
        n_blocks = S
        sizes = f"one point at a time, batches of {LOOP_BATCH} samples"
    logger.info(
        "loss matrix: S=%d points x m=%d samples, method=%s, %s, dtype=%s, device=%s",
        S,
        m,
        chosen,
        sizes,
        dtype,
        dev,
    )
    bar = tqdm(total=n_blocks, desc=f"loss matrix ({chosen})") if progressbar else None
    try:
        with torch.inference_mode():
            if chosen == "fast":
                th = theta.detach().to(device=dev, dtype=dtype)
                out = _fast_losses(plan, th, Xd, yd, fast_chunks, bar)
            elif chosen == "vmap":
                out = _vmap_losses(net, subspace, theta, Xd, yd, chunks, dtype, bar)
            else:
                out = _loop_losses(net, subspace, theta, Xd, yd, dtype, bar)
    finally:
        if bar is not None:
            bar.close()
    logger.info("loss matrix done in %.2f s", time.perf_counter() - t0)
    return check_finite("per-sample loss matrix", out, hint=_NAN_HINT)
