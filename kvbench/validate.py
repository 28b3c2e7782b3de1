"""Checks of user-supplied numbers, shared by every module that takes them: each returns the
value converted to a plain Python type or raises a one-line KvbenchError naming `what`."""

from __future__ import annotations

import math
from numbers import Integral, Real

from kvbench.errors import KvbenchError

MAX_SEED = 2**64 - 1


def positive_number(value: float, what: str, *, allow_inf: bool = False) -> float:
    """A number > 0 (and finite unless allow_inf)."""
    upper_ok = allow_inf or (isinstance(value, Real) and not math.isinf(value))
    if isinstance(value, bool) or not isinstance(value, Real) or not value > 0 or not upper_ok:
        bound = "positive number" if allow_inf else "positive finite number"
        raise KvbenchError(f"{what} must be a {bound}, got {value!r}")
    return float(value)


def non_negative_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise KvbenchError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise KvbenchError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def seed(value: int) -> int:
    """A seed for the Rust generators (u64) and numpy's default_rng."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value <= MAX_SEED:
        raise KvbenchError(f"seed must be an integer in [0, 2^64), got {value!r}")
    return int(value)
