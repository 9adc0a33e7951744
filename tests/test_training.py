"""Tests of lsutils.training: determinism, accuracy, divergence, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lsutils.data import Dataset, train_test_split
from lsutils.models import mlp
from lsutils.training import TrainResult, accuracy, train


def _small_mlp(seed: int = 0) -> nn.Sequential:
    return mlp(hidden=(32,), seed=seed)


def test_bit_identical_with_same_seed(mnist_small: Dataset) -> None:
    X, y = mnist_small.X, mnist_small.y
    a, b, c = _small_mlp(), _small_mlp(), _small_mlp()
    ra = train(a, X, y, epochs=3, batch_size=32, seed=7)
    rb = train(b, X, y, epochs=3, batch_size=32, seed=7)
    train(c, X, y, epochs=3, batch_size=32, seed=8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert ra.history == rb.history
    # another seed shuffles the minibatches differently
    assert not torch.equal(a[1].weight, c[1].weight)


def test_result_fields(tiny_mlp: nn.Sequential, tiny_mlp_data) -> None:
    X, y = tiny_mlp_data
    res = train(tiny_mlp, X, y, epochs=30, batch_size=4, lr=1e-2)
    assert isinstance(res, TrainResult)
    assert res.epochs == 30 and len(res.history) == 30
    assert math.isnan(res.test_accuracy)
    assert res.history[-1] < res.history[0]
    assert not tiny_mlp.training  # left in eval mode at w*
    # train_loss and grad_norm are those of the full-batch mean loss L_m(w*)
    loss = nn.functional.cross_entropy(tiny_mlp(X), y)
    grads = torch.autograd.grad(loss, list(tiny_mlp.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert res.train_loss == pytest.approx(loss.item(), rel=1e-10)
    assert res.grad_norm == pytest.approx(float(norm), rel=1e-8)
    assert res.train_accuracy == accuracy(tiny_mlp, X, y)


def test_mnist_mlp_reaches_90_percent(mnist_test: Dataset) -> None:
    """MLP 784-128-10, defaults, 2,000 training samples, 1,000 held out."""
    tr, te = train_test_split(mnist_test, n_train=2000, n_test=1000, seed=0)
    res = train(mlp(seed=0), tr.X, tr.y, te.X, te.y)
    assert res.test_accuracy >= 0.90
    assert res.train_accuracy >= res.test_accuracy


def test_divergence_nan() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    with pytest.raises(
        ValueError, match=r"diverged at epoch \d+: loss is nan; lower lr \(now 1e\+30\)"
    ):
        train(_small_mlp(), X, y, epochs=3, lr=1e30)


def _random_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    return X, y


def test_loss_not_decreasing_warns() -> None:
    # lr 0.3: the epoch losses jump from 2.35 to 33 and 23, but the final
    # L_m(w*) = 1.34 is below log 10, so it warns without raising.
    X, y = _random_data()
    with pytest.warns(UserWarning, match="did not decrease the loss.*lower lr"):
        res = train(_small_mlp(), X, y, epochs=3, lr=0.3)
    assert res.train_loss < math.log(10)


@pytest.mark.parametrize("lr", [1.0, 1e6])
def test_divergence_finite_but_huge_loss(lr: float) -> None:
    # The loss grows to 33 (lr 1) or 5e13 (lr 1e6) without becoming NaN: worse
    # than guessing uniformly, so training diverged and w* is no minimum.
    X, y = _random_data()
    with pytest.raises(
        ValueError,
        match=r"training diverged: after 3 epochs at lr \S+ the training loss "
        r"L_m\(w\*\) is \S+, above both the loss of guessing the 10 classes "
        r"uniformly \(log 10 = 2.303\).*\|grad L_m\(w\*\)\| .*lower lr",
    ):
        train(_small_mlp(), X, y, epochs=3, lr=lr)


def test_imperfect_fit_does_not_raise() -> None:
    # A step too small to learn anything leaves L_m(w*) above log 10 (the
    # initial loss is 2.35), but not above the initial loss: no divergence.
    X, y = _random_data()
    res = train(_small_mlp(), X, y, epochs=1, lr=1e-7)
    assert math.log(10) < res.train_loss <= res.history[0] + 1e-3


def test_nan_input() -> None:
    X = torch.zeros(8, 1, 28, 28)
    X[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="training set X has 1 non-finite value"):
        train(_small_mlp(), X, torch.zeros(8, dtype=torch.long), epochs=1)


def test_train_validation(tiny_mlp: nn.Sequential, tiny_mlp_data) -> None:
    X, y = tiny_mlp_data
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        train(tiny_mlp, X, y + 1, epochs=1)
    with pytest.raises(ValueError, match="int64 class labels.*y.long\\(\\)"):
        train(tiny_mlp, X, y.float(), epochs=1)
    with pytest.raises(ValueError, match="X of shape \\(m, ...\\) and y of shape"):
        train(tiny_mlp, X, y[:-1], epochs=1)
    with pytest.raises(ValueError, match="both X_test and y_test.*only X_test"):
        train(tiny_mlp, X, y, X_test=X, epochs=1)
    with pytest.raises(ValueError, match="epochs=0 is out of range"):
        train(tiny_mlp, X, y, epochs=0)
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        train(tiny_mlp, X, y, lr=-1.0)


def test_progressbar(tiny_mlp: nn.Sequential, tiny_mlp_data, capsys) -> None:
    X, y = tiny_mlp_data
    train(tiny_mlp, X, y, epochs=2, progressbar=True)
    assert "train" in capsys.readouterr().err


def test_accuracy_known_value() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))
    X = torch.eye(3)[[0, 1, 2, 2, 1]]  # predicted classes 0, 1, 2, 2, 1
    y = torch.tensor([0, 1, 2, 0, 0])
    model.train()
    assert accuracy(model, X, y) == pytest.approx(3 / 5)
    assert accuracy(model, X, y, chunk_size=2) == pytest.approx(3 / 5)
    assert model.training  # mode restored


def test_accuracy_eval_mode_and_chunks(mnist_small: Dataset) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(784, 10))
    a = accuracy(model, mnist_small.X, mnist_small.y, chunk_size=50)
    b = accuracy(model, mnist_small.X, mnist_small.y)
    assert a == b  # dropout is off in eval mode, chunks do not matter
    with pytest.raises(ValueError, match="chunk_size=0 is out of range"):
        accuracy(model, mnist_small.X, mnist_small.y, chunk_size=0)


def test_initial_loss_leaves_batchnorm_statistics_alone() -> None:
    torch.manual_seed(0)
    X, y = torch.randn(64, 1, 4, 4) * 3 + 5, torch.arange(64) % 3
    bn = nn.BatchNorm1d(16)
    model = nn.Sequential(nn.Flatten(), bn, nn.Linear(16, 3))
    train(model, X, y, epochs=1, batch_size=64, lr=1e-9, seed=0)
    # one training batch updates the statistics once; the passes that measure
    # the initial and final loss run in eval mode and must not
    assert int(bn.num_batches_tracked) == 1
