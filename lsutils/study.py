"""The whole study for one setting: data, w*, subspace, samples, Delta_k, k*.

This module glues the one-concept modules together in the order of the paper
(DESIGN.md sections 2-7). The command line (``python -m lsutils delta``), the
notebooks and the sweep all call :func:`prepare` and :func:`run_delta`, so a
number in the book and a number from the command line come from the same code.

Examples
--------
>>> cfg = StudyConfig(dataset="mnist", m=500, n_test=200, samples=16,
...                   orderings=2, epochs=2, d=2)
>>> cfg.sampler, cfg.m
('gaussian', 500)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lsutils._checks import (
    check_choice,
    check_int_range,
    check_positive_float,
)
from lsutils.bounds import Bound, curvature_bound
from lsutils.data import DATASETS, Dataset, load_dataset, train_test_split
from lsutils.delta import DeltaCurve, delta_mc, delta_taylor, orderings
from lsutils.engine import loss_matrix
from lsutils.kstar import KStar, SlopeFit, fit_slope, ordering_slopes, sufficient_size
from lsutils.models import MODELS, build_model
from lsutils.projection import Subspace, full_space, hessian_subspace, random_subspace
from lsutils.sampling import covariance, draw
from lsutils.taylor import TaylorTerms, taylor_terms
from lsutils.training import TrainResult, train

__all__ = [
    "M_MIN",
    "SAMPLERS",
    "SCALES",
    "SEED_MAX",
    "DeltaResult",
    "Prepared",
    "StudyConfig",
    "config_for_scale",
    "draw_theta",
    "make_subspace",
    "prepare",
    "prepare_fields",
    "run_delta",
    "scale_from_env",
]

logger = logging.getLogger(__name__)

#: Largest seed, as on the command line: torch accepts seeds below 2**64 (the
#: study also uses ``seed + 1`` and ``seed + 2``), and below 2**63 every seed
#: is a signed 64-bit integer wherever it is stored.
SEED_MAX = 2**63 - 1

#: Study-level sampler names: (subspace kind, distribution of theta).
SAMPLERS: dict[str, tuple[str, str]] = {
    "gaussian": ("hessian", "gaussian"),
    "random": ("random", "gaussian"),
    "full": ("full", "gaussian"),
    "ball": ("hessian", "ball"),
    "curvature": ("hessian", "curvature"),
    "sobol": ("hessian", "sobol"),
}

#: Smallest training-set size: ``Delta_k`` runs over ``k = 2..m`` and the
#: log-log slope of :func:`run_delta` (over ``k >= min(100, m // 2)``) needs
#: three points.
M_MIN = 4

#: Preset sizes. ``quick`` keeps every notebook within a few minutes on two
#: cores; ``full`` is the scale of the paper's experiments.
SCALES: dict[str, dict[str, int]] = {
    "quick": {"m": 2000, "n_test": 1000, "samples": 128, "orderings": 8},
    "full": {"m": 8000, "n_test": 2000, "samples": 512, "orderings": 32},
}


@dataclass(frozen=True)
class StudyConfig:
    """Settings of one run of the study.

    Attributes
    ----------
    dataset, model
        One of :data:`lsutils.data.DATASETS` and :data:`lsutils.models.MODELS`.
    hidden
        Hidden widths of the MLP (its depth is ``len(hidden)``).
    channels
        Convolution channels of the CNN.
    m
        Training-set size, at least :data:`M_MIN`; ``L_k`` is studied for
        ``k = 1..m``, so the ``Delta_k`` curve covers ``k = 2..m``.
    n_test
        Held-out samples for the reported accuracy.
    split, data_root
        Which split to draw from and where the IDX files are (``None``: the
        embedded default, or ``LSUTILS_DATA_ROOT``); a path-like is stored as
        ``str``.
    d
        Subspace dimension.
    sampler
        One of :data:`SAMPLERS`.
    sigma
        Scale of the sampler: per-coordinate standard deviation in the
        subspace. The full-space sampler uses ``sigma * sqrt(d / N)`` per
        coordinate, so that ``E||w - w*||^2`` is the same as in the subspace.
    samples
        Number ``S`` of parameter points.
    orderings
        Number ``R`` of random orderings of the training set.
    threshold
        The tolerance ``Delta`` that defines ``k*``.
    epochs, lr, batch_size
        Training settings.
    seed
        The one seed behind every random choice (split, init, batches,
        subspace, samples, orderings).

    Integer fields accept integral floats (``1e3``, a YAML ``1.0e+3``) and
    store them as ``int``; bools and strings are refused, with a hint for
    numbers that YAML 1.1 reads as text (``1e-2``: write ``1.0e-2``).
    """

    dataset: str = "mnist"
    model: str = "mlp"
    hidden: tuple[int, ...] = (128,)
    channels: tuple[int, ...] = (8, 16)
    m: int = 5000
    n_test: int = 1000
    split: str = "test"
    data_root: str | None = None
    d: int = 10
    sampler: str = "gaussian"
    sigma: float = 0.01
    samples: int = 256
    orderings: int = 16
    threshold: float = 1e-6
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("model", self.model, MODELS)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("split", self.split, ("test", "train", "all"))
        # Store the checked values as plain int / float / str, so that a config
        # built from sigma=np.float64(0.01), m=1e3 or a Path compares, prints
        # and hashes (sweep cell ids) like one built from 0.01, 1000 and a str.
        values: dict[str, Any] = {
            "m": check_int_range(
                "m",
                self.m,
                M_MIN,
                hint=f"Delta_k is measured for k = 2..m and its log-log slope is "
                f"fitted over k >= min(100, m // 2), which needs m >= {M_MIN}; "
                "use m in the hundreds or more for a meaningful slope and k*",
            ),
            "d": check_int_range("d", self.d, 1),
            "seed": check_int_range("seed", self.seed, 0, SEED_MAX),
        }
        for name in ("n_test", "samples", "orderings", "epochs", "batch_size"):
            values[name] = check_int_range(name, getattr(self, name), 1)
        for name in ("sigma", "threshold", "lr"):
            values[name] = check_positive_float(name, getattr(self, name))
        values["hidden"] = _int_tuple("hidden", self.hidden)
        values["channels"] = _int_tuple("channels", self.channels)
        values["data_root"] = _data_root(self.data_root)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StudyConfig:
        """Build a config from a mapping, naming any unknown field.

        Raises
        ------
        ValueError
            If ``values`` has a key that is not a field, or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(map(repr, unknown))}: "
                f"expected some of {', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    def replace(self, **changes: Any) -> StudyConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary of the settings (JSON serialisable)."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        out["channels"] = list(self.channels)
        return out

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`lsutils.models.build_model`."""
        if self.model == "mlp":
            return {"hidden": self.hidden}
        return {"channels": self.channels}


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        items: tuple[Any, ...] = (value,)
    elif isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(
            f"{name} must be a list of positive integers such as [128] or "
            f"[64, 64], got {value!r}"
        )
    else:
        items = tuple(value)
    if not items:
        raise ValueError(f"{name} must list at least one width, got {value!r}")
    return tuple(check_int_range(f"{name} entry", v, 1) for v in items)


def _data_root(value: Any) -> str | None:
    """Return ``data_root`` as ``None`` or a ``str`` path, else raise."""
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise ValueError(
        f"data_root must be None or a folder path (str or os.PathLike), got "
        f"{value!r} of type {type(value).__name__}"
    )


def scale_from_env(default: str = "quick") -> str:
    """Return the scale named by ``LSUTILS_SCALE`` (``quick`` or ``full``).

    The notebooks call this so that ``LSUTILS_SCALE=full make book`` reruns
    the whole book at the paper's scale without editing a cell.
    """
    scale = os.environ.get("LSUTILS_SCALE", default).strip().lower()
    return check_choice("LSUTILS_SCALE", scale, SCALES)


def config_for_scale(scale: str | None = None, **overrides: Any) -> StudyConfig:
    """Return a :class:`StudyConfig` with the sizes of ``scale`` and overrides.

    Parameters
    ----------
    scale
        ``"quick"`` or ``"full"``; ``None`` reads ``LSUTILS_SCALE``.
    **overrides
        Any other field of :class:`StudyConfig`.
    """
    scale = scale_from_env() if scale is None else check_choice("scale", scale, SCALES)
    values: dict[str, Any] = dict(SCALES[scale])
    values.update(overrides)
    return StudyConfig.from_dict(values)


@dataclass
class Prepared:
    """A trained network at its minimum ``w*`` and the data around it."""

    config: StudyConfig
    model: nn.Module
    train: Dataset
    test: Dataset
    result: TrainResult

    @property
    def num_params(self) -> int:
        """Number of trainable parameters ``N``."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def prepare(config: StudyConfig, progressbar: bool = False) -> Prepared:
    """Load the data, split it, build the network and train it to ``w*``.

    Parameters
    ----------
    config
        The settings; ``m + n_test`` samples are drawn from ``config.split``.
    progressbar
        Show a progress bar over training epochs.

    Returns
    -------
    Prepared
        The trained model (in eval mode) with its training and held-out data.
    """
    start = time.perf_counter()
    data = load_dataset(config.dataset, split=config.split, root=config.data_root)
    need = config.m + config.n_test
    if need > len(data):
        raise ValueError(
            f"m + n_test = {config.m} + {config.n_test} = {need} samples requested "
            f"but {config.dataset} ({config.split} split at {data.source}) has "
            f"{len(data)}: lower m or n_test, or point data_root at the full set"
        )
    train_set, test_set = train_test_split(data, config.m, config.n_test, config.seed)
    model = build_model(config.model, seed=config.seed, **config.model_kwargs)
    result = train(
        model,
        train_set.X,
        train_set.y,
        test_set.X,
        test_set.y,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        progressbar=progressbar,
    )
    model.eval()
    logger.info(
        "trained %s on %d %s samples in %.1f s: train loss %.4f, held-out "
        "accuracy %.2f%% (%d samples)",
        config.model,
        config.m,
        config.dataset,
        time.perf_counter() - start,
        result.train_loss,
        100 * result.test_accuracy,
        config.n_test,
    )
    return Prepared(config, model, train_set, test_set, result)


def make_subspace(
    prepared: Prepared, kind: str, d: int, seed: int = 0, **eig_kwargs: Any
) -> Subspace:
    """Return the ``d``-dimensional subspace of ``kind`` around ``w*``.

    Parameters
    ----------
    prepared
        Output of :func:`prepare`.
    kind
        ``"hessian"`` (top-``d`` eigenvectors of ``H_m(w*)``), ``"random"``
        (a seeded random orthonormal basis) or ``"full"`` (the whole space).
    d
        Dimension; must be smaller than the parameter count ``N``.
    seed
        Seed of the random basis and of the Lanczos start vector.
    **eig_kwargs
        Passed to :func:`lsutils.hessian.top_eigenpairs`.
    """
    check_choice("subspace kind", kind, ("hessian", "random", "full"))
    check_int_range(
        "d",
        d,
        1,
        prepared.num_params - 1,
        hint=f"the model has N={prepared.num_params} parameters; use a smaller d "
        "or the full-space sampler",
    )
    if kind == "full":
        return full_space(prepared.model)
    if kind == "random":
        return random_subspace(prepared.model, d, seed=seed)
    X, y = prepared.train.X, prepared.train.y
    return hessian_subspace(prepared.model, X, y, d, seed=seed, **eig_kwargs)


@dataclass
class DeltaResult:
    """Everything one Delta_k run measured.

    Attributes
    ----------
    config
        The settings.
    mc
        Monte Carlo ``Delta_k`` with standard errors, averaged over orderings.
    taylor
        Closed form under the quadratic model (``None`` for the full space).
    bound
        The ``C / k^2`` bound (``None`` for the full space).
    slope
        Log-log fit of the Monte Carlo curve over ``k >= min(100, m // 2)``
        (``slope.k_min``).
    k_star
        Sufficient size for ``config.threshold`` with its uncertainty.
    test_accuracy
        Held-out accuracy of ``w*``.
    eigenvalues
        Top-``d`` Hessian eigenvalues (``None`` for other subspaces).
    timings
        Seconds per step.
    ordering_slopes
        ``(R,)`` slope of each ordering's curve over the same ``k`` range
        (:func:`lsutils.kstar.ordering_slopes`); ``None`` if not computed.
    grad_norm
        ``||grad L_m(w*)||`` of the trained network (``nan`` if unknown): how
        far ``w*`` is from stationary, which the linear term of the closed
        form accounts for.
    """

    config: StudyConfig
    mc: DeltaCurve
    taylor: DeltaCurve | None
    bound: Bound | None
    slope: SlopeFit
    k_star: KStar
    test_accuracy: float
    train_loss: float
    eigenvalues: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    ordering_slopes: np.ndarray | None = None
    grad_norm: float = math.nan

    @property
    def slope_se_orderings(self) -> float | None:
        """Standard error of the slope from its spread over orderings.

        ``std(ddof=1) / sqrt(R)`` of :attr:`ordering_slopes` (``None`` with
        fewer than two finite slopes). Unlike ``slope.slope_se`` it does not
        assume independent residuals along the curve.
        """
        if self.ordering_slopes is None:
            return None
        ok = self.ordering_slopes[np.isfinite(self.ordering_slopes)]
        if ok.size < 2:
            return None
        return float(ok.std(ddof=1) / np.sqrt(ok.size))

    @property
    def k_star_bound(self) -> float | None:
        """Upper bound ``sqrt(C / Delta)`` on ``k*`` from the curvature bound."""
        if self.bound is None:
            return None
        return float(self.bound.k_star(self.config.threshold))

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary with the arrays of the curves."""
        k = self.mc.k
        nan = np.full(k.shape, np.nan)
        taylor = self.taylor.value if self.taylor is not None else nan
        bound = self.bound.values(k) if self.bound is not None else nan
        ks = self.k_star
        return {
            "k": k.astype(int).tolist(),
            "delta_mc": self.mc.value.tolist(),
            "delta_mc_se": self.mc.se.tolist(),
            "delta_mc_orderings_std": self.mc.per_ordering.std(axis=0).tolist(),
            "delta_taylor": _nan_to_none(taylor),
            "bound": _nan_to_none(bound),
            "slope": self.slope.slope,
            "slope_se": self.slope.slope_se,
            "slope_se_orderings": self.slope_se_orderings,
            "ordering_slopes": None
            if self.ordering_slopes is None
            else _nan_to_none(self.ordering_slopes),
            "k_star": ks.k_star,
            "k_star_lo": ks.k_lo,
            "k_star_hi": ks.k_hi,
            "k_star_reached": ks.reached,
            "k_star_window_complete": ks.window_complete,
            "k_star_extrapolated": ks.k_extrapolated,
            "k_star_bound": self.k_star_bound,
            "bound_constant": None if self.bound is None else self.bound.C,
            "test_accuracy": self.test_accuracy,
            "train_loss": self.train_loss,
            "grad_norm": None if not math.isfinite(self.grad_norm) else self.grad_norm,
            "eigenvalues": None
            if self.eigenvalues is None
            else self.eigenvalues.tolist(),
            "timings": self.timings,
            "settings": self.config.to_dict(),
        }

    def plot(self, ax: Any = None) -> Any:
        """Draw the log-log ``Delta_k`` figure (Monte Carlo, closed form, bound).

        Returns the matplotlib Axes (see :func:`lsutils.plotting.plot_delta`).
        """
        from lsutils.plotting import plot_delta

        k = self.mc.k
        return plot_delta(
            k,
            self.mc.value,
            mc_se=self.mc.se,
            taylor=None if self.taylor is None else self.taylor.value,
            bound=None if self.bound is None else self.bound.values(k),
            slope_fit=self.slope,
            threshold=self.config.threshold,
            k_star=self.k_star.k_star,
            ax=ax,
        )

    def summary(self) -> str:
        """A few lines for a terminal or a log."""
        c = self.config
        ks = self.k_star
        m = int(self.mc.k[-1])
        if ks.reached:
            kline = f"k* = {ks.k_star} (band {ks.k_lo}..{ks.k_hi}"
            if ks.window_complete is False:
                kline += f"; window cut at m = {m}: m too small to confirm"
            kline += ")"
        else:
            kline = f"k* not reached within m={c.m}: {ks.reason}"
        # The slope and the ratio use the same k range, the one of the fit.
        k_range = f"k>={self.slope.k_min}"
        ratio = ""
        if self.taylor is not None:
            big = self.mc.k >= self.slope.k_min
            r = (
                f"{np.median(self.mc.value[big] / self.taylor.value[big]):.3f}"
                if big.any()
                else "n/a"
            )
            ratio = f"median MC/closed form over {k_range}: {r}"
        se_r = self.slope_se_orderings
        spread = "" if se_r is None else f", +- {se_r:.3f} (over orderings)"
        lines = [
            f"{c.dataset} {c.model} m={c.m} d={c.d} sampler={c.sampler} "
            f"sigma={c.sigma:g} S={c.samples} R={c.orderings}",
            f"held-out accuracy {100 * self.test_accuracy:.2f}%, "
            f"train loss {self.train_loss:.4f}, |grad L_m(w*)| {self.grad_norm:.2g}",
            f"Delta_k slope over {k_range}: {self.slope.slope:.3f} "
            f"+- {self.slope.slope_se:.3f} (least squares){spread}",
            *([ratio] if ratio else []),
            f"threshold {c.threshold:g}: {kline}",
        ]
        if self.bound is not None:
            lines.append(
                f"bound C/k^2 with C={self.bound.C:.3g}: k* <= {self.k_star_bound:.0f}"
            )
        lines.append(
            "timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        )
        return "\n".join(lines)


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]


def draw_theta(
    config: StudyConfig,
    subspace: Subspace,
    terms: TaylorTerms | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw the ``S`` sample points and return them with their covariance.

    Returns
    -------
    theta
        ``(S, dim)`` coordinates of the points in ``subspace``.
    cov
        ``(d, d)`` covariance of ``theta`` for the closed form, or ``None`` for
        the full space (no closed form there).
    """
    _, distribution = SAMPLERS[config.sampler]
    if subspace.basis is None:
        n = subspace.dim
        std = config.sigma * math.sqrt(config.d / n)
        gen = torch.Generator().manual_seed(config.seed + 1)
        theta = std * torch.randn(config.samples, n, generator=gen, dtype=torch.float64)
        return theta, None
    curvature = None
    if distribution == "curvature":
        if terms is None:
            raise ValueError("the curvature sampler needs the per-sample Hessians")
        curvature = terms.hess.mean(dim=0)
    kwargs = {"curvature": curvature}
    theta = draw(
        distribution,
        config.samples,
        subspace.dim,
        config.sigma,
        config.seed + 1,
        **kwargs,
    )
    cov = covariance(distribution, subspace.dim, config.sigma, **kwargs)
    return theta, cov


def run_delta(
    config: StudyConfig,
    prepared: Prepared | None = None,
    subspace: Subspace | None = None,
    progressbar: bool = False,
    losses_out: dict[str, Any] | None = None,
    terms: TaylorTerms | None = None,
) -> DeltaResult:
    """Run the whole Delta_k measurement for one setting.

    Steps: train to ``w*`` (unless ``prepared`` is given), build the subspace
    (unless given), per-sample Taylor terms, draw ``S`` points, evaluate the
    ``S x m`` loss matrix, Monte Carlo and closed-form ``Delta_k`` over ``R``
    orderings, the ``C / k^2`` bound, the log-log slope and ``k*``.

    Parameters
    ----------
    config
        The settings.
    prepared
        Reuse a trained model. Its config must equal ``config`` in every field
        :func:`prepare` uses (:func:`prepare_fields`: data, model, ``m``,
        ``n_test``, ``seed`` and training settings); only ``d``, ``sampler``,
        ``sigma``, ``samples``, ``orderings`` and ``threshold`` may differ.
    subspace
        Reuse a subspace; it is cut to its first ``config.d`` rows if larger.
    progressbar
        Progress bars on the long steps.
    losses_out
        If a dict is given, the loss matrix, theta and Taylor terms are stored
        in it (for notebooks that inspect them).
    terms
        Reuse per-sample Taylor terms computed in ``subspace`` (before it is
        cut to ``config.d``): the terms of the leading ``d`` directions are the
        leading blocks, so one computation serves every smaller ``d``.

    Returns
    -------
    DeltaResult

    Raises
    ------
    ValueError
        If ``prepared`` was made with other data, model or training settings
        than ``config`` (the message lists them), or ``d`` is not below the
        parameter count ``N`` (checked before training when ``prepared`` is
        not given).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if prepared is None:
        check_d_before_training(config)
        prepared = prepare(config, progressbar=progressbar)
        timings["train"] = time.perf_counter() - t0
    else:
        _check_same_preparation(config, prepared.config)
    kind, _ = SAMPLERS[config.sampler]
    t = time.perf_counter()
    if subspace is None or subspace.kind != kind:
        subspace = make_subspace(prepared, kind, config.d, seed=config.seed)
        timings["subspace"] = time.perf_counter() - t
    subspace = _cut(subspace, config.d)
    X, y = prepared.train.X, prepared.train.y

    if subspace.basis is None:
        terms = None
    elif terms is not None and terms.d >= config.d and len(terms) == config.m:
        d = config.d
        terms = TaylorTerms(terms.loss, terms.grad[:, :d], terms.hess[:, :d, :d])
    else:
        t = time.perf_counter()
        terms = taylor_terms(prepared.model, subspace, X, y, progressbar=progressbar)
        timings["taylor"] = time.perf_counter() - t

    theta, cov = draw_theta(config, subspace, terms)
    t = time.perf_counter()
    losses = loss_matrix(prepared.model, subspace, theta, X, y, progressbar=progressbar)
    timings["loss_matrix"] = time.perf_counter() - t

    t = time.perf_counter()
    order = orderings(config.m, config.orderings, seed=config.seed + 2)
    mc = delta_mc(losses, order)
    taylor = bound = None
    if terms is not None and cov is not None:
        taylor = delta_taylor(terms, cov, order)
        bound = curvature_bound(terms, cov)
    slope = fit_slope(mc.k, mc.value, k_min=min(100, config.m // 2))
    per_slope = ordering_slopes(mc, k_min=slope.k_min)
    k_star = sufficient_size(mc, config.threshold)
    timings["delta"] = time.perf_counter() - t
    if losses_out is not None:
        losses_out.update(
            losses=losses,
            theta=theta,
            terms=terms,
            order=order,
            subspace=subspace,
            prepared=prepared,
            cov=cov,
        )
    eig = subspace.eigenvalues
    result = DeltaResult(
        config=config,
        mc=mc,
        taylor=taylor,
        bound=bound,
        slope=slope,
        k_star=k_star,
        test_accuracy=prepared.result.test_accuracy,
        train_loss=prepared.result.train_loss,
        eigenvalues=None if eig is None else eig.detach().cpu().numpy(),
        timings=timings,
        ordering_slopes=per_slope,
        grad_norm=prepared.result.grad_norm,
    )
    logger.info("Delta_k run finished in %.1f s", time.perf_counter() - t0)
    return result


def prepare_fields(config: StudyConfig) -> dict[str, Any]:
    """The settings of ``config`` that :func:`prepare` uses, by name.

    Data (``dataset``, ``split``, ``data_root``, ``m``, ``n_test``), network
    (``model`` and its ``hidden`` or ``channels``) and training (``epochs``,
    ``batch_size``, ``lr``, ``seed``): two configs with equal fields give the
    same trained network and data.

    Examples
    --------
    >>> a = StudyConfig(d=2, sampler="random")
    >>> prepare_fields(a) == prepare_fields(a.replace(d=5, sigma=0.1))
    True
    """
    names = ("dataset", "split", "data_root", "m", "n_test", "model", "epochs",
             "batch_size", "lr", "seed")  # fmt: skip
    out = {name: getattr(config, name) for name in names}
    out.update(config.model_kwargs)
    return out


def _check_same_preparation(config: StudyConfig, prepared: StudyConfig) -> None:
    """Raise if ``prepared`` (a :class:`Prepared` config) does not fit ``config``."""
    want, have = prepare_fields(config), prepare_fields(prepared)
    # hidden (MLP) or channels (CNN) only count for the model that uses them
    diff = [
        f"{name}: prepared {have[name]!r}, config {want[name]!r}"
        for name in have
        if name in want and have[name] != want[name]
    ]
    if diff:
        raise ValueError(
            "the prepared model was trained with other settings than the config "
            f"asks for ({'; '.join(diff)}), so the results would be labelled "
            "wrongly: pass the prepared config with only the sampling settings "
            "changed, e.g. run_delta(prepared.config.replace(d=..., sampler=..., "
            "sigma=...), prepared=prepared), or call run_delta(config) to train "
            "anew"
        )


def check_d_before_training(config: StudyConfig) -> None:
    """Check ``d < N`` on a parameter-free copy of the network (no training)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(config.model, seed=config.seed, **config.model_kwargs)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check_int_range(
        "d",
        config.d,
        1,
        n_params - 1,
        hint=f"the model has N={n_params} parameters; use a smaller d or the "
        "full-space sampler",
    )


def _cut(subspace: Subspace, d: int) -> Subspace:
    """Keep the first ``d`` basis rows of ``subspace`` (no-op for full space)."""
    if subspace.basis is None or subspace.dim == d:
        return subspace
    if subspace.dim < d:
        raise ValueError(
            f"the given subspace has dimension {subspace.dim} < d={d}: "
            "compute it with at least d directions"
        )
    eig = subspace.eigenvalues
    return dataclasses.replace(
        subspace,
        basis=subspace.basis[:d],
        eigenvalues=None if eig is None else eig[:d],
    )
