"""Command line: ``python -m lsutils delta ...`` and ``python -m lsutils sweep ...``.

``delta`` runs the whole study for one setting and prints a short summary;
``--json FILE`` writes the curves and numbers. ``sweep`` runs a grid of
settings from a YAML file, resumably (see :mod:`lsutils.sweep`).

Bad arguments and bad input (unknown data set, missing files, ``d`` too large)
end with an argparse-style message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lsutils.data import DATASETS
from lsutils.models import MODELS
from lsutils.study import SAMPLERS, StudyConfig

__all__ = ["build_parser", "main"]

logger = logging.getLogger("lsutils")

_DEFAULTS = StudyConfig()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m lsutils``."""
    parser = argparse.ArgumentParser(
        prog="lsutils",
        description="Loss-landscape convergence in low-dimensional Hessian "
        "subspaces: measure Delta_k and the sufficient dataset size k*.",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors"
    )
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
        help="network: a one-hidden-layer MLP or a small CNN",
    )
    d.add_argument(
        "--hidden",
        type=_widths,
        default=_DEFAULTS.hidden,
        help="MLP hidden widths, comma separated (depth = count)",
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
        help="training-set size m (k runs over 1..m)",
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
        "--seed", type=int, default=_DEFAULTS.seed, help="seed of every random choice"
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
        help="save the log-log Delta_k figure (PNG, PDF, SVG)",
    )
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")

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
        type=_positive_int,
        default=None,
        help="run at most this many new cells, then stop",
    )
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _run_delta(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lsutils.study import run_delta

    config = StudyConfig(
        dataset=args.dataset,
        model=args.model,
        hidden=args.hidden,
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
        seed=args.seed,
    )
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
    from lsutils.sweep import load_sweep_config, run_sweep

    spec = load_sweep_config(args.config)
    summary = run_sweep(
        spec, args.out, limit=args.limit, progressbar=not args.no_progress
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
    except (ValueError, FileNotFoundError, NotImplementedError, RuntimeError) as err:
        # Expected failures (bad input, missing data, NaN loss) are reported as
        # argparse does, without a traceback.
        sub = f"{parser.prog} {args.command}"
        print(f"{sub}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
