"""Tests of lsutils.data: embedded sets, data roots, layouts, errors, splits."""

from __future__ import annotations

import gzip
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import lsutils.data as data_mod
from lsutils.data import (
    DATA_ROOT_ENV,
    DATASETS,
    Dataset,
    embedded_root,
    load_dataset,
    resolve_data_root,
    train_test_split,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every test independent of a data root set in the environment."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (big-endian header)."""
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_split(
    folder: Path, split: str = "test", n: int = 5, gz: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Write a small random IDX split into ``folder``; return (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "t10k" if split == "test" else "train"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in (("images-idx3", images), ("labels-idx1", labels)):
        raw = _idx_bytes(arr)
        name = f"{prefix}-{stem}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return images, labels


def _expected_X(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)) / 255.0
    return ((x - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


# --------------------------------------------------------------------- embedded


@pytest.mark.parametrize("name", DATASETS)
def test_embedded_test_split(name: str) -> None:
    ds = load_dataset(name)
    assert isinstance(ds, Dataset)
    assert len(ds) == 10_000
    assert ds.X.shape == (10_000, 1, 28, 28) and ds.X.dtype == torch.float32
    assert ds.y.shape == (10_000,) and ds.y.dtype == torch.int64
    assert set(ds.y.unique().tolist()) == set(range(10))
    assert abs(float(ds.X.mean())) < 0.05
    assert abs(float(ds.X.std()) - 1.0) < 0.1
    assert ds.name == name and ds.split == "test"
    assert Path(ds.source) == embedded_root() / name


def test_embedded_root_is_repo_data() -> None:
    assert embedded_root() == REPO / "data"
    assert resolve_data_root(None) == REPO / "data"


def test_embedded_root_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_mod, "__file__", str(tmp_path / "pkg" / "data.py"))
    with pytest.raises(
        FileNotFoundError,
        match=r"absent.*Pass root= to load_dataset \(--data-root on the command "
        r"line\) or set LSUTILS_DATA_ROOT",
    ):
        embedded_root()


def test_first_n_samples(mnist_test: Dataset) -> None:
    ds = load_dataset("mnist", n=37)
    assert len(ds) == 37
    assert torch.equal(ds.X, mnist_test.X[:37])
    assert torch.equal(ds.y, mnist_test.y[:37])


# ------------------------------------------------------------------ data roots


def test_shared_data_layout(mnist_test: Dataset) -> None:
    if not (SHARED / "fashion-mnist").is_dir():
        pytest.skip(f"no shared data root at {SHARED}")
    mnist = load_dataset("mnist", root=SHARED)
    assert torch.equal(mnist.X, mnist_test.X)
    fashion_all = load_dataset("fashion-mnist", split="all", root=SHARED)
    assert len(fashion_all) == 70_000
    fashion_test = load_dataset("fashion-mnist")
    # "all" is train followed by test
    assert torch.equal(fashion_all.y[60_000:], fashion_test.y)
    assert torch.equal(fashion_all.X[-5:], fashion_test.X[-5:])


@pytest.mark.parametrize(
    ("subdir", "gz"),
    [("MNIST/raw", False), ("MNIST/raw", True), ("mnist", True), ("", False)],
)
def test_root_layouts(tmp_path: Path, subdir: str, gz: bool) -> None:
    folder = tmp_path / subdir if subdir else tmp_path
    images, labels = _write_split(folder, gz=gz)
    ds = load_dataset("mnist", root=tmp_path)
    assert Path(ds.source) == folder
    torch.testing.assert_close(ds.X, _expected_X(images))
    assert torch.equal(ds.y, torch.from_numpy(labels.astype(np.int64)))


def test_split_all_is_train_then_test(tmp_path: Path) -> None:
    _, train_labels = _write_split(tmp_path / "MNIST" / "raw", "train", n=4, seed=1)
    _, test_labels = _write_split(tmp_path / "mnist", "test", n=3, seed=2)
    ds = load_dataset("mnist", split="all", root=str(tmp_path))
    expected = np.concatenate([train_labels, test_labels]).astype(np.int64)
    assert torch.equal(ds.y, torch.from_numpy(expected))
    assert " + " in ds.source


def test_env_var_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, labels = _write_split(tmp_path / "MNIST" / "raw", "train", n=6)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    ds = load_dataset("mnist", split="train")
    assert len(ds) == 6


def test_env_var_root_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"from \$LSUTILS_DATA_ROOT"):
        load_dataset("mnist")


def test_root_absent(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError,
        match=r"nowhere' \(from root= / --data-root\) is absent.*embedded default "
        r"needs no root \(leave out root= in Python and --data-root on the command "
        r"line, and leave LSUTILS_DATA_ROOT unset\)",
    ):
        load_dataset("mnist", root=tmp_path / "nowhere")


def test_debian_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    _, labels = _write_split(debian, "train", gz=True, n=3)
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_DIR", debian)
    empty = tmp_path / "empty"
    empty.mkdir()
    ds = load_dataset("fashion-mnist", split="train", root=empty)
    assert Path(ds.source) == debian and len(ds) == 3
    with pytest.raises(FileNotFoundError, match="no mnist files were found at all"):
        load_dataset("mnist", split="train", root=empty)


def test_wrong_dataset_in_root() -> None:
    with pytest.raises(ValueError, match="is the mnist test split, not fashion-mnist"):
        load_dataset("fashion-mnist", root=embedded_root() / "mnist")


# ---------------------------------------------------------------------- errors


def test_missing_split_message() -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", split="train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in msg
    assert str(embedded_root() / "MNIST" / "raw") in msg
    assert "only the test split (10000 samples)" in msg
    assert "download=True" in msg and "root=" in msg
    # the command line user is told the option, and that download is library-only
    assert "--data-root on the command line, or $LSUTILS_DATA_ROOT for both" in msg
    assert "in Python only (the command line has no download option)" in msg


def test_images_without_labels_are_named(tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    _write_split(root, "test")
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", split="test", root=tmp_path)
    msg = str(info.value)
    assert f"only {root / 't10k-images-idx3-ubyte'} was found, without the" in msg
    assert "no mnist files were found at all" not in msg


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="expected one of 'mnist', 'fashion-mnist'"):
        load_dataset("cifar10")


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        load_dataset("mnist", split="valid")


def test_n_too_large() -> None:
    with pytest.raises(
        ValueError, match="n <= 10000.*has only 10000 samples.*--split on the command"
    ):
        load_dataset("mnist", n=10_001)


def test_truncated_gzip(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", gz=True)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="idx3-ubyte.gz.*re-copy or re-download"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_plain_file(tmp_path: Path) -> None:
    _write_split(tmp_path, n=5)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    expected, actual = 16 + 5 * 28 * 28, 16 + 5 * 28 * 28 - 100
    with pytest.raises(
        ValueError, match=rf"{expected} bytes, but it holds {actual} bytes; re-copy"
    ):
        load_dataset("mnist", root=tmp_path)


def test_header_too_short(tmp_path: Path) -> None:
    _write_split(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="3 bytes, fewer than the 16-byte IDX header"):
        load_dataset("mnist", root=tmp_path)


def test_bad_magic(tmp_path: Path) -> None:
    _write_split(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x09\x01" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match="magic number .*expected 2049"):
        load_dataset("mnist", root=tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path, n=5)
    labels = np.zeros(4, dtype=np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_dataset("mnist", root=tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    _write_split(tmp_path, n=2)
    labels = np.array([3, 12], dtype=np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(ValueError, match="label 12, expected labels in 0..9"):
        load_dataset("mnist", root=tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    _write_split(tmp_path, n=2)
    images = np.zeros((2, 20, 20), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    with pytest.raises(ValueError, match=r"size \(20, 20\), expected \(28, 28\)"):
        load_dataset("mnist", root=tmp_path)


# -------------------------------------------------------------------- download


class _OfflineMNIST:
    """Stand-in for torchvision's MNIST that fails like an offline machine."""

    calls: list[str] = []

    def __init__(self, root: str, train: bool, download: bool) -> None:
        type(self).calls.append(root)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


class _FakeMNIST:
    """Stand-in for torchvision's MNIST that 'downloads' small files locally."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        split = "train" if train else "test"
        _write_split(Path(root) / "MNIST" / "raw", split, n=4)


def test_download_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torchvision_datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(torchvision_datasets, "MNIST", _OfflineMNIST)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _OfflineMNIST.calls.clear()
    with pytest.raises(RuntimeError, match="download .* failed .*may be offline"):
        load_dataset("mnist", split="train", download=True)
    # without a root, downloads go to the cache folder, never into the repository
    assert _OfflineMNIST.calls == [str(tmp_path / "cache" / "lsutils")]


def test_download_into_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torchvision_datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(torchvision_datasets, "MNIST", _FakeMNIST)
    ds = load_dataset("mnist", split="train", root=tmp_path, download=True)
    assert len(ds) == 4
    assert Path(ds.source) == tmp_path / "MNIST" / "raw"


def test_download_skipped_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision_datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(torchvision_datasets, "MNIST", _OfflineMNIST)
    assert len(load_dataset("mnist", n=10, download=True)) == 10


# ---------------------------------------------------------------------- splits


def test_split_disjoint_and_deterministic(mnist_small: Dataset) -> None:
    tr, te = train_test_split(mnist_small, 100, 50, seed=3)
    assert len(tr) == 100 and len(te) == 50
    # samples are identified by their (distinct) images
    keys_tr = {hash(x.numpy().tobytes()) for x in tr.X}
    keys_te = {hash(x.numpy().tobytes()) for x in te.X}
    assert len(keys_tr) == 100 and not keys_tr & keys_te
    tr2, te2 = train_test_split(mnist_small, 100, 50, seed=3)
    assert torch.equal(tr.X, tr2.X) and torch.equal(te.y, te2.y)
    tr3, _ = train_test_split(mnist_small, 100, 50, seed=4)
    assert not torch.equal(tr.y, tr3.y)


def test_split_too_large(mnist_small: Dataset) -> None:
    with pytest.raises(
        ValueError,
        match=r"200 \+ 100 = 300 exceeds the 256 samples.*--m and --n-test on the "
        r"command line.*--split on the command line",
    ):
        train_test_split(mnist_small, 200, 100, seed=0)


def test_subset_out_of_range(mnist_small: Dataset) -> None:
    with pytest.raises(IndexError, match="256 samples"):
        mnist_small.subset([0, 256])
