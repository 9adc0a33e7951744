"""Tests of lsutils.engine: the S x m loss matrix by the fast, vmap and loop paths.

The reference is the per-point loop (load the parameters, forward in batches,
``torch.nn.functional.cross_entropy``); the fast path must match it to float32
rounding and to 1e-12 in float64, on a registry of small Sequential networks.
The slices and planes of lsutils.landscape are checked against the same loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lsutils.engine import (
    PARAMETER_FREE_LAYERS,
    SUPPORTED_LAYERS,
    loss_matrix,
)
from lsutils.landscape import landscape_plane, landscape_slices
from lsutils.projection import (
    Subspace,
    filter_normalized_direction,
    filter_normalized_subspace,
    full_space,
    orthonormalize,
    random_subspace,
)

M, S = 37, 6  # odd sizes so that blocks do not divide evenly
F64 = torch.float64


def mlp1() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))


def mlp2() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 12),
        nn.ReLU(),
        nn.Linear(12, 8),
        nn.Tanh(),
        nn.Linear(8, 4),
    )


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 1 * 1, 4),
    )


def cnn_strided() -> nn.Sequential:
    """First layer is pooling, then strided / padded / grouped convolutions."""
    return nn.Sequential(
        nn.AvgPool2d(1),
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 4),
    )


def cnn_pools() -> nn.Sequential:
    """Max pooling that crops (3 on 7x7) and that overlaps (2, stride 1)."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 2),
        nn.MaxPool2d(3),
        nn.Conv2d(3, 2, 1),
        nn.MaxPool2d(2, stride=1),
        nn.Flatten(),
        nn.Linear(2, 4),
    )


def linear() -> nn.Sequential:
    """A single weighted layer: multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))


CASES: dict[str, Callable[[], nn.Sequential]] = {
    "linear": linear,
    "mlp1": mlp1,
    "mlp2": mlp2,
    "cnn": cnn,
    "cnn_strided": cnn_strided,
    "cnn_pools": cnn_pools,
}


def make(case: str, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return CASES[case]().to(dtype)


def data(m: int = M, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(m, 1, 8, 8, generator=gen)
    return X, torch.randint(0, 4, (m,), generator=gen)


def points(n: int, d: int, scale: float = 0.5, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=gen, dtype=torch.float64)


def hessian_like(model: nn.Module, d: int) -> Subspace:
    """An orthonormal basis of kind "hessian" that is not a Gaussian QR."""
    rows = torch.stack([filter_normalized_direction(model, seed=s) for s in range(d)])
    basis = orthonormalize(rows + 0.1)
    return Subspace(random_subspace(model, 1, 0).origin, basis, "hessian", None)


SUBSPACES = {
    "random": lambda model, d: random_subspace(model, d, seed=2),
    "hessian": hessian_like,
}


# ------------------------------------------------------------ equivalence


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("kind", list(SUBSPACES))
def test_fast_equals_loop(case: str, d: int, kind: str) -> None:
    model = make(case)
    sub = SUBSPACES[kind](model, d)
    X, y = data()
    theta = points(S, d)
    for dtype, rtol in [(torch.float32, 1e-5), (torch.float64, 1e-12)]:
        ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=dtype)
        fast = loss_matrix(model, sub, theta, X, y, method="fast", dtype=dtype)
        assert fast.shape == (S, M) and fast.dtype == torch.float64
        torch.testing.assert_close(fast, ref, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("case", list(CASES))
def test_vmap_equals_loop(case: str) -> None:
    model = make(case)
    sub = random_subspace(model, 3, seed=0)
    X, y = data()
    theta = points(S, 3)
    ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    got = loss_matrix(model, sub, theta, X, y, method="vmap", dtype=F64, device="cpu")
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_loop_matches_plain_forward_at_each_point() -> None:
    model = make("cnn")
    sub = random_subspace(model, 2, seed=0)
    X, y = data()
    theta = points(3, 2)
    got = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    for s, w in enumerate(sub.to_params(theta)):
        net = make("cnn")
        torch.nn.utils.vector_to_parameters(w, net.parameters())
        want = nn.functional.cross_entropy(net(X.double()), y, reduction="none")
        torch.testing.assert_close(got[s], want.detach())


def test_full_space_goes_through_vmap(caplog: pytest.LogCaptureFixture) -> None:
    model = make("mlp1")
    sub = full_space(model)
    X, y = data()
    theta = points(4, sub.dim, scale=0.05)
    ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    with caplog.at_level(logging.INFO, logger="lsutils.engine"):
        got = loss_matrix(model, sub, theta, X, y, dtype=F64)
    assert "method=vmap" in caplog.text
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_auto_picks_fast_for_supported_models(caplog: pytest.LogCaptureFixture) -> None:
    model = make("cnn")
    X, y = data()
    with caplog.at_level(logging.INFO, logger="lsutils.engine"):
        loss_matrix(model, random_subspace(model, 2, seed=0), points(2, 2), X, y)
    assert "method=fast" in caplog.text


@pytest.mark.parametrize("case", ["mlp2", "cnn_strided"])
def test_chunking_does_not_change_the_result(case: str) -> None:
    model = make(case)
    sub = random_subspace(model, 3, seed=0)
    X, y = data()
    theta = points(S, 3)
    for method in ("fast", "vmap"):
        big = loss_matrix(model, sub, theta, X, y, method=method, dtype=F64)
        tiny = loss_matrix(
            model,
            sub,
            theta,
            X,
            y,
            method=method,
            memory_budget=30_000,
            progressbar=True,
            dtype=F64,
        )
        torch.testing.assert_close(tiny, big, rtol=1e-12, atol=1e-14)


def test_frozen_parameters_and_dropout_are_respected() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 4)
    ).double()
    model[1].bias.requires_grad_(False)  # not part of w: stays at its value
    model.train()
    sub = random_subspace(model, 2, seed=0)
    assert sub.num_params == 64 * 8 + 8 * 4 + 4
    X, y = data()
    theta = points(S, 2)
    before = [p.detach().clone() for p in model.parameters()]
    ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    fast = loss_matrix(model, sub, theta, X, y, method="fast", dtype=F64)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-14)
    assert model.training  # the caller's model is left as it was
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_origin_not_model_weights_is_the_centre() -> None:
    model = make("mlp1")
    sub = random_subspace(model, 2, seed=0)
    X, y = data()
    moved = make("mlp1")
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1.0)
    theta = points(3, 2)
    ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    for method in ("fast", "vmap", "loop"):
        got = loss_matrix(moved, sub, theta, X, y, method=method, dtype=F64)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- fallbacks


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.flatten(1)).sin()


def with_layernorm() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 4)
    )


@pytest.mark.parametrize("build", [with_layernorm, Custom])
def test_unsupported_models(build: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = build().double()
    sub = random_subspace(model, 2, seed=0)
    X, y = data()
    theta = points(S, 2)
    with pytest.raises(NotImplementedError, match="supports nn.Sequential of Linear"):
        loss_matrix(model, sub, theta, X, y, method="fast", dtype=F64)
    ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    got = loss_matrix(model, sub, theta, X, y, method="auto", dtype=F64)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_supported_set_is_named() -> None:
    model = with_layernorm().double()
    X, y = data()
    with pytest.raises(NotImplementedError) as err:
        loss_matrix(model, random_subspace(model, 1, 0), points(1, 1), X, y, "fast")
    for layer in SUPPORTED_LAYERS + PARAMETER_FREE_LAYERS:
        assert layer.__name__ in str(err.value)
    assert "LayerNorm" in str(err.value)


def test_full_space_under_fast_is_refused() -> None:
    model = make("mlp1")
    X, y = data()
    sub = full_space(model)
    with pytest.raises(NotImplementedError, match="no low-dimensional basis"):
        loss_matrix(model, sub, points(1, sub.dim), X, y, method="fast")


# ---------------------------------------------------------------- errors


def test_theta_shape_is_checked() -> None:
    model = make("mlp1")
    sub = random_subspace(model, 3, seed=0)
    X, y = data()
    with pytest.raises(
        ValueError, match=r"theta must have shape \(S, d\) with d = .* 3"
    ):
        loss_matrix(model, sub, points(4, 2), X, y)
    with pytest.raises(ValueError, match=r"theta must have shape"):
        loss_matrix(model, sub, torch.zeros(3), X, y)
    with pytest.raises(ValueError, match="at least one point"):
        loss_matrix(model, sub, torch.zeros(0, 3), X, y)


def test_data_shapes_are_checked() -> None:
    model = make("mlp1")
    sub = random_subspace(model, 1, seed=0)
    X, y = data()
    theta = points(2, 1)
    with pytest.raises(ValueError, match=rf"y must have shape \(m,\) = \({M},\)"):
        loss_matrix(model, sub, theta, X, y[:-1])
    with pytest.raises(ValueError, match="integer class labels"):
        loss_matrix(model, sub, theta, X, y.double())
    with pytest.raises(ValueError, match="m >= 1"):
        loss_matrix(model, sub, theta, X[:0], y[:0])
    with pytest.raises(ValueError, match="X and y must be tensors"):
        loss_matrix(model, sub, theta, X.numpy(), y)


def test_options_are_checked() -> None:
    model = make("mlp1")
    sub = random_subspace(model, 1, seed=0)
    X, y = data()
    theta = points(2, 1)
    with pytest.raises(ValueError, match="unknown method 'fastest'"):
        loss_matrix(model, sub, theta, X, y, method="fastest")
    with pytest.raises(ValueError, match="unknown dtype"):
        loss_matrix(model, sub, theta, X, y, dtype=torch.float16)
    with pytest.raises(ValueError, match="memory_budget must be finite and > 0"):
        loss_matrix(model, sub, theta, X, y, memory_budget=0)
    other = random_subspace(make("mlp2"), 1, seed=0)
    with pytest.raises(ValueError, match="build the subspace from this model"):
        loss_matrix(model, other, theta, X, y)
    with pytest.raises(ValueError, match="must be an lsutils.projection.Subspace"):
        loss_matrix(model, "random", theta, X, y)


@pytest.mark.parametrize("method", ["fast", "vmap", "loop"])
def test_non_finite_losses_are_reported(method: str) -> None:
    model = make("mlp1")
    sub = random_subspace(model, 2, seed=0)
    X, y = data()
    theta = points(3, 2)
    theta[1, 0] = float("nan")
    with pytest.raises(ValueError, match="lower sigma or check the model"):
        loss_matrix(model, sub, theta, X, y, method=method)


# ------------------------------------------------------------- landscapes


def test_landscape_slices_match_the_engine() -> None:
    model = make("cnn")
    sub = random_subspace(model, 3, seed=0)
    X, y = data()
    land = landscape_slices(
        model, sub, X, y, radius=1.0, n_points=5, directions=[2, 0], dtype=F64
    )
    assert land.losses.shape == (2, 5, M) and land.directions == (2, 0)
    torch.testing.assert_close(land.t, torch.linspace(-1, 1, 5, dtype=torch.float64))
    theta = torch.zeros(5, 3, dtype=torch.float64)
    theta[:, 0] = land.t
    ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    torch.testing.assert_close(land.losses[1], ref)
    # every slice passes through w* at t = 0
    torch.testing.assert_close(land.losses[0, 2], land.losses[1, 2])
    torch.testing.assert_close(land.mean_loss(10), land.losses[..., :10].mean(-1))
    torch.testing.assert_close(land.mean_loss(), land.losses.mean(-1))
    both = land.mean_loss([1, M])
    assert both.shape == (2, 2, 5)
    torch.testing.assert_close(both[0], land.losses[..., 0])


def test_landscape_plane_with_filter_normalized_directions() -> None:
    model = make("mlp2")
    sub = filter_normalized_subspace(model, d=2, seed=0)
    X, y = data()
    land = landscape_plane(
        model, sub, X, y, radius=0.5, n_points=3, method="fast", dtype=F64
    )
    assert land.losses.shape == (3, 3, M) and land.directions == (0, 1)
    a, b = torch.meshgrid(land.t, land.t, indexing="ij")
    theta = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    ref = loss_matrix(model, sub, theta, X, y, method="loop", dtype=F64)
    torch.testing.assert_close(land.losses.reshape(9, M), ref)


def test_landscape_errors() -> None:
    model = make("mlp1")
    X, y = data()
    sub1 = random_subspace(model, 1, seed=0)
    with pytest.raises(ValueError, match="two or more basis rows, got d=1"):
        landscape_plane(model, sub1, X, y, radius=1.0)
    with pytest.raises(ValueError, match="got the full space"):
        landscape_plane(model, full_space(model), X, y, radius=1.0)
    with pytest.raises(ValueError, match="need a basis"):
        landscape_slices(model, full_space(model), X, y, radius=1.0)
    sub2 = random_subspace(model, 2, seed=0)
    with pytest.raises(ValueError, match="two different basis rows"):
        landscape_plane(model, sub2, X, y, radius=1.0, plane=(1, 1))
    with pytest.raises(ValueError, match="the subspace has d=2 basis rows"):
        landscape_slices(model, sub2, X, y, radius=1.0, directions=[2])
    with pytest.raises(ValueError, match="directions is empty"):
        landscape_slices(model, sub2, X, y, radius=1.0, directions=[])
    with pytest.raises(ValueError, match="radius must be finite and > 0"):
        landscape_slices(model, sub2, X, y, radius=0.0)
    land = landscape_slices(model, sub2, X, y, radius=1.0, n_points=3)
    with pytest.raises(ValueError, match=f"the landscape has m={M} samples"):
        land.mean_loss(M + 1)
