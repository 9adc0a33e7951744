r"""Training a network to a minimum ``w*`` and measuring its accuracy.

The analysis of the book expands the empirical loss around a minimum ``w*`` of

.. math::

    L_m(w) = \frac{1}{m} \sum_{i=1}^{m} \ell_i(w),
    \qquad \ell_i(w) = \mathrm{CE}(f_w(x_i), y_i),

(Assumption 1 of chapter 1: the gradient vanishes at ``w*``). :func:`train` finds
an approximate minimum with Adam on shuffled minibatches and reports
``||grad L_m(w*)||`` so the reader can judge how far that assumption holds.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from lsutils._checks import (
    check_finite,
    check_int_range,
    check_labels,
    check_positive_float,
)

__all__ = ["TrainResult", "accuracy", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Summary of one call to :func:`train`.

    Attributes
    ----------
    train_loss
        ``L_m(w*)``, mean cross-entropy on the training set at the end.
    train_accuracy
        Fraction of training samples classified correctly at the end.
    test_accuracy
        Same on the test set, or ``nan`` when none was given.
    grad_norm
        Euclidean norm of the full-batch gradient ``grad L_m(w*)`` at the end.
    epochs
        Number of passes over the training set.
    seconds
        Wall-clock time of the training loop and final evaluation.
    history
        Mean minibatch loss of each epoch.
    """

    train_loss: float
    train_accuracy: float
    test_accuracy: float
    grad_norm: float
    epochs: int
    seconds: float
    history: list[float] = field(default_factory=list)


def _check_xy(X: Tensor, y: Tensor, what: str) -> None:
    """Validate a pair of inputs and integer labels."""
    if X.ndim < 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{what}: expected X of shape (m, ...) and y of shape (m,), got X "
            f"{tuple(X.shape)} and y {tuple(y.shape)}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"{what}: X and y are empty; pass at least one sample")
    if y.dtype != torch.int64:
        raise ValueError(
            f"{what}: y must hold int64 class labels, got {y.dtype}; use y.long()"
        )
    check_finite(f"{what} X", X, hint="clean or re-load the inputs")


def _evaluate(model: nn.Module, X: Tensor, y: Tensor, chunk_size: int) -> Tensor:
    """Return ``(sum of per-sample losses, number correct)`` without gradients."""
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = 0
    for start in range(0, X.shape[0], chunk_size):
        out = model(X[start : start + chunk_size])
        target = y[start : start + chunk_size]
        loss_sum += F.cross_entropy(out, target, reduction="sum").double()
        correct += int((out.argmax(dim=1) == target).sum())
    return torch.stack([loss_sum, torch.tensor(float(correct), dtype=torch.float64)])


def accuracy(model: nn.Module, X: Tensor, y: Tensor, chunk_size: int = 2048) -> float:
    """Return the fraction of samples whose arg-max prediction equals the label.

    The model is evaluated in eval mode under ``torch.no_grad`` in chunks of
    ``chunk_size`` samples; its train/eval mode is restored afterwards.

    Parameters
    ----------
    model
        Classifier returning logits of shape ``(m, K)``.
    X, y
        Inputs ``(m, ...)`` and int64 labels ``(m,)``.
    chunk_size
        Samples per forward pass.

    Returns
    -------
    float
        Accuracy in ``[0, 1]``.

    Examples
    --------
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.eye(2))
    >>> accuracy(model, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    0.5
    """
    _check_xy(X, y, "accuracy")
    chunk_size = check_int_range("chunk_size", chunk_size, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, correct = _evaluate(model, X, y, chunk_size)
    finally:
        model.train(was_training)
    return float(correct) / X.shape[0]


def _full_gradient_norm(model: nn.Module, X: Tensor, y: Tensor, chunk: int) -> float:
    """Return ``||grad L_m(w)||`` accumulated over chunks of the training set."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    m = X.shape[0]
    for start in range(0, m, chunk):
        loss = F.cross_entropy(
            model(X[start : start + chunk]), y[start : start + chunk], reduction="sum"
        )
        grads = torch.autograd.grad(loss / m, params)
        for acc, g in zip(total, grads, strict=True):
            acc += g
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in total)))


def _check_not_diverged(
    train_loss: float,
    initial_loss: float,
    num_classes: int,
    train_accuracy: float,
    grad_norm: float,
    epochs: int,
    lr: float,
) -> None:
    """Raise ``ValueError`` if the final loss shows that training diverged.

    Diverged means a non-finite final ``L_m(w*)``, or one above both the loss
    ``log C`` of guessing the ``C`` classes uniformly and the loss at the
    initial weights: training made the network worse than not training it.
    An imperfect fit (any loss below either) passes.
    """
    uniform = math.log(num_classes)
    if math.isfinite(train_loss) and train_loss <= max(uniform, initial_loss):
        return
    raise ValueError(
        f"training diverged: after {epochs} epochs at lr {lr:g} the training "
        f"loss L_m(w*) is {train_loss:.4g}, above both the loss of guessing the "
        f"{num_classes} classes uniformly (log {num_classes} = {uniform:.4g}) and "
        f"the loss at the initial weights ({initial_loss:.4g}); training accuracy "
        f"{100 * train_accuracy:.1f}%, |grad L_m(w*)| {grad_norm:.3g}. w* is not "
        f"a minimum: lower lr (now {lr:g}; the default is 1e-3) or train fewer "
        "epochs"
    )


def train(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    X_test: Tensor | None = None,
    y_test: Tensor | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progressbar: bool = False,
) -> TrainResult:
    """Train ``model`` in place with Adam on cross-entropy and report the result.

    Each epoch visits the ``m`` training samples once in an order drawn from a
    ``torch.Generator`` seeded with ``seed`` (so equal seeds give bit-identical
    parameters on the same machine), taking an Adam step on the mean loss of
    each minibatch. At the end the model is left in eval mode at ``w*`` and the
    full-batch ``L_m(w*)``, ``||grad L_m(w*)||`` and accuracies are computed.

    Parameters
    ----------
    model
        Classifier returning logits ``(m, K)``; modified in place.
    X, y
        Training inputs ``(m, ...)`` and int64 labels ``(m,)``.
    X_test, y_test
        Optional held-out set for ``test_accuracy``; both or neither.
    epochs
        Passes over the training set.
    batch_size
        Minibatch size (the last minibatch of an epoch may be smaller).
    lr
        Adam step size.
    weight_decay
        L2 penalty of Adam (``0`` for the plain empirical loss).
    seed
        Seed of the minibatch order.
    progressbar
        Show a tqdm bar over epochs.

    Returns
    -------
    TrainResult
        Final loss, accuracies, gradient norm, timing and per-epoch history.

    Raises
    ------
    ValueError
        For inconsistent inputs, labels outside the model's classes, or when
        training diverged: a minibatch loss becomes NaN or infinite, or the final
        ``L_m(w*)`` is not finite or lies above both ``log C`` (uniform guessing
        of the ``C`` classes) and the loss at the initial weights. The message
        gives the losses, accuracy and gradient norm, and says to lower ``lr``.

    Warns
    -----
    UserWarning
        When the last epoch's mean loss is not below the first one's (a step
        size so large that the loss grows, although the final ``L_m(w*)`` is
        still below the divergence limit above).

    Examples
    --------
    >>> from lsutils.models import mlp
    >>> g = torch.Generator().manual_seed(0)
    >>> X, y = torch.randn(64, 1, 4, 4, generator=g), torch.arange(64) % 2
    >>> model = mlp(32, in_shape=(1, 4, 4), num_classes=2)
    >>> res = train(model, X, y, epochs=50, batch_size=16, lr=1e-2)
    >>> res.train_accuracy > 0.9
    True
    """
    _check_xy(X, y, "training set")
    if (X_test is None) != (y_test is None):
        raise ValueError(
            "pass both X_test and y_test for a test accuracy, or neither; got only "
            f"{'X_test' if y_test is None else 'y_test'}"
        )
    if X_test is not None and y_test is not None:
        _check_xy(X_test, y_test, "test set")
    epochs = check_int_range("epochs", epochs, 1)
    batch_size = check_int_range("batch_size", batch_size, 1)
    lr = check_positive_float("lr", lr)
    weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True)
    seed = check_int_range("seed", seed, 0)
    model.eval()  # probe the output size without touching BatchNorm statistics
    with torch.no_grad():
        num_classes = model(X[:1]).shape[-1]
    check_labels(y, num_classes)

    m = X.shape[0]
    chunk = 2048
    with torch.no_grad():
        initial_loss = float(_evaluate(model, X, y, chunk)[0]) / m
    logger.info(
        "training on %d samples (test: %d) for %d epochs, batch %d, lr %g",
        m,
        0 if X_test is None else X_test.shape[0],
        epochs,
        batch_size,
        lr,
    )
    start_time = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    model.train()
    bar = tqdm(
        range(1, epochs + 1), desc="train", unit="epoch", disable=not progressbar
    )
    for epoch in bar:
        perm = torch.randperm(m, generator=gen)
        loss_sum = 0.0
        for start in range(0, m, batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            if not torch.isfinite(loss):
                bar.close()
                raise ValueError(
                    f"training diverged at epoch {epoch}: loss is {loss.item()}; "
                    f"lower lr (now {lr:g}) or check the inputs"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * idx.numel()
        history.append(loss_sum / m)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()

    model.eval()
    grad_norm = _full_gradient_norm(model, X, y, chunk)
    with torch.no_grad():
        loss_total, correct = _evaluate(model, X, y, chunk)
    train_loss = float(loss_total) / m
    train_acc = float(correct) / m
    test_acc = math.nan
    if X_test is not None and y_test is not None:
        test_acc = accuracy(model, X_test, y_test, chunk_size=chunk)
    seconds = time.perf_counter() - start_time
    _check_not_diverged(
        train_loss, initial_loss, num_classes, train_acc, grad_norm, epochs, lr
    )
    if epochs > 1 and not history[-1] < history[0]:
        warnings.warn(
            f"training did not decrease the loss (epoch 1: {history[0]:.4g}, epoch "
            f"{epochs}: {history[-1]:.4g}); w* is not a minimum, lower lr (now "
            f"{lr:g}) or train longer",
            stacklevel=2,
        )
    logger.info(
        "trained in %.1f s: loss %.4f, train accuracy %.4f, test accuracy %.4f, "
        "|grad| %.2e",
        seconds,
        train_loss,
        train_acc,
        test_acc,
        grad_norm,
    )
    return TrainResult(
        train_loss=train_loss,
        train_accuracy=train_acc,
        test_accuracy=test_acc,
        grad_norm=grad_norm,
        epochs=epochs,
        seconds=seconds,
        history=history,
    )
