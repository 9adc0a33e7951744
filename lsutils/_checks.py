"""Input validation shared by every public function of :mod:`lsutils`.

Every check raises an exception whose message states what was expected, what
came in and how to fix it. Nothing here uses ``assert``: user input is checked
with explicit exceptions so that the checks survive ``python -O``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_choice",
    "check_finite",
    "check_int_range",
    "check_labels",
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


_BOOL_NOTE = " (YAML 1.1 reads yes, no, on, off, true and false as bools)"


def _text_hint(name: str, value: str, kind: str) -> str:
    """Message for a number given as text (a quoted YAML value, a CLI string)."""
    msg = f"{name} must be {kind}, got the string {value!r}"
    try:
        number = float(value)
    except ValueError:
        return msg
    mantissa, e, exponent = value.strip().partition("e" if "e" in value else "E")
    if e and ("." not in mantissa or exponent[:1] not in ("+", "-")):
        # YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent.
        fixed = mantissa if "." in mantissa else f"{mantissa}.0"
        fixed += e + (exponent if exponent[:1] in ("+", "-") else f"+{exponent}")
        return f"{msg} (YAML 1.1 reads {value} as text: write {fixed})"
    if kind == "an integer" and math.isfinite(number) and number.is_integer():
        return f"{msg}: write {int(number)} without quotes"
    return f"{msg}: write it without quotes"


def check_int_range(
    name: str,
    value: Any,
    low: int,
    high: int | None = None,
    hint: str = "",
) -> int:
    """Return ``value`` as ``int`` if ``low <= value <= high``, else raise.

    Integers of any kind (Python, NumPy, ``torch.SymInt``) are accepted, and so
    are floats with an integral value (``1e3``, ``2.0``: a YAML ``1.0e+3`` is a
    float), which are converted to ``int``. Bools and strings are refused, even
    ``True`` or ``"3"``.

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
        The validated value, a plain ``int`` (a ``torch.SymInt`` is kept).

    Raises
    ------
    ValueError
        If ``value`` is a bool, a string, not an integer, or lies outside
        ``[low, high]``.

    Examples
    --------
    >>> check_int_range("m", 1e3, 2)
    1000
    >>> check_int_range("d", True, 1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: d must be an integer, got the bool True (YAML 1.1 reads yes, ...)
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(
            f"{name} must be an integer, got the bool {value!r}{_BOOL_NOTE}"
        )
    if isinstance(value, str | bytes):
        text = value if isinstance(value, str) else value.decode(errors="replace")
        raise ValueError(_text_hint(name, text, "an integer"))
    if isinstance(value, torch.SymInt):
        out: Any = value
    elif isinstance(value, numbers.Integral):
        out = int(value)
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number.is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        out = int(number)
    upper = "inf" if high is None else str(high)
    if out < low or (high is not None and out > high):
        msg = f"{name}={out} is out of range: expected {low} <= {name} <= {upper}"
        raise ValueError(f"{msg}. {hint}".rstrip(". ") if hint else msg)
    return out


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite positive ``float``, else raise ``ValueError``.

    Parameters
    ----------
    name
        Name of the argument, used in the message.
    value
        The value given by the user: a number (bools and strings are refused).
    allow_zero
        Whether ``0`` is accepted.

    Returns
    -------
    float
        The validated value, a plain ``float``.

    Raises
    ------
    ValueError
        If ``value`` is a bool, a string, not a number, not finite or not
        positive. For a string that reads as a number the message says how to
        write it (PyYAML reads ``1e-2`` as text).

    Examples
    --------
    >>> check_positive_float("sigma", "1e-2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: sigma must be a number, got the string '1e-2' (...: write 1.0e-2)
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be a number, got the bool {value!r}{_BOOL_NOTE}")
    if isinstance(value, str | bytes):
        text = value if isinstance(value, str) else value.decode(errors="replace")
        raise ValueError(_text_hint(name, text, "a number"))
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


def check_labels(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Return ``y`` if every label indexes one of a model's ``n_classes`` outputs.

    Raises
    ------
    ValueError
        If a label is negative or ``>= n_classes``; the message gives the range
        found.
    """
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in 0..{n_classes - 1} for a model with {n_classes} "
            f"outputs, got labels from {int(y.min())} to {int(y.max())}; check "
            "the data or the size of the last layer"
        )
    return y
