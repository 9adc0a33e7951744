"""Tests of lsutils._checks: types refused, conversions, messages."""

from __future__ import annotations

import numpy as np
import pytest

from lsutils._checks import check_int_range, check_positive_float


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (np.int64(3), 3), (3.0, 3), (1e3, 1000), (np.float32(2.0), 2)],
)
def test_int_range_accepts_integral_numbers(value, expected):
    out = check_int_range("m", value, 1)
    assert out == expected and type(out) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "d must be an integer, got the bool True \\(YAML 1.1 reads yes"),
        (np.bool_(False), "d must be an integer, got the bool"),
        ("3", "d must be an integer, got the string '3': write 3 without quotes"),
        ("1e3", r"got the string '1e3' \(YAML 1.1 reads 1e3 as text: write 1.0e\+3\)"),
        ("three", "d must be an integer, got the string 'three'$"),
        (2.5, "d must be an integer, got 2.5"),
        (float("nan"), "d must be an integer, got nan"),
        (None, "d must be an integer, got None"),
    ],
)
def test_int_range_refuses(value, message):
    with pytest.raises(ValueError, match=message):
        check_int_range("d", value, 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "1e-2",
            r"got the string '1e-2' \(YAML 1.1 reads 1e-2 as text: write 1.0e-2\)",
        ),
        ("1.5e3", r"\(YAML 1.1 reads 1.5e3 as text: write 1.5e\+3\)"),
        ("5E-3", r"\(YAML 1.1 reads 5E-3 as text: write 5.0E-3\)"),
        ("0.1", "sigma must be a number, got the string '0.1': write it without"),
        ("abc", "sigma must be a number, got the string 'abc'$"),
        (True, "sigma must be a number, got the bool True"),
        ([0.1], r"sigma must be a number, got \[0.1\]"),
        (-1.0, "sigma must be finite and > 0, got -1.0"),
    ],
)
def test_positive_float_refuses(value, message):
    with pytest.raises(ValueError, match=message):
        check_positive_float("sigma", value)


def test_positive_float_returns_plain_float():
    for value in (1, np.float64(0.5), np.float32(0.25)):
        out = check_positive_float("sigma", value)
        assert type(out) is float and out == float(value)
