r"""Loading MNIST and Fashion-MNIST from IDX files, and seeded splits.

The study of the book (chapter 7) needs a dataset ``D = {(x_i, y_i)}``, ``i = 1..m``,
of i.i.d. image-label pairs. This module reads the IDX files in which
MNIST (LeCun, Cortes, Burges) and Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) are
distributed, normalises the images with a fixed per-dataset mean and standard
deviation,

.. math::

    x \mapsto \frac{x / 255 - \mu}{\sigma},

and returns them as a :class:`Dataset`.

Where the files come from, in order of precedence:

1. ``root=`` given to :func:`load_dataset`;
2. the environment variable ``LSUTILS_DATA_ROOT``;
3. the test splits embedded in the repository (``<repo>/data``, see its README).

Under a root the layouts ``<root>/<Name>/raw/`` (torchvision: ``MNIST``,
``FashionMNIST``), ``<root>/<name>/`` (``mnist``, ``fashion-mnist``) and
``<root>/`` itself are searched, for gzipped or plain files; for Fashion-MNIST the
folder of Debian's ``dataset-fashion-mnist`` package is searched last.
``download=True`` fetches missing splits with torchvision when the machine is online.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsutils._checks import check_choice, check_int_range

__all__ = [
    # constants
    "DATASETS",
    "DATA_ROOT_ENV",
    "SPLITS",
    # container
    "Dataset",
    # loading
    "embedded_root",
    "load_dataset",
    "resolve_data_root",
    # splitting
    "train_test_split",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")
"""Names accepted by :func:`load_dataset`."""

SPLITS: tuple[str, ...] = ("test", "train", "all")
"""Splits accepted by :func:`load_dataset`; ``"all"`` is train then test."""

DATA_ROOT_ENV = "LSUTILS_DATA_ROOT"
"""Environment variable naming a data root, used when ``root=None``."""

# Known limitation: the file names in Debian's package are assumed to be the
# upstream ones (t10k-*/train-*-ubyte[.gz]); not checked on a machine with it.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where ``apt-get install dataset-fashion-mnist`` puts the files."""

# Per-dataset normalisation (mean, std) of the pixel intensities in [0, 1].
_STATS: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}
# Folder names used by torchvision's MNIST / FashionMNIST classes.
_TV_NAMES: dict[str, str] = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# File stems of each split (images, labels), as published.
_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers: 0x00000803 (uint8, 3 dims) and 0x00000801 (uint8, 1 dim).
_MAGIC = {3: 2051, 1: 2049}
# sha256 of known decompressed image files, to catch a root that holds the other
# dataset's files (the IDX header cannot tell MNIST from Fashion-MNIST).
# Known limitation: the MNIST training images are not listed (not available
# here), so MNIST train files mistaken for Fashion-MNIST train go undetected.
_KNOWN_IMAGES: dict[str, tuple[str, str]] = {
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7": (
        "mnist",
        "test",
    ),
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b": (
        "fashion-mnist",
        "test",
    ),
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888": (
        "fashion-mnist",
        "train",
    ),
}


@dataclass(frozen=True)
class Dataset:
    """Normalised images and labels of one split of one dataset.

    Attributes
    ----------
    X
        Images, ``(n, 1, 28, 28)`` float32, normalised as ``(x/255 - mu) / sigma``.
    y
        Labels, ``(n,)`` int64 in ``0..9``.
    name
        ``"mnist"`` or ``"fashion-mnist"``.
    split
        ``"test"``, ``"train"`` or ``"all"``.
    source
        File or folder the data came from.
    """

    X: Tensor
    y: Tensor
    name: str
    split: str
    source: str

    def __len__(self) -> int:
        """Return the number of samples ``n``."""
        return int(self.y.shape[0])

    def subset(self, idx: Tensor | Sequence[int]) -> Dataset:
        """Return the samples at positions ``idx`` as a new :class:`Dataset`.

        Parameters
        ----------
        idx
            Integer indices (tensor or sequence) into ``0..n-1``.

        Returns
        -------
        Dataset
            Same name, split and source; ``X[idx]`` and ``y[idx]``.
        """
        index = torch.as_tensor(idx, dtype=torch.long)
        n = len(self)
        if index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
            raise IndexError(
                f"subset index out of range: the dataset has {n} samples, got "
                f"indices from {int(index.min())} to {int(index.max())}"
            )
        return Dataset(self.X[index], self.y[index], self.name, self.split, self.source)


def embedded_root() -> Path:
    """Return the folder of the data embedded in the repository, ``<repo>/data``.

    Returns
    -------
    Path
        The folder holding ``mnist/`` and ``fashion-mnist/`` test splits.

    Raises
    ------
    FileNotFoundError
        If the package was installed without the repository (non-editable
        install), so that the embedded files are not next to it.
    """
    path = Path(__file__).resolve().parents[1] / "data"
    if not (path / "mnist").is_dir():
        raise FileNotFoundError(
            f"the embedded data folder {path} is absent (lsutils seems to be "
            "installed without its repository). Pass root= to load_dataset "
            f"(--data-root on the command line) or set {DATA_ROOT_ENV} to a folder "
            "holding mnist/ or fashion-mnist/, or install lsutils editable from a "
            "clone (pip install -e .)"
        )
    return path


def resolve_data_root(root: str | Path | None) -> Path:
    """Return the data root to search: ``root``, else the env var, else embedded.

    Parameters
    ----------
    root
        A folder holding the IDX files in one of the layouts of
        :func:`load_dataset`, or ``None``.

    Returns
    -------
    Path
        ``root`` if given, else ``$LSUTILS_DATA_ROOT`` if set and non-empty, else
        :func:`embedded_root`.

    Raises
    ------
    FileNotFoundError
        If the given folder (or the one in the environment variable) does not
        exist.
    """
    origin = "root= / --data-root"
    if root is None:
        env = os.environ.get(DATA_ROOT_ENV, "").strip()
        if not env:
            return embedded_root()
        root, origin = env, f"${DATA_ROOT_ENV}"
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data root {str(path)!r} (from {origin}) is absent or not a folder. "
            "The embedded default needs no root (leave out root= in Python and "
            f"--data-root on the command line, and leave {DATA_ROOT_ENV} unset); "
            "for full sets give the folder holding mnist/ or fashion-mnist/, such "
            "as ../shared/data"
        )
    return path


def _search_dirs(name: str, root: Path) -> list[Path]:
    """Return the folders that may hold the files of ``name`` under ``root``."""
    dirs = [root / _TV_NAMES[name] / "raw", root / name, root]
    if name == "fashion-mnist" and DEBIAN_FASHION_DIR.is_dir():
        dirs.append(DEBIAN_FASHION_DIR)
    return dirs


def _find_file(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem`` or ``folder/stem.gz`` (plain preferred), if present."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_split(name: str, split: str, root: Path) -> tuple[Path, Path] | None:
    """Return the (images, labels) files of one split, or ``None`` if absent."""
    img_stem, lbl_stem = _FILES[split]
    for folder in _search_dirs(name, root):
        img, lbl = _find_file(folder, img_stem), _find_file(folder, lbl_stem)
        if img is not None and lbl is not None:
            return img, lbl
    return None


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) content of an IDX file."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(
            f"{path} is not a complete gzip file ({err}); it is truncated or "
            "corrupt: re-copy or re-download it"
        ) from None


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX buffer of unsigned bytes with ``ndim`` dimensions.

    The format is a big-endian header ``0x0000 08 ndim`` followed by ``ndim``
    big-endian uint32 sizes and the ``prod(sizes)`` data bytes.
    """
    header = 4 * (ndim + 1)
    if len(data) < header:
        raise ValueError(
            f"{path} has {len(data)} bytes, fewer than the {header}-byte IDX "
            "header: it is truncated or corrupt; re-copy or re-download it"
        )
    magic = int.from_bytes(data[0:4], "big")
    if magic != _MAGIC[ndim]:
        raise ValueError(
            f"{path} has IDX magic number {magic}, expected {_MAGIC[ndim]} "
            f"(unsigned bytes, {ndim} dimension(s)): it is not an MNIST-style "
            f"{'image' if ndim == 3 else 'label'} file; re-copy or re-download it"
        )
    dims = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: its header announces shape "
            f"{tuple(dims)}, i.e. {expected} bytes, but it holds {len(data)} bytes; "
            "re-copy or re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _count_samples(labels: Path) -> int | None:
    """Return the sample count in a label file's header, or ``None`` if unreadable."""
    try:
        opener = gzip.open if labels.suffix == ".gz" else open
        with opener(labels, "rb") as f:
            head = f.read(8)
        return int.from_bytes(head[4:8], "big") if len(head) == 8 else None
    except (OSError, EOFError):
        return None


def _split_of(path: Path) -> str:
    """The split (``train`` or ``test``) an IDX file name belongs to."""
    return "test" if path.name.startswith("t10k") else "train"


def _missing_split_error(
    name: str, root: Path, missing: Sequence[str]
) -> FileNotFoundError:
    """Build the error for splits that are not under ``root``."""
    wanted = ", ".join(f"{stem}[.gz]" for s in missing for stem in _FILES[s])
    searched = ", ".join(str(d) for d in _search_dirs(name, root))
    found = []
    for other in ("train", "test"):
        files = _find_split(name, other, root)
        if files is not None:
            count = _count_samples(files[1])
            found.append(f"the {other} split ({count} samples) in {files[0].parent}")
    # a split with one of its two files (e.g. images without labels)
    partial = [
        str(path)
        for folder in _search_dirs(name, root)
        for stems in _FILES.values()
        for path in [_find_file(folder, stem) for stem in stems]
        if path is not None and _find_split(name, _split_of(path), root) is None
    ]
    if found:
        available = "only " + " and ".join(found) + " was found"
    elif partial:
        available = (
            f"only {', '.join(partial)} was found, without the file that goes with it"
        )
    else:
        available = f"no {name} files were found at all"
    return FileNotFoundError(
        f"{name} {'/'.join(missing)} split not found: looked for {wanted} in "
        f"{searched}; {available}. To fix: point root= in Python (--data-root on "
        f"the command line, or ${DATA_ROOT_ENV} for both) at a folder holding the "
        f"{'/'.join(missing)} files (layouts <root>/{_TV_NAMES[name]}/raw/, "
        f"<root>/{name}/ or <root>/), or, in Python only (the command line has no "
        "download option), pass download=True to load_dataset when the machine "
        "is online"
    )


def _cache_dir() -> Path:
    """Return the folder downloads go to when no root is given."""
    # Known limitation: this folder is not searched by load_dataset without
    # download=True; pass root=<cache>/lsutils or download=True again (torchvision
    # then finds the files and does not touch the network).
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(base).expanduser() / "lsutils"


def _download(name: str, splits: Sequence[str], target: Path) -> None:
    """Fetch ``splits`` of ``name`` into ``target`` with torchvision."""
    try:
        from torchvision import datasets as tv_datasets
    except ImportError as err:
        raise ImportError(
            "download=True needs torchvision: pip install torchvision, or use the "
            "embedded default / a local data root instead"
        ) from err
    cls = getattr(tv_datasets, _TV_NAMES[name])
    target.mkdir(parents=True, exist_ok=True)
    for split in splits:
        logger.info("downloading %s %s split into %s", name, split, target)
        try:
            cls(str(target), train=(split == "train"), download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise RuntimeError(
                f"download of the {name} {split} split into {target} failed "
                f"({type(err).__name__}: {err}); this machine may be offline. Use "
                "the embedded default (root=None, test split) or a local data root "
                "(root=... or $LSUTILS_DATA_ROOT) instead"
            ) from err


def _load_split(name: str, split: str, files: tuple[Path, Path]) -> tuple[Tensor, ...]:
    """Read one split's images (uint8) and labels (int64) from its IDX files."""
    img_path, lbl_path = files
    img_bytes = _read_bytes(img_path)
    known = _KNOWN_IMAGES.get(hashlib.sha256(img_bytes).hexdigest())
    if known is not None and known[0] != name:
        raise ValueError(
            f"{img_path} is the {known[0]} {known[1]} split, not {name}: the data "
            f"root holds the wrong dataset; put the {name} files in <root>/{name}/"
        )
    images = _parse_idx(img_bytes, img_path, ndim=3)
    labels = _parse_idx(_read_bytes(lbl_path), lbl_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise ValueError(
            f"{img_path} holds images of size {images.shape[1:]}, expected (28, 28)"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds "
            f"{labels.shape[0]} labels: the two files do not belong together; "
            "re-copy or re-download them"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(
            f"{lbl_path} holds label {int(labels.max())}, expected labels in 0..9; "
            "re-copy or re-download it"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def load_dataset(
    name: str,
    split: str = "test",
    root: str | Path | None = None,
    n: int | None = None,
    download: bool = False,
) -> Dataset:
    """Load one split of MNIST or Fashion-MNIST as normalised tensors.

    Images are scaled to ``[0, 1]`` and standardised with fixed per-dataset
    statistics, ``(x - mu) / sigma`` with ``(mu, sigma) = (0.1307, 0.3081)`` for
    MNIST and ``(0.2860, 0.3530)`` for Fashion-MNIST, so ``X`` has mean about 0 and
    standard deviation about 1.

    Parameters
    ----------
    name
        One of :data:`DATASETS`.
    split
        ``"test"`` (10,000 samples), ``"train"`` (60,000) or ``"all"`` (train
        followed by test).
    root
        Data root; ``None`` uses ``$LSUTILS_DATA_ROOT`` or else the embedded test
        splits (see :func:`resolve_data_root`). Searched layouts:
        ``<root>/<Name>/raw/``, ``<root>/<name>/``, ``<root>/``, and
        ``/usr/share/datasets/fashion-mnist/`` for Fashion-MNIST.
    n
        Keep only the first ``n`` samples; ``None`` keeps all.
    download
        Fetch missing splits with torchvision into ``root`` (or, when no root is
        given, into ``~/.cache/lsutils``); needs the network.

    Returns
    -------
    Dataset
        ``X`` of shape ``(n, 1, 28, 28)`` float32 and ``y`` of shape ``(n,)`` int64.

    Raises
    ------
    ValueError
        Unknown name or split, ``n`` out of range, or a truncated or corrupt file.
    FileNotFoundError
        The root does not exist, or the split is not under it.
    RuntimeError
        ``download=True`` and the download failed.

    Examples
    --------
    >>> ds = load_dataset("mnist", n=100)
    >>> ds.X.shape, ds.y.dtype
    (torch.Size([100, 1, 28, 28]), torch.int64)
    """
    check_choice("dataset", name, DATASETS)
    check_choice("split", split, SPLITS)
    if n is not None:
        check_int_range("n", n, 1)
    explicit = root is not None or bool(os.environ.get(DATA_ROOT_ENV, "").strip())
    base = resolve_data_root(root)
    parts = ["train", "test"] if split == "all" else [split]
    found = {s: _find_split(name, s, base) for s in parts}
    missing = [s for s in parts if found[s] is None]
    if missing and download:
        target = base if explicit else _cache_dir()
        _download(name, missing, target)
        base = target
        found = {s: _find_split(name, s, base) for s in parts}
        missing = [s for s in parts if found[s] is None]
    if missing:
        raise _missing_split_error(name, base, missing)

    files = {s: f for s, f in found.items() if f is not None}
    loaded = [_load_split(name, s, files[s]) for s in parts]
    images = torch.cat([im for im, _ in loaded])
    labels = torch.cat([lb for _, lb in loaded])
    if n is not None:
        total = int(labels.shape[0])
        check_int_range(
            "n",
            n,
            1,
            total,
            hint=f"the {name} {split} split has only {total} samples; lower n or "
            "load a larger split (split='train' or 'all', --split on the command "
            "line, from a full data root)",
        )
        images, labels = images[:n], labels[:n]
    mean, std = _STATS[name]
    X = ((images.to(torch.float32) / 255.0 - mean) / std).unsqueeze(1)
    folders = sorted({str(f[0].parent) for f in files.values()})
    source = " + ".join(folders)
    logger.info("loaded %s %s: %d samples from %s", name, split, len(labels), source)
    return Dataset(X=X, y=labels, name=name, split=split, source=source)


def train_test_split(
    ds: Dataset, n_train: int, n_test: int, seed: int
) -> tuple[Dataset, Dataset]:
    """Draw disjoint random training and test subsets of ``ds``.

    A permutation ``pi`` of ``0..n-1`` is drawn from a ``torch.Generator`` seeded
    with ``seed``; the training set is ``pi[:n_train]`` and the test set
    ``pi[n_train:n_train + n_test]``.

    Parameters
    ----------
    ds
        The dataset to split.
    n_train, n_test
        Sizes of the two parts; ``n_train >= 1``, ``n_test >= 0``.
    seed
        Seed of the permutation.

    Returns
    -------
    tuple of Dataset
        ``(train, test)``, disjoint.

    Examples
    --------
    >>> ds = load_dataset("mnist", n=50)
    >>> tr, te = train_test_split(ds, 30, 20, seed=0)
    >>> len(tr), len(te)
    (30, 20)
    """
    n_train = check_int_range("n_train", n_train, 1)
    n_test = check_int_range("n_test", n_test, 0)
    seed = check_int_range("seed", seed, 0)
    if n_train + n_test > len(ds):
        raise ValueError(
            f"n_train + n_test = {n_train} + {n_test} = {n_train + n_test} exceeds "
            f"the {len(ds)} samples of {ds.name} {ds.split}; lower them (--m and "
            "--n-test on the command line) or load a larger split (split='train' "
            "or 'all', --split on the command line, from a full data root)"
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=gen)
    return ds.subset(perm[:n_train]), ds.subset(perm[n_train : n_train + n_test])
