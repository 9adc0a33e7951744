"""Tests of lsutils.taylor against dense float64 references on tiny networks."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian

from lsutils.models import cnn
from lsutils.params import ParamSpec, flat_params
from lsutils.projection import Subspace, random_subspace
from lsutils.taylor import TaylorTerms, quadratic_losses, taylor_terms


def _mlp(activation: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), activation(), nn.Linear(5, 3)
    ).double()


def _cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()


def _data(model: nn.Module, m: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    shape = (1, 6, 6) if isinstance(model[0], nn.Conv2d) else (1, 2, 3)
    X = torch.randn(m, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (m,), generator=g)
    return X, y


def _subspace(model: nn.Module, d: int, seed: int = 0) -> Subspace:
    w = flat_params(model).double()
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(w.numel(), d, generator=g, dtype=torch.float64))
    return Subspace(w, Q.T.contiguous(), "random")


def _dense_reference(
    model: nn.Module, sub: Subspace, X: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full N x N per-sample Hessians by autograd, then projected with P."""
    spec = ParamSpec.from_module(model)
    P = sub.basis
    losses, grads, hessians = [], [], []
    for i in range(X.shape[0]):

        def loss(w: torch.Tensor, i: int = i) -> torch.Tensor:
            out = functional_call(model, spec.unflatten(w), (X[i : i + 1],))
            return F.cross_entropy(out, y[i : i + 1])

        w = sub.origin.clone().requires_grad_(True)
        value = loss(w)
        (g,) = torch.autograd.grad(value, w)
        H = torch.autograd.functional.hessian(loss, sub.origin, vectorize=True)
        losses.append(value.detach())
        grads.append(P @ g)
        hessians.append(P @ H @ P.T)
    return torch.stack(losses), torch.stack(grads), torch.stack(hessians)


@pytest.mark.parametrize(
    "model", [_mlp(nn.Tanh), _mlp(nn.ReLU), _cnn()], ids=["tanh", "relu", "cnn"]
)
def test_taylor_terms_match_dense_hessian(model: nn.Module) -> None:
    X, y = _data(model, 7)
    sub = _subspace(model, 4)
    terms = taylor_terms(model, sub, X, y, chunk_size=3)
    loss, grad, hess = _dense_reference(model, sub, X, y)
    assert len(terms) == 7 and terms.d == 4
    assert terms.hess.dtype == torch.float64
    torch.testing.assert_close(terms.loss, loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(terms.grad, grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.hess, hess, rtol=0, atol=1e-10)
    assert hess.abs().max() > 1e-3  # the reference is not trivially zero


def test_chunking_does_not_change_terms() -> None:
    model = _mlp(nn.Tanh)
    X, y = _data(model, 10)
    sub = _subspace(model, 3)
    a = taylor_terms(model, sub, X, y, chunk_size=512)
    b = taylor_terms(model, sub, X, y, chunk_size=4, progressbar=True)
    for name in ("loss", "grad", "hess"):
        torch.testing.assert_close(
            getattr(a, name), getattr(b, name), atol=1e-14, rtol=0
        )


def test_caller_model_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).train()
    before = flat_params(model)
    X, y = _data(_mlp(nn.Tanh), 4)
    taylor_terms(model, _subspace(model, 2), X.float(), y)
    assert model.training
    assert next(model.parameters()).dtype == torch.float32
    assert torch.equal(flat_params(model), before)


def test_quadratic_losses_third_order_error() -> None:
    model = _mlp(nn.Tanh)
    X, y = _data(model, 5)
    sub = _subspace(model, 3)
    terms = taylor_terms(model, sub, X, y)
    spec = ParamSpec.from_module(model)
    u = torch.nn.functional.normalize(
        torch.randn(
            4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        ),
        dim=1,
    )

    def max_error(t: float) -> float:
        theta = t * u
        w = sub.origin + theta @ sub.basis
        true = torch.stack(
            [
                F.cross_entropy(
                    functional_call(model, spec.unflatten(ws), (X,)),
                    y,
                    reduction="none",
                )
                for ws in w
            ]
        )
        model_losses = quadratic_losses(terms, theta)
        assert model_losses.shape == (4, 5)
        return float((model_losses - true).abs().max())

    e1, e2 = max_error(2e-2), max_error(1e-2)
    assert e1 < 1e-4
    # halving the radius divides a third-order error by about 8
    assert 5.0 < e1 / e2 < 11.0


def test_quadratic_losses_formula() -> None:
    terms = TaylorTerms(
        torch.tensor([1.0, -1.0]),
        torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
        torch.tensor([[[2.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 4.0]]]),
    )
    theta = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    # theta^T A theta: 2 + 2*2 = 6 and 4*4 = 16 at [1, 2]; 0 and 4 at [0, -1]
    expected = torch.tensor([[1 + 1 + 3.0, -1 + 4 + 8.0], [1.0, -1 - 2 + 2.0]])
    torch.testing.assert_close(quadratic_losses(terms, theta), expected.double())


def test_terms_container() -> None:
    terms = TaylorTerms(torch.arange(3.0), torch.ones(3, 2), torch.zeros(3, 2, 2))
    assert len(terms) == 3 and terms.d == 2
    p = terms.permute(torch.tensor([2, 0, 1]))
    assert p.loss.tolist() == [2.0, 0.0, 1.0]
    assert terms.subset(torch.tensor([True, False, True])).loss.tolist() == [0.0, 2.0]
    with pytest.raises(ValueError, match=r"order must be a permutation of 0..2"):
        terms.permute(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"TaylorTerms expects loss \(m,\)"):
        TaylorTerms(torch.zeros(3), torch.zeros(3, 2), torch.zeros(3, 2, 3))


def test_errors() -> None:
    model = _mlp(nn.Tanh)
    X, y = _data(model, 4)
    sub = _subspace(model, 2)
    full = Subspace(sub.origin, None, "full")
    with pytest.raises(ValueError, match="got the full space.*Hessian or random"):
        taylor_terms(model, full, X, y)
    with pytest.raises(ValueError, match="X and y must hold the same number"):
        taylor_terms(model, sub, X, y[:3])
    with pytest.raises(ValueError, match="chunk_size=0 is out of range"):
        taylor_terms(model, sub, X, y, chunk_size=0)
    bad = Subspace(sub.origin * float("nan"), sub.basis, "random")
    with pytest.raises(ValueError, match="per-sample loss at w\\* has 4 non-finite"):
        taylor_terms(model, bad, X, y)
    terms = taylor_terms(model, sub, X, y)
    with pytest.raises(ValueError, match=r"theta must have shape \(S, 2\)"):
        quadratic_losses(terms, torch.zeros(5, 3))


# --------------------------------------------------------------------------
# The "sequential" route against the functorch route and torch.func.hessian
# --------------------------------------------------------------------------


def _sequential_cases() -> dict[str, tuple[nn.Sequential, tuple[int, ...]]]:
    """Small models of every supported layer kind, with their input shapes."""
    torch.manual_seed(3)
    flat = (1, 3, 4)
    return {
        "relu-1": (
            nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4)),
            flat,
        ),
        "relu-3": (
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(12, 6),
                nn.ReLU(),
                nn.Linear(6, 5),
                nn.ReLU(),
                nn.Linear(5, 5),
                nn.ReLU(),
                nn.Linear(5, 4),
            ),
            flat,
        ),
        "tanh-sigmoid": (
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(12, 6),
                nn.Tanh(),
                nn.Identity(),
                nn.Linear(6, 5),
                nn.Sigmoid(),
                nn.Dropout(0.5),
                nn.Linear(5, 4),
            ),
            flat,
        ),
        # the structure of lsutils.models.cnn, with small channels and inputs
        "cnn": (cnn(channels=(2, 3), in_shape=(1, 16, 16), num_classes=4), (1, 16, 16)),
        "cnn-strided": (
            nn.Sequential(
                nn.Conv2d(2, 3, 3, stride=2, padding=1),
                nn.Tanh(),
                nn.AvgPool2d(2),
                nn.Conv2d(3, 4, 2, dilation=2),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Flatten(),
                nn.Linear(4, 4),
            ),
            (2, 12, 12),
        ),
    }


def _theta_reference(
    model: nn.Module, sub: Subspace, X: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian in ``theta`` at 0 of each subspace-restricted loss.

    ``f_i(theta) = CE(f_{w* + P^T theta}(x_i), y_i)``, differentiated by
    :func:`torch.func.grad` and :func:`torch.func.hessian`, one sample at a time.
    """
    spec = ParamSpec.from_module(model)

    def loss(theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = sub.origin + theta @ sub.basis
        out = functional_call(model, spec.unflatten(w), (x[None],))
        return F.cross_entropy(out, t[None])

    zero = torch.zeros(sub.dim, dtype=torch.float64)
    pairs = list(zip(X, y, strict=True))
    return (
        torch.stack([grad(loss)(zero, x, t) for x, t in pairs]),
        torch.stack([hessian(loss)(zero, x, t) for x, t in pairs]),
    )


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# torch.func registers its decompositions with the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore:.*torch.jit.script:FutureWarning")
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("case", list(_sequential_cases()))
def test_sequential_matches_functorch_and_hessian(case: str, d: int) -> None:
    model, shape = _sequential_cases()[case]
    model = model.double().eval()
    sub = random_subspace(model, d, seed=d)
    g = torch.Generator().manual_seed(5)
    X = torch.randn(6, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=g)
    fast = taylor_terms(model, sub, X, y, method="sequential", chunk_size=4)
    G, H = _theta_reference(model, sub, X, y)
    assert fast.hess.shape == (6, d, d) and fast.grad.shape == (6, d)
    torch.testing.assert_close(
        fast.loss, F.cross_entropy(model(X), y, reduction="none"), rtol=1e-12, atol=0
    )
    assert _rel_err(fast.grad, G) < 1e-10
    assert _rel_err(fast.hess, H) < 1e-10
    assert H.abs().max() > 1e-4  # the reference is not trivially zero
    if not isinstance(model[0], nn.Conv2d):  # the functorch route is slow on convs
        ref = taylor_terms(model, sub, X, y, method="functorch")
        assert _rel_err(fast.hess, ref.hess) < 1e-10
        assert _rel_err(fast.grad, ref.grad) < 1e-10


def test_sequential_chunking_and_frozen_parameters() -> None:
    model, shape = _sequential_cases()["cnn"]
    model = model.double()
    model[0].bias.requires_grad_(False)  # a constant, not in the flat vector
    sub = random_subspace(model, 3, seed=0)
    X = torch.randn(7, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(7) % 4
    a = taylor_terms(model, sub, X, y, method="sequential")
    b = taylor_terms(model, sub, X, y, method="sequential", chunk_size=2)
    ref = taylor_terms(model, sub, X, y, method="functorch")
    for name in ("loss", "grad", "hess"):
        torch.testing.assert_close(
            getattr(a, name), getattr(b, name), rtol=0, atol=1e-14
        )
        assert _rel_err(getattr(a, name), getattr(ref, name)) < 1e-10


def test_auto_method_choice(caplog: pytest.LogCaptureFixture) -> None:
    model = _mlp(nn.ReLU)
    X, y = _data(model, 4)
    sub = _subspace(model, 2)
    with caplog.at_level(logging.INFO, logger="lsutils.taylor"):
        taylor_terms(model, sub, X, y)
    assert "method=sequential, m=4 samples, d=2" in caplog.text
    caplog.clear()
    torch.manual_seed(0)
    norm = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)
    ).double()
    sub = _subspace(norm, 2)
    with caplog.at_level(logging.INFO, logger="lsutils.taylor"):
        auto = taylor_terms(norm, sub, X, y)
    assert "layer 2 (BatchNorm1d) is not supported" in caplog.text
    assert "method=functorch" in caplog.text
    ref = taylor_terms(norm, sub, X, y, method="functorch")
    torch.testing.assert_close(auto.hess, ref.hess, rtol=0, atol=0)


def test_sequential_unsupported_and_method_errors() -> None:
    torch.manual_seed(0)
    X, y = _data(_mlp(nn.Tanh), 4)
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 3))
    sub = _subspace(gelu.double(), 2)
    with pytest.raises(
        NotImplementedError,
        match=r"layer 2 \(GELU\) is not supported\); it supports nn.Sequential of "
        r"Linear, Conv2d, ReLU, Tanh, Sigmoid, MaxPool2d.*Use method='functorch'",
    ):
        taylor_terms(gelu, sub, X, y, method="sequential")
    unflat = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(NotImplementedError, match="Linear layer on inputs of shape"):
        taylor_terms(unflat, _subspace(unflat.double(), 1), X, y, method="sequential")
    wrapped = nn.ModuleDict({"f": nn.Linear(6, 3)})
    with pytest.raises(NotImplementedError, match="the model is a ModuleDict"):
        taylor_terms(wrapped, _subspace(wrapped.double(), 1), X, y, method="sequential")
    with pytest.raises(ValueError, match="unknown method 'jvp': expected one of"):
        taylor_terms(gelu, sub, X, y, method="jvp")
