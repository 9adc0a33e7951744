"""Input validation shared by every public function of :mod:`lsutils`.

Every check raises an exception whose message states what was expected, what
came in and how to fix it. Nothing here uses ``assert``: user input is checked
with explicit exceptions so that the checks survive ``python -O``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "check_choice",
    "check_finite",
    "check_int_range",
    "check_positive_float",
]


def check_choice(name: str, value: Any, options: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``options``, else raise ``ValueError``.

    Parameters
    ----------
    name
        Name of the argument, used in the message.
    value
        The value given by the user.
    options
        The valid values.

    Returns
    -------
    str
        ``value`` unchanged.

    Raises
    ------
    ValueError
        If ``value`` is not among ``options``; the message lists them.
    """
    opts = list(options)
    if value not in opts:
        raise ValueError(
            f"unknown {name} {value!r}: expected one of {', '.join(map(repr, opts))}"
        )
    return value


def check_int_range(
    name: str,
    value: Any,
    low: int,
    high: int | None = None,
    hint: str = "",
) -> int:
    """Return ``value`` as ``int`` if ``low <= value <= high``, else raise.

    Parameters
    ----------
    name
        Name of the argument, used in the message.
    value
        The value given by the user; must be an integer (bools are refused).
    low, high
        Inclusive bounds; ``high=None`` means unbounded above.
    hint
        Extra advice appended to the message (what to do instead).

    Returns
    -------
    int
        The validated value.

    Raises
    ------
    ValueError
        If ``value`` is not an integer or lies outside ``[low, high]``.
    """
    if isinstance(value, bool) or not isinstance(value, int | torch.SymInt):
        try:
            is_int = float(value).is_integer()
        except (TypeError, ValueError):
            is_int = False
        if not is_int:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    upper = "inf" if high is None else str(high)
    if value < low or (high is not None and value > high):
        msg = f"{name}={value} is out of range: expected {low} <= {name} <= {upper}"
        raise ValueError(f"{msg}. {hint}".rstrip(". ") if hint else msg)
    return int(value)


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite positive ``float``, else raise ``ValueError``.

    Parameters
    ----------
    name
        Name of the argument, used in the message.
    value
        The value given by the user.
    allow_zero
        Whether ``0`` is accepted.

    Returns
    -------
    float
        The validated value.
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = out >= 0 if allow_zero else out > 0
    if not (math.isfinite(out) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return out


def check_finite(name: str, tensor: torch.Tensor, hint: str = "") -> torch.Tensor:
    """Return ``tensor`` if it holds no NaN or infinity, else raise ``ValueError``.

    Parameters
    ----------
    name
        What the tensor is (for example ``"per-sample loss"``).
    tensor
        The values to check.
    hint
        Advice appended to the message, for example to lower a step size.

    Returns
    -------
    torch.Tensor
        ``tensor`` unchanged.
    """
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        msg = f"{name} has {n_bad} non-finite value(s) out of {tensor.numel()}"
        raise ValueError(f"{msg}. {hint}" if hint else msg)
    return tensor
