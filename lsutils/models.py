"""The networks of the study and a check that BackPACK can extend them.

Two classifiers ``f_w : R^{1x28x28} -> R^K`` (book chapter 7): a fully connected
network (:func:`mlp`) and a small convolutional network (:func:`cnn`). Both are
``nn.Sequential`` built only from layers that BackPACK (Dangel, Kunstner, Hennig
2020) supports for the curvature extensions used in chapter 3: ``DiagHessian``,
``DiagGGNExact``, ``SqrtGGNExact`` and ``HMP``.

Initialisation is seeded: the same ``seed`` gives the same weights, and building
a model leaves the global random state untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lsutils._checks import check_choice, check_int_range

__all__ = [
    # constants
    "BACKPACK_LAYERS",
    "MODELS",
    # builders
    "build_model",
    "cnn",
    "mlp",
    # checks
    "check_backpack_extendable",
    "check_params_used",
]

logger = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("mlp", "cnn")
"""Names accepted by :func:`build_model`."""

_COMMON: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.ZeroPad2d,
    nn.Flatten,
    nn.Dropout,
)
# DiagGGNExact and SqrtGGNExact extend the same layer types in BackPACK 1.7.1.
_EXACT_GGN = (
    *_COMMON,
    nn.Conv1d,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.LogSigmoid,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.Identity,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
)
BACKPACK_LAYERS: dict[str, tuple[type[nn.Module], ...]] = {
    "DiagHessian": (
        *_COMMON,
        nn.Conv1d,
        nn.LeakyReLU,
        nn.ELU,
        nn.SELU,
        nn.LogSigmoid,
        nn.MaxPool1d,
        nn.AvgPool1d,
    ),
    "DiagGGNExact": _EXACT_GGN,
    "SqrtGGNExact": _EXACT_GGN,
    "HMP": (*_COMMON, nn.BatchNorm1d),
}
"""Layer types that BackPACK 1.7.1 extends, per extension (a subset of its
registry restricted to layers that make sense in an image classifier; the test
suite checks that every entry is in BackPACK's own registry)."""

_IN_SHAPE_HINT = "in_shape is (channels, height, width), e.g. (1, 28, 28)"


def _check_in_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate a ``(C, H, W)`` input shape."""
    shape = tuple(in_shape)
    if len(shape) != 3:
        raise ValueError(f"{_IN_SHAPE_HINT}; got {in_shape!r}")
    for axis, size in zip(("channels", "height", "width"), shape, strict=True):
        check_int_range(f"in_shape {axis}", size, 1, hint=_IN_SHAPE_HINT)
    return int(shape[0]), int(shape[1]), int(shape[2])


def _seeded(build: Any, seed: int) -> nn.Sequential:
    """Call ``build()`` with PyTorch's default initialisation seeded by ``seed``.

    The global CPU generator is forked, so the caller's random state is restored
    afterwards.
    """
    seed = check_int_range("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mlp(
    hidden: int | Sequence[int] = (128,),
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
) -> nn.Sequential:
    """Build a fully connected ReLU network.

    ``f_w(x) = W_L relu(... relu(W_1 vec(x) + b_1) ...) + b_L`` with
    ``len(hidden)`` hidden layers. With the defaults this is 784-128-10, with
    ``784 * 128 + 128 + 128 * 10 + 10 = 101,770`` parameters.

    Parameters
    ----------
    hidden
        Width of each hidden layer; an ``int`` means one hidden layer, ``()``
        a linear (softmax-regression) model.
    in_shape
        Shape ``(C, H, W)`` of one input.
    num_classes
        Number of outputs ``K``.
    seed
        Seed of the (PyTorch default, Kaiming-uniform) initialisation.

    Returns
    -------
    nn.Sequential
        ``Flatten, [Linear, ReLU] * len(hidden), Linear``, float32.

    Examples
    --------
    >>> model = mlp()
    >>> sum(p.numel() for p in model.parameters())
    101770
    """
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    for i, width in enumerate(widths):
        check_int_range(f"hidden[{i}]", width, 1)
    c, h, w = _check_in_shape(in_shape)
    num_classes = check_int_range("num_classes", num_classes, 2)
    sizes = (c * h * w, *(int(v) for v in widths))

    def build() -> nn.Sequential:
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        return nn.Sequential(*layers)

    return _seeded(build, seed)


def cnn(
    channels: Sequence[int] = (8, 16),
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
) -> nn.Sequential:
    """Build a LeNet-style convolutional network with two conv blocks.

    ``Conv(5x5) -> ReLU -> MaxPool(2)`` twice, then a linear classifier. On a
    28x28 input the feature maps are 24, 12, 8, 4 pixels wide, so the classifier
    sees ``c2 * 4 * 4`` features. With the defaults the network has 5,994
    parameters.

    Parameters
    ----------
    channels
        Output channels ``(c1, c2)`` of the two convolutions.
    in_shape
        Shape ``(C, H, W)`` of one input; ``H, W >= 16``.
    num_classes
        Number of outputs ``K``.
    seed
        Seed of the initialisation.

    Returns
    -------
    nn.Sequential
        Float32 network of BackPACK-supported layers.

    Examples
    --------
    >>> model = cnn()
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    chans = tuple(channels)
    if len(chans) != 2:
        raise ValueError(f"channels must be two widths (c1, c2), got {channels!r}")
    c1 = check_int_range("channels[0]", chans[0], 1)
    c2 = check_int_range("channels[1]", chans[1], 1)
    c, h, w = _check_in_shape(in_shape)
    num_classes = check_int_range("num_classes", num_classes, 2)
    h_out, w_out = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"in_shape {tuple(in_shape)} is too small for two 5x5 convolutions "
            "with 2x2 pooling: height and width must be at least 16"
        )

    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c, c1, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * h_out * w_out, num_classes),
        )

    return _seeded(build, seed)


def build_model(name: str, seed: int = 0, **kwargs: Any) -> nn.Sequential:
    """Build a model of :data:`MODELS` by name.

    Parameters
    ----------
    name
        ``"mlp"`` or ``"cnn"``.
    seed
        Seed of the initialisation.
    **kwargs
        Passed to :func:`mlp` (``hidden``, ``in_shape``, ``num_classes``) or
        :func:`cnn` (``channels``, ``in_shape``, ``num_classes``).

    Returns
    -------
    nn.Sequential
        The network.

    Examples
    --------
    >>> build_model("mlp", hidden=(32,))[1]
    Linear(in_features=784, out_features=32, bias=True)
    """
    check_choice("model", name, MODELS)
    builder = mlp if name == "mlp" else cnn
    allowed = (
        {"hidden", "in_shape", "num_classes"}
        if name == "mlp"
        else {
            "channels",
            "in_shape",
            "num_classes",
        }
    )
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)} for model {name!r}: "
            f"expected some of {', '.join(sorted(allowed))}"
        )
    model = builder(seed=seed, **kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    if next(model.parameters()).device.type != "meta":  # shapes-only copies
        logger.info("built %s with %d parameters (seed %d)", name, n_params, seed)
    return model


def check_backpack_extendable(model: nn.Module, extension: str = "DiagHessian") -> None:
    """Check that BackPACK can apply ``extension`` to ``model``, else raise.

    The model must be an ``nn.Sequential`` (possibly nested) whose leaf layers
    are all in :data:`BACKPACK_LAYERS` for the extension, with no in-place
    activation and no BatchNorm or Dropout in train mode (their output would
    depend on the whole batch or on chance, so ``L_k`` would not be a fixed
    function of ``w``).

    Parameters
    ----------
    model
        The network to check.
    extension
        One of ``"DiagHessian"``, ``"DiagGGNExact"``, ``"SqrtGGNExact"``,
        ``"HMP"``.

    Raises
    ------
    ValueError
        Naming the offending layer, its type, the extension and the supported
        layer types.

    Examples
    --------
    >>> check_backpack_extendable(mlp(), "SqrtGGNExact")  # passes silently
    """
    check_choice("extension", extension, BACKPACK_LAYERS)
    supported = BACKPACK_LAYERS[extension]
    names = ", ".join(t.__name__ for t in supported)
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"BackPACK {extension} needs an nn.Sequential model, got "
            f"{type(model).__name__}; rewrite it as nn.Sequential of the supported "
            f"layers ({names})"
        )
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            continue
        where = f"layer {name!r} ({type(module).__name__})"
        if type(module) not in supported:
            raise ValueError(
                f"{where} is not supported by BackPACK {extension}; supported "
                f"layer types: {names}"
            )
        if getattr(module, "inplace", False):
            raise ValueError(
                f"{where} is in-place, which BackPACK {extension} cannot "
                "backpropagate through; build it with inplace=False"
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.Dropout) and (
            module.training
        ):
            raise ValueError(
                f"{where} is in train mode, so the loss depends on the batch or on "
                f"chance and BackPACK {extension} would not give the Hessian of "
                "L_k; call model.eval() first"
            )


def check_params_used(model: nn.Module, X: Tensor) -> None:
    """Check that every parameter gets a gradient from a forward pass on ``X``.

    Runs the model on the first two samples of ``X`` and differentiates the sum
    of the outputs; a parameter whose gradient is missing (a layer that is
    never called) or that is frozen would break flat-vector code that assumes
    all ``N`` entries of ``w`` enter ``L_k``.

    Parameters
    ----------
    model
        The network.
    X
        Inputs of the shape the model expects, at least one sample.

    Raises
    ------
    ValueError
        Listing the unused or frozen parameters.

    Examples
    --------
    >>> check_params_used(mlp(), torch.zeros(1, 1, 28, 28))  # passes silently
    """
    if X.ndim < 1 or X.shape[0] < 1:
        raise ValueError(f"X must hold at least one sample, got shape {tuple(X.shape)}")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"parameter(s) {', '.join(frozen)} are frozen (requires_grad=False) "
            "and get no gradient; set requires_grad=True or remove them"
        )
    named = list(model.named_parameters())
    if not named:
        raise ValueError("model has no parameters")
    with torch.enable_grad():
        out = model(X[:2])
        grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True)
    unused = [n for (n, _), g in zip(named, grads, strict=True) if g is None]
    if unused:
        raise ValueError(
            f"parameter(s) {', '.join(unused)} receive no gradient from the loss "
            "(their layer is never called in forward); remove them or use them, "
            "since L_k is differentiated with respect to all parameters"
        )
