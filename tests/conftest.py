"""Shared pytest fixtures: tiny float64 networks and data, and small MNIST sets.

Fixtures
--------
tiny_mlp
    ``mlp(hidden=(6,), in_shape=(1, 4, 4), num_classes=3, seed=0)`` in float64:
    16-6-3, 123 parameters; small enough for a dense ``(N, N)`` Hessian.
tiny_cnn
    ``cnn(channels=(2, 3), in_shape=(1, 16, 16), num_classes=3, seed=0)`` in
    float64: 217 parameters.
tiny_mlp_data, tiny_cnn_data
    ``(X, y)`` for the two tiny networks: 12 standard-normal float64 inputs of
    shape ``(1, 4, 4)`` resp. ``(1, 16, 16)`` and labels ``0..2`` (seeded, every
    class present).
mnist_test
    The embedded MNIST test split, 10,000 samples (session-scoped, read-only:
    do not modify its tensors in place).
mnist_small
    Its first 256 samples, float32, for quick training or curvature tests.

The model fixtures are function-scoped, so a test may train or perturb them.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lsutils.data import Dataset, load_dataset
from lsutils.models import cnn, mlp

TINY_CLASSES = 3
TINY_SAMPLES = 12


def _tiny_data(shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(TINY_SAMPLES, *shape, generator=gen, dtype=torch.float64)
    y = torch.arange(TINY_SAMPLES) % TINY_CLASSES
    return X, y[torch.randperm(TINY_SAMPLES, generator=gen)]


@pytest.fixture
def tiny_mlp() -> nn.Sequential:
    """Float64 MLP 16-6-3 (123 parameters)."""
    return mlp(hidden=(6,), in_shape=(1, 4, 4), num_classes=TINY_CLASSES).double()


@pytest.fixture
def tiny_cnn() -> nn.Sequential:
    """Float64 CNN with channels (2, 3) on 16x16 inputs (217 parameters)."""
    return cnn(channels=(2, 3), in_shape=(1, 16, 16), num_classes=TINY_CLASSES).double()


@pytest.fixture
def tiny_mlp_data() -> tuple[Tensor, Tensor]:
    """Inputs (12, 1, 4, 4) float64 and labels (12,) in 0..2 for ``tiny_mlp``."""
    return _tiny_data((1, 4, 4), seed=0)


@pytest.fixture
def tiny_cnn_data() -> tuple[Tensor, Tensor]:
    """Inputs (12, 1, 16, 16) float64 and labels (12,) in 0..2 for ``tiny_cnn``."""
    return _tiny_data((1, 16, 16), seed=1)


@pytest.fixture(scope="session")
def mnist_test() -> Dataset:
    """The embedded MNIST test split (10,000 samples); do not modify in place."""
    return load_dataset("mnist", split="test")


@pytest.fixture(scope="session")
def mnist_small(mnist_test: Dataset) -> Dataset:
    """The first 256 samples of the embedded MNIST test split."""
    return mnist_test.subset(torch.arange(256))
