"""Tests of lsutils.projection: subspaces, coordinates, filter-normalised directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsutils.params import ParamSpec, flat_params
from lsutils.projection import (
    Subspace,
    filter_normalized_direction,
    filter_normalized_subspace,
    full_space,
    hessian_subspace,
    orthonormalize,
    random_subspace,
)


def small_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)
    ).double()


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    ).double()


def num_params(model: nn.Module) -> int:
    return ParamSpec.from_module(model).num_params


# ----------------------------------------------------------------- subspaces


@pytest.mark.parametrize("d", [1, 3, 20])
def test_random_subspace_orthonormal_and_seeded(d: int) -> None:
    net = small_mlp()
    sub = random_subspace(net, d, seed=3)
    assert sub.kind == "random" and sub.dim == d and sub.eigenvalues is None
    assert sub.basis.shape == (d, num_params(net))
    assert sub.basis.dtype == torch.float64
    eye = torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(sub.basis @ sub.basis.T, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(sub.origin, flat_params(net).double())
    again = random_subspace(net, d, seed=3)
    other = random_subspace(net, d, seed=4)
    assert torch.equal(sub.basis, again.basis)
    assert not torch.allclose(sub.basis, other.basis)


def test_to_params_matches_definition_and_round_trip() -> None:
    net = small_mlp()
    sub = random_subspace(net, 4, seed=0)
    theta = torch.randn(7, 4, dtype=torch.float64)
    w = sub.to_params(theta)
    torch.testing.assert_close(w, sub.origin + theta @ sub.basis)
    torch.testing.assert_close(sub.to_theta(w), theta, atol=1e-12, rtol=0)
    # a float32 theta is promoted, the result stays float64
    assert sub.to_params(theta.float()).dtype == torch.float64


def test_full_space_is_identity() -> None:
    net = small_cnn()
    sub = full_space(net)
    n = num_params(net)
    assert sub.kind == "full" and sub.basis is None and sub.dim == n
    theta = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(sub.to_params(theta), sub.origin + theta)
    torch.testing.assert_close(sub.to_theta(sub.to_params(theta)), theta)


@pytest.mark.parametrize(
    "build", [lambda m, d: random_subspace(m, d, seed=0), filter_normalized_subspace]
)
def test_d_must_be_smaller_than_n(build) -> None:
    net = small_mlp()
    n = num_params(net)
    with pytest.raises(
        ValueError, match=f"smaller than the number of parameters N={n}"
    ):
        build(net, n)
    with pytest.raises(ValueError, match="use the full-space sampler"):
        build(net, 0)


def test_hessian_subspace_checks_d_before_computing() -> None:
    net = small_mlp()
    X, y = torch.randn(4, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="smaller than the number of parameters"):
        hessian_subspace(net, X, y, d=num_params(net))


def test_hessian_subspace_rows_are_top_eigenvectors() -> None:
    pytest.importorskip("lsutils.hessian")
    net = small_mlp().eval()
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(20, 1, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    sub = hessian_subspace(net, X, y, d=3)
    assert sub.kind == "hessian" and sub.dim == 3
    spec = ParamSpec.from_module(net)

    def loss(w: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(net, spec.unflatten(w), (X,))
        return nn.functional.cross_entropy(out, y)

    hess = torch.func.hessian(loss)(sub.origin)
    top = torch.linalg.eigvalsh(hess).flip(0)[:3]
    torch.testing.assert_close(sub.eigenvalues, top, rtol=1e-6, atol=1e-8)
    hv = sub.basis @ hess
    torch.testing.assert_close(
        hv, sub.eigenvalues[:, None] * sub.basis, atol=1e-6, rtol=0
    )


# ------------------------------------------------------------ validation


def test_subspace_rejects_non_orthonormal_rows_unless_flagged() -> None:
    origin = torch.zeros(4)
    rows = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="not orthonormal.*orthonormal=False"):
        Subspace(origin, rows, "random")
    sub = Subspace(origin, rows, "random", orthonormal=False)
    theta = torch.tensor([[0.5, -1.5], [2.0, 3.0]], dtype=torch.float64)
    # least-squares coordinates recover theta for points in the span
    torch.testing.assert_close(sub.to_theta(sub.to_params(theta)), theta)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(origin=torch.zeros(2, 2), basis=None, kind="full"), "origin must be"),
        (dict(origin=torch.zeros(3), basis=None, kind="random"), "kind='full'"),
        (
            dict(origin=torch.zeros(3), basis=torch.eye(3)[:1], kind="full"),
            "basis=None",
        ),
        (dict(origin=torch.zeros(3), basis=torch.eye(2), kind="random"), r"\(d, N=3\)"),
        (dict(origin=torch.zeros(3), basis=torch.eye(3)[:1], kind="x"), "unknown kind"),
        (
            dict(
                origin=torch.zeros(3),
                basis=torch.eye(3)[:2],
                kind="hessian",
                eigenvalues=torch.ones(3),
            ),
            r"eigenvalues must have shape \(d,\) = \(2,\)",
        ),
        (
            dict(
                origin=torch.zeros(3),
                basis=None,
                kind="full",
                eigenvalues=torch.ones(3),
            ),
            "eigenvalues must be None",
        ),
    ],
)
def test_subspace_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Subspace(**kwargs)


def test_coordinate_shapes_are_checked() -> None:
    sub = random_subspace(small_mlp(), 2, seed=0)
    with pytest.raises(ValueError, match=r"for a single point use theta\[None\]"):
        sub.to_params(torch.zeros(2))
    with pytest.raises(ValueError, match=r"theta has 3 columns, expected 2"):
        sub.to_params(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="w has 2 columns"):
        sub.to_theta(torch.zeros(1, 2))


# ------------------------------------------------- filter-normalised directions


@pytest.mark.parametrize("build", [small_mlp, small_cnn])
def test_filter_normalized_direction_matches_filter_norms(build) -> None:
    net = build()
    delta = filter_normalized_direction(net, seed=5)
    parts = ParamSpec.from_module(net).unflatten(delta)
    assert delta.dtype == torch.float64 and delta.shape == (num_params(net),)
    for name, p in net.named_parameters():
        got = parts[name]
        if p.dim() == 1:
            assert torch.count_nonzero(got) == 0, name  # biases are not moved
            continue
        want = p.detach().reshape(len(p), -1).norm(dim=1)
        torch.testing.assert_close(got.reshape(len(p), -1).norm(dim=1), want)
    torch.testing.assert_close(delta, filter_normalized_direction(net, seed=5))
    assert not torch.allclose(delta, filter_normalized_direction(net, seed=6))


@pytest.mark.parametrize("orthonormal", [False, True])
def test_filter_normalized_subspace(orthonormal: bool) -> None:
    net = small_cnn()
    sub = filter_normalized_subspace(net, d=2, seed=1, orthonormal=orthonormal)
    assert sub.kind == "random" and sub.dim == 2 and sub.orthonormal is orthonormal
    rows = torch.stack([filter_normalized_direction(net, seed=s) for s in (1, 2)])
    if orthonormal:
        torch.testing.assert_close(sub.basis, orthonormalize(rows))
    else:
        torch.testing.assert_close(sub.basis, rows)


def test_orthonormalize_keeps_the_span() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    q = orthonormalize(rows)
    torch.testing.assert_close(q @ q.T, torch.eye(3, dtype=torch.float64))
    # each input row is reproduced by its projection on the new rows
    torch.testing.assert_close((rows @ q.T) @ q, rows)
    assert bool(((rows * q).sum(1) > 0).all())


def test_orthonormalize_errors() -> None:
    rows = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormalize(rows)
    with pytest.raises(ValueError, match=r"2-D tensor \(k, N\)"):
        orthonormalize(torch.ones(3))
    with pytest.raises(ValueError, match="more directions than parameters"):
        orthonormalize(torch.ones(4, 3))
