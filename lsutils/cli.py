"""Command line: ``python -m lsutils delta ...`` and ``python -m lsutils sweep ...``.

``delta`` runs the whole study for one setting and prints a short summary;
``--json FILE`` writes the curves and numbers. ``sweep`` runs a grid of
settings from a YAML file, resumably (see :mod:`lsutils.sweep`).

Bad arguments and bad input (unknown data set, missing files, ``d`` too large,
an output path that cannot be written) end with an argparse-style message and
exit status 2, never a traceback. Output paths (``--json``, ``--figure``,
``--out``) and ``d`` are checked before any training: a missing parent folder
is fine if it can be created (it is created only when the file is written), a
path that is a folder, lies under a file or in a folder that refuses new files
is an error, and so is a figure format matplotlib cannot write.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from lsutils.data import DATASETS
from lsutils.models import MODELS
from lsutils.study import SAMPLERS, SEED_MAX, StudyConfig

__all__ = ["build_parser", "main"]

logger = logging.getLogger("lsutils")

_DEFAULTS = StudyConfig()

# Seeds are limited to ``0 <= seed < 2**63`` (see lsutils.study.SEED_MAX).
_SEED_LIMIT = SEED_MAX + 1


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _seed(text: str) -> int:
    value = _int_at_least(text, 0)
    if value >= _SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected an integer with 0 <= seed < 2**63 = {_SEED_LIMIT}, got "
            f"{value}; choose a smaller seed"
        )
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 128 or 64,64, got {text!r}"
        ) from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return widths


def _existing_ancestor(folder: Path, option: str, target: Path) -> Path:
    """Return the nearest existing folder at or above ``folder``, else raise."""
    current = folder
    while not current.exists() and current != current.parent:
        current = current.parent
    if not current.is_dir():
        raise ValueError(
            f"{option} {target}: {current} is a file, not a folder; choose a path "
            "in an existing or new folder"
        )
    return current


def _probe_folder(folder: Path, option: str, target: Path) -> None:
    """Create and delete a file in ``folder`` to check that it accepts files."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lsutils-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(
            f"{option} {target}: cannot create files in {folder} ({reason}); "
            "choose a writable folder"
        ) from None


def _check_output_file(
    path: Path, option: str, formats: Collection[str] | None = None
) -> None:
    """Check before any work that ``path`` can be written as a file.

    Parameters
    ----------
    path
        The output file.
    option
        The command-line option, for the message (``"--json"``).
    formats
        Allowed extensions without the dot (``None``: any).

    Raises
    ------
    ValueError
        If the extension is not in ``formats``, ``path`` is a folder, one of
        its parents is a file, or the file or its folder cannot be written.
        A missing parent folder is accepted when it can be created; it is
        created only when the file is written.
    """
    if formats is not None:
        ext = path.suffix.lower().lstrip(".")
        if ext not in formats:
            raise ValueError(
                f"{option} {path}: "
                + (f"unsupported format {path.suffix!r}" if ext else "no extension")
                + "; end the file name with one of "
                + ", ".join(f".{f}" for f in sorted(formats))
            )
    if path.is_dir():
        raise ValueError(
            f"{option} {path} is a folder: give a file name, such as "
            f"{path / ('delta' + (path.suffix or '.json'))}"
        )
    if path.exists():
        try:
            with path.open("a"):  # opens for writing without changing the file
                pass
        except OSError as err:
            reason = err.strerror or str(err)
            raise ValueError(
                f"{option} {path} cannot be written ({reason}): choose another path"
            ) from None
        return
    _probe_folder(_existing_ancestor(path.parent, option, path), option, path)


def _check_output_dir(path: Path, option: str) -> None:
    """Check before any work that ``path`` is or can become a writable folder."""
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{option} {path} is a file, not a folder: give a folder path (it is "
            "created if missing)"
        )
    _probe_folder(_existing_ancestor(path, option, path), option, path)


def _figure_formats() -> set[str]:
    """File extensions matplotlib can save figures in."""
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


def _add_quiet(parser: argparse.ArgumentParser, after_command: bool) -> None:
    """Add ``-q/--quiet``; after the command it only overrides when given."""
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if after_command else False,
        help="only warnings and errors (before or after the command)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m lsutils``."""
    parser = argparse.ArgumentParser(
        prog="lsutils",
        description="Loss-landscape convergence in low-dimensional Hessian "
        "subspaces: measure Delta_k and the sufficient dataset size k*.",
    )
    _add_quiet(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "delta",
        help="Delta_k for one setting (Monte Carlo, closed form, bound, k*)",
        description="Train a network to a minimum w*, project onto the top-d "
        "Hessian eigenvectors, sample points around w*, and estimate "
        "Delta_k = E[(L_k - L_{k-1})^2] for every k, with the closed form of "
        "the quadratic model, the C/k^2 bound and the sufficient size k*.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument(
        "--dataset", required=True, choices=DATASETS, help="data set to study"
    )
    d.add_argument(
        "--model",
        default=_DEFAULTS.model,
        choices=MODELS,
        help="network: an MLP with the hidden layers of --hidden (by default "
        "one of 128 units) or a LeNet-style CNN (two 5x5 convolution blocks with "
        f"{' and '.join(map(str, _DEFAULTS.channels))} channels)",
    )
    d.add_argument(
        "--hidden",
        type=_widths,
        default=_DEFAULTS.hidden,
        help="MLP hidden widths, comma separated: 128 is one hidden layer, "
        "256,128 two (ignored by the CNN)",
    )
    d.add_argument(
        "--channels",
        type=_widths,
        default=_DEFAULTS.channels,
        help="CNN channels of its convolution blocks, comma separated "
        "(ignored by the MLP)",
    )
    d.add_argument(
        "--dim",
        type=_positive_int,
        default=_DEFAULTS.d,
        help="subspace dimension d (top-d Hessian eigenvectors)",
    )
    d.add_argument(
        "--sampler",
        default=_DEFAULTS.sampler,
        choices=list(SAMPLERS),
        help="distribution of the points: gaussian (top-d subspace), "
        "random (random d-dim subspace), full (whole space), ball "
        "(uniform), curvature (N(0, (A_m + lambda I)^-1) shape), "
        "sobol (quasi-Monte Carlo Gaussian)",
    )
    d.add_argument(
        "--sigma",
        type=_positive_float,
        default=_DEFAULTS.sigma,
        help="scale: standard deviation per subspace coordinate",
    )
    d.add_argument(
        "--samples",
        type=_positive_int,
        default=_DEFAULTS.samples,
        help="number S of parameter points",
    )
    d.add_argument(
        "--orderings",
        type=_positive_int,
        default=_DEFAULTS.orderings,
        help="number R of random orderings of the training set",
    )
    d.add_argument(
        "--threshold",
        type=_positive_float,
        default=_DEFAULTS.threshold,
        help="tolerance Delta defining k* (first k with Delta_k < Delta over a window)",
    )
    d.add_argument(
        "--m",
        type=_positive_int,
        default=_DEFAULTS.m,
        help="training-set size m (at least 4; the Delta_k curve covers k = 2..m)",
    )
    d.add_argument(
        "--n-test",
        type=_positive_int,
        default=_DEFAULTS.n_test,
        help="held-out samples for the accuracy",
    )
    d.add_argument(
        "--split",
        default=_DEFAULTS.split,
        choices=("test", "train", "all"),
        help="split to draw the m + n_test samples from",
    )
    d.add_argument(
        "--data-root",
        default=None,
        help="folder with the IDX files (default: the embedded "
        "test splits, or $LSUTILS_DATA_ROOT)",
    )
    d.add_argument(
        "--epochs", type=_positive_int, default=_DEFAULTS.epochs, help="training epochs"
    )
    d.add_argument(
        "--lr", type=_positive_float, default=_DEFAULTS.lr, help="Adam learning rate"
    )
    d.add_argument(
        "--batch-size",
        type=_positive_int,
        default=_DEFAULTS.batch_size,
        help="training mini-batch size",
    )
    d.add_argument(
        "--seed",
        type=_seed,
        default=_DEFAULTS.seed,
        help="seed of every random choice (0 <= seed < 2**63)",
    )
    d.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="write curves and numbers to this JSON file",
    )
    d.add_argument(
        "--figure",
        type=Path,
        default=None,
        metavar="FILE",
        help="save the log-log Delta_k figure (format from the extension: "
        ".png, .pdf, .svg, ...)",
    )
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_quiet(d, after_command=True)

    s = sub.add_parser(
        "sweep",
        help="run a grid of settings from a YAML file (resumable)",
        description="Run every setting of a YAML grid, skipping finished "
        "cells, and write one CSV row per setting and threshold, the Delta_k "
        "curves and the package versions to the output folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument(
        "--config",
        type=Path,
        required=True,
        help="YAML file (see experiments/quick.yaml)",
    )
    s.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (created; reruns resume in it)",
    )
    s.add_argument(
        "--limit",
        type=_nonnegative_int,
        default=None,
        help="run at most this many new cells, then stop (0: run none, only set "
        "up the folder and rewrite the tables, config.yaml and versions.json)",
    )
    s.add_argument(
        "--tables-only",
        action="store_true",
        help="run no cell: only rewrite results.csv and curves.csv from the cell "
        "files (after an lsutils update changed the tables)",
    )
    s.add_argument(
        "--retry-failed",
        action="store_true",
        help="run the cells recorded as failed again (after fixing the cause)",
    )
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_quiet(s, after_command=True)
    return parser


def _run_delta(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lsutils.study import run_delta

    config = StudyConfig(
        dataset=args.dataset,
        model=args.model,
        hidden=args.hidden,
        channels=args.channels,
        m=args.m,
        n_test=args.n_test,
        split=args.split,
        data_root=args.data_root,
        d=args.dim,
        sampler=args.sampler,
        sigma=args.sigma,
        samples=args.samples,
        orderings=args.orderings,
        threshold=args.threshold,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    # Check the output paths now, not after minutes of computation.
    if (
        args.json is not None
        and args.figure is not None
        and args.json.resolve() == args.figure.resolve()
    ):
        raise ValueError(
            f"--json {args.json} and --figure {args.figure} name the same file: "
            "the figure would overwrite the JSON; give two paths, such as "
            "delta.json and delta.png"
        )
    if args.json is not None:
        _check_output_file(args.json, "--json")
    if args.figure is not None:
        _check_output_file(args.figure, "--figure", _figure_formats())
    start = time.perf_counter()
    result = run_delta(config, progressbar=not args.no_progress)
    print(result.summary())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json_dict(), indent=1))
        print(f"wrote {args.json}")
    if args.figure is not None:
        fig = result.plot().figure
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=150)
        print(f"wrote {args.figure}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


def _run_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lsutils.sweep import run_sweep
    from lsutils.sweep_config import load_sweep_config

    if args.config.is_dir():
        copy = args.config / "config.yaml"
        kept = (
            f"; {copy} is the copy a sweep keeps in its output folder"
            if copy.is_file()
            else ""
        )
        raise ValueError(
            f"--config {args.config} is a folder, not a file: give the YAML sweep "
            f"file, such as experiments/quick.yaml{kept}"
        )
    spec = load_sweep_config(args.config)
    _check_output_dir(args.out, "--out")
    summary = run_sweep(
        spec,
        args.out,
        limit=args.limit,
        progressbar=not args.no_progress,
        tables_only=args.tables_only,
        retry_failed=args.retry_failed,
    )
    print(summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lsutils``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    runner = {"delta": _run_delta, "sweep": _run_sweep}[args.command]
    try:
        return runner(args, parser)
    except (ValueError, OSError, NotImplementedError, RuntimeError) as err:
        # Expected failures (bad input, missing data, NaN loss, a file that
        # cannot be written) are reported as argparse does, without a traceback.
        sub = f"{parser.prog} {args.command}"
        print(f"{sub}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
