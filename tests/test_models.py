"""Tests of lsutils.models: builders, seeding, BackPACK compatibility checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsutils.models import (
    BACKPACK_LAYERS,
    MODELS,
    build_model,
    check_backpack_extendable,
    check_params_used,
    cnn,
    mlp,
)

EXTENSIONS = tuple(BACKPACK_LAYERS)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_shape_and_param_count() -> None:
    model = mlp()
    assert isinstance(model, nn.Sequential)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert _num_params(model) == 101_770  # 784*128 + 128 + 128*10 + 10


@pytest.mark.parametrize(
    ("hidden", "n_linear"), [(32, 2), ((32,), 2), ((32, 16, 8), 4), ((), 1)]
)
def test_mlp_depth(hidden: int | tuple[int, ...], n_linear: int) -> None:
    model = mlp(hidden=hidden, in_shape=(1, 4, 4), num_classes=3)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(linears) == n_linear
    assert linears[0].in_features == 16 and linears[-1].out_features == 3


def test_cnn_shape_and_param_count() -> None:
    model = cnn()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    conv1, conv2 = 1 * 8 * 25 + 8, 8 * 16 * 25 + 16
    assert _num_params(model) == conv1 + conv2 + 16 * 4 * 4 * 10 + 10


def test_cnn_small_input() -> None:
    model = cnn(channels=(2, 3), in_shape=(1, 16, 16), num_classes=3)
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match="too small.*at least 16"):
        cnn(in_shape=(1, 15, 28))


@pytest.mark.parametrize("name", MODELS)
def test_seed_determinism(name: str) -> None:
    state = torch.random.get_rng_state()
    a, b, c = (build_model(name, seed=s) for s in (5, 5, 6))
    # building leaves the global random state untouched
    assert torch.equal(state, torch.random.get_rng_state())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'.*'mlp', 'cnn'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown argument.*channels.*expected some"):
        build_model("mlp", channels=(4, 8))
    with pytest.raises(ValueError, match="channels must be two widths"):
        build_model("cnn", channels=(4, 8, 16))
    with pytest.raises(ValueError, match=r"in_shape is \(channels, height, width\)"):
        mlp(in_shape=(28, 28))
    with pytest.raises(ValueError, match="hidden\\[1\\]=0 is out of range"):
        mlp(hidden=(8, 0))
    with pytest.raises(ValueError, match="seed=-1 is out of range"):
        mlp(seed=-1)


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize("name", MODELS)
def test_models_pass_backpack_check(name: str, extension: str) -> None:
    check_backpack_extendable(build_model(name), extension)


def test_layer_table_matches_backpack() -> None:
    """Every layer listed as supported is in BackPACK's own registry."""
    extensions = pytest.importorskip("backpack.extensions")
    for ext_name, layers in BACKPACK_LAYERS.items():
        ext = getattr(extensions, ext_name)()
        registry = getattr(ext, "_BackpropExtension__module_extensions", None)
        if registry is None:
            pytest.skip("BackPACK's registry attribute changed; update this test")
        missing = [t.__name__ for t in layers if t not in registry]
        assert not missing, f"{ext_name} does not support {missing}"


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_backpack_runs_on_tiny_cnn(tiny_cnn: nn.Sequential, tiny_cnn_data) -> None:
    """The CNN is really extendable: DiagHessian matches autograd's diagonal."""
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import DiagHessian

    X, y = tiny_cnn_data
    check_backpack_extendable(tiny_cnn, "DiagHessian")
    model = backpack.extend(tiny_cnn)
    loss_fn = backpack.extend(nn.CrossEntropyLoss())
    with backpack.backpack(DiagHessian()):
        loss_fn(model(X), y).backward()
    last = model[-1].weight

    # reference: Hessian of the loss w.r.t. the last weight, via autograd
    def loss_of(w: torch.Tensor) -> torch.Tensor:
        feats = model[:-1](X)
        return nn.functional.cross_entropy(feats @ w.T + model[-1].bias, y)

    ref = torch.autograd.functional.hessian(loss_of, last.detach())
    diag = ref.reshape(last.numel(), last.numel()).diagonal().reshape(last.shape)
    torch.testing.assert_close(last.diag_h, diag)


def test_check_unsupported_layer() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
    with pytest.raises(
        ValueError,
        match="layer '2' \\(GELU\\) is not supported by BackPACK DiagHessian; "
        "supported layer types: Linear, Conv2d, ReLU",
    ):
        check_backpack_extendable(model)


def test_check_custom_module() -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    model = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.ReLU(), Scale()))
    with pytest.raises(ValueError, match="layer '1.1' \\(Scale\\) is not supported"):
        check_backpack_extendable(model, "HMP")


def test_check_inplace_relu() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="'1' \\(ReLU\\) is in-place.*inplace=False"):
        check_backpack_extendable(model)


def test_check_batchnorm_train_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="BatchNorm1d\\) is in train mode.*eval\\(\\)"):
        check_backpack_extendable(model, "DiagGGNExact")
    check_backpack_extendable(model.eval(), "DiagGGNExact")
    # DiagHessian has no BatchNorm support at all
    with pytest.raises(ValueError, match="not supported by BackPACK DiagHessian"):
        check_backpack_extendable(model, "DiagHessian")


def test_check_not_sequential() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(ValueError, match="needs an nn.Sequential model, got Net"):
        check_backpack_extendable(Net())


def test_check_unknown_extension() -> None:
    with pytest.raises(ValueError, match="unknown extension 'KFLR'.*'DiagHessian'"):
        check_backpack_extendable(mlp(), "KFLR")


def test_params_used(tiny_mlp: nn.Sequential, tiny_mlp_data) -> None:
    X, _ = tiny_mlp_data
    check_params_used(tiny_mlp, X)

    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(16, 3)
            self.unused = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x.flatten(1))

    with pytest.raises(
        ValueError, match="unused.weight, unused.bias receive no gradient"
    ):
        check_params_used(Partial().double(), X)


def test_params_frozen(tiny_mlp: nn.Sequential, tiny_mlp_data) -> None:
    tiny_mlp[1].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="1.bias are frozen"):
        check_params_used(tiny_mlp, tiny_mlp_data[0])


def test_params_used_empty_input(tiny_mlp: nn.Sequential) -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        check_params_used(tiny_mlp, torch.zeros(0, 1, 4, 4))
