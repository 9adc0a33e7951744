"""Tests of lsutils.hessian and lsutils.ggn against dense float64 references.

Every route is compared with the explicit Hessian (torch.autograd.functional)
or an explicit GGN J^T H_out J built with torch.func.jacrev, on a registry of
tiny float64 networks (MLP with ReLU, MLP with Tanh, CNN).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F

from lsutils import ggn as ggn_module
from lsutils.ggn import ggn_operator
from lsutils.hessian import (
    diag_ggn,
    diag_hessian,
    explicit_hessian,
    ggn_top_eigenpairs,
    hvp_operator,
    subspace_angles,
    top_eigenpairs,
)
from lsutils.params import ParamSpec, flat_params

M = 10  # samples
C = 3  # classes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run this module's tiny problems on one torch thread, then restore.

    On tensors this small a second thread only adds synchronisation; on the
    shared 2-core machine it made the module several times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(act: type[nn.Module]) -> Callable[[], nn.Sequential]:
    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(6, 4), act(), nn.Linear(4, C)
        ).double()

    return build


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, C)
    ).double()


CASES: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...]]] = {
    "mlp-relu": (_mlp(nn.ReLU), (1, 6)),
    "mlp-tanh": (_mlp(nn.Tanh), (1, 6)),
    "cnn": (_cnn, (1, 6, 6)),
}


def _data(shape: tuple[int, ...], m: int = M, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(m, *shape, generator=gen, dtype=torch.float64)
    return X, torch.arange(m) % C


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[nn.Sequential, Tensor, Tensor]:
    build, shape = CASES[request.param]
    return (build(), *_data(shape))


def _rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _explicit_ggn(model: nn.Module, X: Tensor, y: Tensor) -> Tensor:
    """(1/m) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i, in float64."""
    spec = ParamSpec.from_module(model)

    def logits(w: Tensor) -> Tensor:
        return functional_call(model, spec.unflatten(w), (X,))

    w = flat_params(model)
    J = jacrev(logits)(w)  # (m, C, N)
    p = torch.softmax(logits(w), dim=1)
    H_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("icn,icd,idk->nk", J, H_out, J) / X.shape[0]


# ------------------------------------------------------------ dense reference
def test_explicit_hessian_matches_torch_func(case) -> None:
    model, X, y = case
    spec = ParamSpec.from_module(model)

    def loss(w: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, spec.unflatten(w), (X,)), y)

    reference = torch.func.hessian(loss)(flat_params(model))
    H = explicit_hessian(model, X, y)
    assert H.dtype == torch.float64 and H.shape == (spec.num_params,) * 2
    assert _rel(H, reference) <= 1e-12


def test_explicit_hessian_casts_float32_model_to_float64() -> None:
    model64, X, y = CASES["mlp-tanh"][0](), *_data((1, 6))
    H32 = explicit_hessian(model64.float(), X.float(), y)
    model64 = CASES["mlp-tanh"][0]()
    rounding = _rel(H32, explicit_hessian(model64, X, y))
    assert H32.dtype == torch.float64 and 0 < rounding <= 1e-6


# ------------------------------------------------------------ products
@pytest.mark.parametrize("chunk_size", [M, 3, 1])
def test_hvp_matches_explicit(case, chunk_size: int) -> None:
    model, X, y = case
    H = explicit_hessian(model, X, y)
    op = hvp_operator(model, X, y, chunk_size=chunk_size)
    V = torch.randn(H.shape[0], 4, dtype=torch.float64, generator=torch.Generator())
    HV = torch.from_numpy(op @ V.numpy())
    assert _rel(HV, H @ V) <= 1e-8
    assert op.n_matvec == 4
    assert _rel(op.hvp(V[:, 0]), H @ V[:, 0]) <= 1e-8


def test_chunked_equals_unchunked(case) -> None:
    model, X, y = case
    v = np.random.default_rng(0).standard_normal(
        ParamSpec.from_module(model).num_params
    )
    whole = hvp_operator(model, X, y, chunk_size=len(y)) @ v
    chunked = hvp_operator(model, X, y, chunk_size=4) @ v
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-14)


def test_hvp_float32_is_close_and_returns_float64(case) -> None:
    model, X, y = case
    H = explicit_hessian(model, X, y)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator())
    op = hvp_operator(model, X, y, dtype=torch.float32)
    Hv = op @ v.numpy()
    assert Hv.dtype == np.float64
    assert 1e-12 < _rel(torch.from_numpy(Hv), H @ v) <= 1e-5


def test_hvp_of_prefix_is_H_k(case) -> None:
    model, X, y = case
    k = 4
    H_k = explicit_hessian(model, X[:k], y[:k])
    v = torch.randn(H_k.shape[0], dtype=torch.float64, generator=torch.Generator())
    assert _rel(hvp_operator(model, X[:k], y[:k]).hvp(v), H_k @ v) <= 1e-8
    assert _rel(H_k, explicit_hessian(model, X, y)) > 1e-3  # H_k differs from H_m


def test_operator_snapshots_parameters_and_leaves_model_alone(case) -> None:
    model, X, y = case
    before = flat_params(model)
    op = hvp_operator(model, X, y)
    v = np.ones(op.shape[0])
    first = op @ v
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(op @ v, first)
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(flat_params(model), before)  # the edit did happen


def test_inplace_relu_gives_same_products() -> None:
    X, y = _data((1, 6))
    plain = CASES["mlp-relu"][0]()
    inplace = CASES["mlp-relu"][0]()
    inplace[2] = nn.ReLU(inplace=True)
    v = np.random.default_rng(0).standard_normal(
        ParamSpec.from_module(plain).num_params
    )
    np.testing.assert_allclose(
        hvp_operator(inplace, X, y, chunk_size=3) @ v,
        hvp_operator(plain, X, y, chunk_size=3) @ v,
        rtol=1e-12,
    )


def test_frozen_parameters_are_left_out() -> None:
    model, (X, y) = CASES["mlp-tanh"][0](), _data((1, 6))
    H_full = explicit_hessian(model, X, y)
    model[1].bias.requires_grad_(False)  # entries 24..27 of the flat vector
    keep = torch.cat([torch.arange(24), torch.arange(28, H_full.shape[0])])
    v = torch.randn(len(keep), dtype=torch.float64, generator=torch.Generator())
    expected = H_full[keep][:, keep] @ v
    assert _rel(explicit_hessian(model, X, y) @ v, expected) <= 1e-12
    for dtype, rtol in [(torch.float64, 1e-8), (torch.float32, 1e-5)]:
        op = hvp_operator(model, X, y, dtype=dtype)
        assert op.shape == (len(keep), len(keep))
        assert _rel(op.hvp(v), expected) <= rtol


# ------------------------------------------------------------ eigenpairs
def test_top_eigenpairs_match_eigh(case) -> None:
    model, X, y = case
    _check_top_eigenpairs(model, X, y, chunk_size=M)


def test_top_eigenpairs_chunked_match_eigh() -> None:
    _check_top_eigenpairs(CASES["mlp-relu"][0](), *_data((1, 6)), chunk_size=4)


def _check_top_eigenpairs(model: nn.Module, X: Tensor, y: Tensor, chunk_size: int):
    d = 3
    evals, evecs = np.linalg.eigh(explicit_hessian(model, X, y).numpy())
    top = evals[::-1][: d + 1]
    assert np.min(np.diff(-top)) > 1e-3 * top[0]  # simple eigenvalues: vectors unique
    eig = top_eigenpairs(model, X, y, d, chunk_size=chunk_size)
    np.testing.assert_allclose(eig.values.numpy(), top[:d], rtol=1e-8)
    cos = np.abs(np.sum(eig.vectors.numpy() * evecs[:, ::-1][:, :d], axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    gram = eig.vectors.T @ eig.vectors
    assert torch.allclose(gram, torch.eye(d, dtype=torch.float64), atol=1e-10)
    assert eig.vectors.dtype == torch.float64 and eig.vectors.shape == (len(evals), d)
    assert float(eig.residuals.max()) <= 1e-6
    assert eig.n_matvec > d and eig.seconds > 0


def test_residuals_are_recomputed() -> None:
    """The residuals are those of the returned pairs, not ARPACK's estimate."""
    model, X, y = CASES["mlp-relu"][0](), *_data((1, 6))
    eig = top_eigenpairs(model, X, y, 2)
    H = explicit_hessian(model, X, y)
    expected = (
        torch.linalg.vector_norm(H @ eig.vectors - eig.vectors * eig.values, dim=0)
        / eig.values.abs()
    )
    assert torch.allclose(eig.residuals, expected, rtol=1e-3, atol=1e-15)


def test_top_eigenpairs_float32_meets_residual_target() -> None:
    model, (X, y) = CASES["cnn"][0](), _data((1, 6, 6))
    eig = top_eigenpairs(model, X, y, 3, dtype=torch.float32, tol=1e-5)
    ref = np.linalg.eigvalsh(explicit_hessian(model, X, y).numpy())[::-1][:3]
    np.testing.assert_allclose(eig.values.numpy(), ref, rtol=1e-5)
    assert float(eig.residuals.max()) <= 1e-4


def _negative_curvature_case() -> tuple[nn.Sequential, Tensor, Tensor]:
    """Tanh MLP with large weights, off any minimum: a big negative eigenvalue."""
    model = CASES["mlp-tanh"][0]()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(2.0 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return (model, *_data((1, 6)))


def test_which_lm_finds_dominant_negative_eigenvalue() -> None:
    model, X, y = _negative_curvature_case()
    evals = np.linalg.eigvalsh(explicit_hessian(model, X, y).numpy())
    assert -evals[0] > evals[-1] > 0  # precondition: negative one dominates
    lm = top_eigenpairs(model, X, y, 1, which="LM")
    la = top_eigenpairs(model, X, y, 1, which="LA")
    np.testing.assert_allclose(lm.values.numpy(), evals[:1], rtol=1e-8)
    np.testing.assert_allclose(la.values.numpy(), evals[-1:], rtol=1e-8)
    by_magnitude = evals[np.argsort(-np.abs(evals))][:4]
    lm4 = top_eigenpairs(model, X, y, 4, which="LM")
    np.testing.assert_allclose(lm4.values.numpy(), np.sort(by_magnitude)[::-1], 1e-8)


def test_eigenvector_signs_do_not_depend_on_the_start() -> None:
    model, (X, y) = CASES["mlp-tanh"][0](), _data((1, 6))
    a = top_eigenpairs(model, X, y, 3, seed=0, tol=1e-12)
    b = top_eigenpairs(model, X, y, 3, seed=7, tol=1e-12)
    # a top-1 run cut from nothing and the leading vector of a top-3 run
    c = top_eigenpairs(model, X, y, 1, seed=3, tol=1e-12)
    assert torch.allclose(a.vectors, b.vectors, atol=1e-8)
    assert torch.allclose(a.vectors[:, :1], c.vectors, atol=1e-8)
    big = a.vectors.abs().argmax(dim=0)
    assert bool((a.vectors[big, torch.arange(3)] > 0).all())
    g1 = ggn_top_eigenpairs(model, X, y, 2, seed=0, memory_budget=1)
    g2 = ggn_top_eigenpairs(model, X, y, 2)  # dense route
    assert torch.allclose(g1.vectors, g2.vectors, atol=1e-6)


def test_top_eigenpairs_seed_is_deterministic() -> None:
    model, X, y = CASES["cnn"][0](), *_data((1, 6, 6))
    a = top_eigenpairs(model, X, y, 2, seed=3)
    b = top_eigenpairs(model, X, y, 2, seed=3)
    assert torch.equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)


# ------------------------------------------------------------ BackPACK routes
@pytest.mark.parametrize("chunk_size", [2048, 3])
def test_diag_hessian_matches_explicit(case, chunk_size: int) -> None:
    model, X, y = case
    diag = diag_hessian(model, X, y, chunk_size=chunk_size)
    assert diag.dtype == torch.float64
    assert _rel(diag, explicit_hessian(model, X, y).diagonal()) <= 1e-8


@pytest.mark.parametrize("chunk_size", [2048, 3])
def test_diag_ggn_matches_explicit(case, chunk_size: int) -> None:
    model, X, y = case
    G = _explicit_ggn(model, X, y)
    assert _rel(diag_ggn(model, X, y, chunk_size=chunk_size), G.diagonal()) <= 1e-8


def test_explicit_ggn_reference_is_hessian_for_linear_model() -> None:
    """Check the test's own GGN: for a linear network it equals the Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, C)).double()
    X, y = _data((1, 6))
    assert _rel(_explicit_ggn(model, X, y), explicit_hessian(model, X, y)) <= 1e-12


def test_ggn_differs_from_hessian_for_tanh() -> None:
    model, X, y = CASES["mlp-tanh"][0](), *_data((1, 6))
    assert _rel(_explicit_ggn(model, X, y), explicit_hessian(model, X, y)) > 1e-2


def _check_ggn_pairs(model: nn.Module, X: Tensor, y: Tensor, **kwargs: object) -> None:
    d = 3
    evals, evecs = np.linalg.eigh(_explicit_ggn(model, X, y).numpy())
    eig = ggn_top_eigenpairs(model, X, y, d, **kwargs)
    np.testing.assert_allclose(eig.values.numpy(), evals[::-1][:d], rtol=1e-8)
    angles = subspace_angles(
        eig.vectors, torch.from_numpy(evecs[:, ::-1][:, :d].copy())
    )
    assert float(angles.max()) <= 1e-6
    gram = eig.vectors.T @ eig.vectors
    assert torch.allclose(gram, torch.eye(d, dtype=torch.float64), atol=1e-10)
    assert float(eig.residuals.max()) <= 1e-6


def test_ggn_top_eigenpairs_gram_route(case) -> None:
    model, X, y = case  # m C = 30 < N: eigenpairs from the Gram matrix V^T V
    _check_ggn_pairs(model, X, y, chunk_size=4)


def test_ggn_top_eigenpairs_parameter_space_route() -> None:
    model = CASES["mlp-tanh"][0]()
    X, y = _data((1, 6), m=30)  # m C = 90 > N = 43: eigh of V V^T
    _check_ggn_pairs(model, X, y)


def test_ggn_top_eigenpairs_lanczos_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    model, X, y = CASES["cnn"][0](), *_data((1, 6, 6))
    monkeypatch.setattr(ggn_module, "MAX_GRAM", 0)
    _check_ggn_pairs(model, X, y)  # V stored, Lanczos on V (V^T v)
    # V over budget: matrix-free curvlinops products, several chunks
    _check_ggn_pairs(model, X, y, memory_budget=8 * 119 * C * 4, chunk_size=3)


@pytest.mark.parametrize("chunk_size", [1, 7, 2048])
def test_ggn_operator_matches_explicit(case, chunk_size: int) -> None:
    model, X, y = case
    G = _explicit_ggn(model, X, y)
    op = ggn_operator(model, X, y, chunk_size=chunk_size)
    V = torch.randn(
        G.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    np.testing.assert_allclose((op @ V).numpy(), (G @ V).numpy(), rtol=1e-9, atol=1e-12)
    assert op.to_scipy().shape == G.shape


def test_ggn_operator_bad_input() -> None:
    model, X, y = CASES["cnn"][0](), *_data((1, 6, 6))
    with pytest.raises(ValueError, match="chunk_size=0 is out of range"):
        ggn_operator(model, X, y, chunk_size=0)
    with pytest.raises(ValueError, match=r"same number \(>= 1\) of samples"):
        ggn_operator(model, X, y[:-1])


def test_matrix_free_ggn_needs_no_backpack() -> None:
    # GELU has no BackPACK rule; over budget the route does not need one
    model, (X, y) = _bad_model(nn.GELU()), _data((1, 6))
    with pytest.raises(ValueError, match=r"\(GELU\) is not supported by BackPACK"):
        ggn_top_eigenpairs(model, X, y, d=2)
    _check_ggn_pairs(model, X, y, memory_budget=1)


@pytest.mark.parametrize(
    "route",
    [
        hvp_operator,
        ggn_operator,
        diag_ggn,
        lambda *a: top_eigenpairs(*a, d=1),
        lambda *a: ggn_top_eigenpairs(*a, d=1),
    ],
)
def test_inputs_and_labels_that_do_not_fit_the_model(route) -> None:
    model, (X, y) = CASES["mlp-tanh"][0](), _data((1, 6))
    with pytest.raises(ValueError, match=r"cannot be applied to inputs of shape"):
        route(model, X[:, :, :4], y)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2 .* 0 to 12"):
        route(model, X, y.clone().index_fill_(0, torch.tensor([M - 1]), 12))


def test_internal_checks_do_not_log_operators(caplog) -> None:
    model, (X, y) = CASES["mlp-tanh"][0](), _data((1, 6))
    with caplog.at_level("INFO", logger="lsutils"):
        top_eigenpairs(model, X, y, d=1)
    messages = [record.getMessage() for record in caplog.records]
    made = [text for text in messages if "Hessian operator" in text]
    assert made == [f"Hessian operator: N=43, m={M}, 1 chunk(s), torch.float64"]


def test_ggn_and_hessian_subspaces_coincide_for_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, C)).double()
    X, y = _data((1, 6))
    angles = subspace_angles(
        top_eigenpairs(model, X, y, 2).vectors,
        ggn_top_eigenpairs(model, X, y, 2).vectors,
    )
    assert float(angles.max()) <= 1e-6


def test_backpack_routes_leave_model_untouched(case) -> None:
    model, X, y = case
    before = flat_params(model)
    diag_hessian(model, X, y)
    ggn_top_eigenpairs(model, X, y, 1)
    assert torch.equal(flat_params(model), before)
    assert all(p.grad is None for p in model.parameters())
    assert all(not hasattr(p, "diag_h") for p in model.parameters())
    assert all(len(mod._forward_hooks) == 0 for mod in model.modules())


# ------------------------------------------------------------ angles
def test_subspace_angles_known_angle() -> None:
    t = 0.3
    U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    V = torch.tensor([[1.0, 0.0], [0.0, math.cos(t)], [0.0, math.sin(t)]])
    angles = subspace_angles(U, 5.0 * V)  # scaling does not change the span
    assert angles.dtype == torch.float64
    np.testing.assert_allclose(angles.numpy(), [t, 0.0], atol=1e-12)


# ------------------------------------------------------------ error paths
def _bad_model(layer: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4), layer, nn.Linear(4, C)).double()


@pytest.mark.parametrize(
    "layer, match",
    [
        (lambda: nn.BatchNorm1d(4).double(), r"'2' \(BatchNorm1d\) is in train mode"),
        (lambda: nn.Dropout(0.5), r"'2' \(Dropout\) is in train mode.*random masks"),
    ],
)
@pytest.mark.parametrize(
    "route", [hvp_operator, explicit_hessian, lambda *a: top_eigenpairs(*a, d=1)]
)
def test_train_mode_layers_are_refused(layer, match: str, route) -> None:
    X, y = _data((1, 6))
    model = _bad_model(layer())
    with pytest.raises(ValueError, match=match):
        route(model, X, y)
    route(model.eval(), X, y)  # eval mode is fine


@pytest.mark.parametrize(
    "route", [diag_hessian, diag_ggn, lambda *a: ggn_top_eigenpairs(*a, d=1)]
)
@pytest.mark.parametrize(
    "layer, match",
    [
        (lambda: nn.ReLU(inplace=True), "is in-place"),
        (nn.GELU, r"\(GELU\) is not supported by BackPACK"),
        (lambda: nn.Dropout(0.5), r"\(Dropout\) is in train mode"),
    ],
)
def test_backpack_routes_refuse_bad_layers(route, layer, match: str) -> None:
    X, y = _data((1, 6))
    with pytest.raises(ValueError, match=match):
        route(_bad_model(layer()), X, y)


class _WithSpare(nn.Module):
    """A network that owns a layer its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = CASES["mlp-tanh"][0]()
        self.spare = nn.Linear(2, 2).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@pytest.mark.parametrize(
    "route", [hvp_operator, explicit_hessian, lambda *a: top_eigenpairs(*a, d=1)]
)
def test_unused_parameters_are_named(route) -> None:
    X, y = _data((1, 6))
    with pytest.raises(ValueError, match=r"spare\.weight, spare\.bias are not used"):
        route(_WithSpare(), X, y)


def test_unused_parameters_are_named_by_backpack_routes() -> None:
    X, y = _data((1, 6))
    model = nn.Sequential(*CASES["mlp-tanh"][0](), nn.Linear(C, 2).double())
    model[-1].weight.requires_grad_(True)
    model[-1].register_forward_hook(lambda mod, inp, out: inp[0])  # skip layer
    with pytest.raises(ValueError, match=r"4\.weight, 4\.bias are not used"):
        diag_ggn(model, X, y)


def test_d_must_be_below_parameter_count() -> None:
    model, (X, y) = CASES["mlp-tanh"][0](), _data((1, 6))
    n = ParamSpec.from_module(model).num_params
    with pytest.raises(ValueError, match=rf"smaller than the parameter count N={n}"):
        top_eigenpairs(model, X, y, n)
    with pytest.raises(ValueError, match="full-space sampler"):
        top_eigenpairs(model, X, y, 0)
    with pytest.raises(ValueError, match=rf"parameter count N={n}"):
        ggn_top_eigenpairs(model, X, y, n)


def test_ggn_d_above_rank_bound() -> None:
    model, (X, y) = CASES["mlp-tanh"][0](), _data((1, 6), m=2)
    with pytest.raises(ValueError, match=r"GGN rank bound m\(C-1\)=4"):
        ggn_top_eigenpairs(model, X, y, 5)


def test_invalid_arguments_are_refused() -> None:
    model, (X, y) = CASES["mlp-tanh"][0](), _data((1, 6))
    with pytest.raises(ValueError, match="unknown which 'SA': expected one of 'LA'"):
        top_eigenpairs(model, X, y, 1, which="SA")
    with pytest.raises(ValueError, match=r"unknown dtype torch.float16.*float64"):
        hvp_operator(model, X, y, dtype=torch.float16)
    with pytest.raises(ValueError, match="chunk_size=0 is out of range"):
        hvp_operator(model, X, y, chunk_size=0)
    with pytest.raises(ValueError, match="tol must be finite and >= 0"):
        top_eigenpairs(model, X, y, 1, tol=-1.0)
    with pytest.raises(ValueError, match="same number"):
        hvp_operator(model, X, y[:-1])
    with pytest.raises(ValueError, match="integer class labels"):
        hvp_operator(model, X, y.double())
    with pytest.raises(ValueError, match="must be torch tensors"):
        hvp_operator(model, X.numpy(), y)
    with pytest.raises(ValueError, match="X has 1 non-finite"):
        hvp_operator(model, torch.where(X == X[0, 0, 0], torch.nan, X), y)
    with pytest.raises(ValueError, match="same number of rows"):
        subspace_angles(torch.ones(3, 2), torch.ones(4, 2))


def test_explicit_hessian_refuses_large_networks() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(1000, 5)).double()
    X, y = torch.zeros(2, 1000, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="dense reference for tiny networks.*N=5005"):
        explicit_hessian(model, X, y)


def test_lanczos_non_convergence_is_reported() -> None:
    model, (X, y) = CASES["cnn"][0](), _data((1, 6, 6))
    with pytest.raises(RuntimeError, match=r"of d=3 eigenpairs.*raise maxiter"):
        top_eigenpairs(model, X, y, 3, tol=1e-15, dtype=torch.float32, maxiter=1)
