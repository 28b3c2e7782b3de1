"""Checks of user-supplied values (numbers, URLs, input files), shared by every module that
takes them: each returns the value converted to a plain Python type (a file: its contents) or
raises a one-line KvbenchError naming `what`."""

from __future__ import annotations

import json
import math
import os
import stat
from numbers import Integral, Real
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kvbench.errors import KvbenchError

MAX_SEED = 2**64 - 1
# The largest token count accepted (a length, a KV capacity), so that g(s, o) ~ (s + o)² / 2
# stays exact in int64 and the simulator's per-token arithmetic cannot overflow.
MAX_TOKENS = 10**9
# The most requests one run's schedule may hold. The schedule and the records of a run are kept
# in memory, about 2.3 KB per request (measured: 2.3 GB for a million through sim:vllm), so this
# bounds a run to a few GB — 1,000 req/s for over half an hour — and refuses a mistyped rate
# before anything is allocated.
MAX_SCHEDULED_REQUESTS = 2_000_000
# The largest input file read (a trace, timing windows, a run's records): all of it is held in
# memory while parsed, so a path to a device such as /dev/zero, or a mistaken huge file, is
# refused rather than read until memory runs out. The largest public traces are a few hundred MB.
MAX_INPUT_BYTES = 1 << 30


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


def positive_int(value: int, what: str, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise KvbenchError(f"{what} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise KvbenchError(f"{what} must be at most {maximum:,}, got {value!r}")
    return int(value)


def token_count(value: int, what: str) -> int:
    """A positive number of tokens no larger than MAX_TOKENS."""
    return positive_int(value, what, maximum=MAX_TOKENS)


def in_range(
    value: float,
    what: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A number in [low, high], either end open on request; NaN is never in range."""
    inside = isinstance(value, Real) and not isinstance(value, bool) and low <= value <= high
    if not inside or (low_open and value == low) or (high_open and value == high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise KvbenchError(f"{what} must be in {interval}, got {value!r}")
    return float(value)


def port(value: int, what: str = "--port") -> int:
    """A TCP port to bind (0: any free port)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value <= 65535:
        raise KvbenchError(f"{what} must be a TCP port in [0, 65535], got {value!r}")
    return int(value)


def url(value: str, what: str = "--url") -> str:
    """An http(s) URL with a host (and a valid port, if any), as given: no surrounding space,
    which a shell quote easily slips in and which would otherwise reach every message."""
    if value != value.strip():
        raise KvbenchError(f"{what} {value!r}: remove the spaces around the URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError as err:
        raise KvbenchError(f"{what} {value!r}: not a valid URL ({err})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KvbenchError(f"{what} {value!r}: expected http://HOST:PORT or https://HOST:PORT")
    return value


def schedule_size(rate: float, *, duration: float | None, num_prompts: int | None) -> None:
    """Refuse a run whose schedule would hold more than MAX_SCHEDULED_REQUESTS requests, before
    anything is built (`rate` and `duration` already checked positive and finite)."""
    if num_prompts is not None:
        expected, asked = float(num_prompts), f"--num-prompts {num_prompts:,}"
    else:
        assert duration is not None
        expected, asked = rate * duration, f"--request-rate {rate:g} for --duration {duration:g} s"
    if not expected <= MAX_SCHEDULED_REQUESTS:
        raise KvbenchError(
            f"{asked} schedules about {expected:.3g} requests; one run holds at most "
            f"{MAX_SCHEDULED_REQUESTS:,} (each keeps ~2.3 KB of records in memory): lower the "
            "rate, the duration or the number of prompts"
        )


def seed(value: int, what: str = "seed") -> int:
    """A seed for the Rust generators (u64) and numpy's default_rng."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value <= MAX_SEED:
        raise KvbenchError(f"{what} must be an integer in [0, 2^64), got {value!r}")
    return int(value)


def input_bytes(path: str | Path) -> bytes:
    """The contents of a user-given input file: a regular file (a device or a pipe may never
    end) of at most MAX_INPUT_BYTES. FileNotFoundError is left to the caller, which knows what
    the file was meant to be."""
    path = Path(path)
    try:
        # stat before opening: opening a FIFO blocks until something writes to it
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise KvbenchError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise KvbenchError(f"{path}: cannot read: {err.strerror or err}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise KvbenchError(
            f"{path}: larger than {MAX_INPUT_BYTES >> 20:,} MiB, the most kvbench reads"
        )
    return data


def input_text(path: str | Path) -> str:
    """`input_bytes` as UTF-8 text (a byte-order mark is dropped)."""
    data = input_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise KvbenchError(f"{path}:{line}: not UTF-8 text") from None


def input_json_object(path: str | Path, *, missing: str = "no such file") -> dict[str, Any]:
    """A JSON object from a user-given or kvbench-written file, every fault one line naming the
    file (and the line, for a syntax error); `missing` says what an absent file means."""
    try:
        data = json.loads(input_text(path))
    except FileNotFoundError:
        raise KvbenchError(f"{path}: {missing}") from None
    except json.JSONDecodeError as err:
        raise KvbenchError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise KvbenchError(f"{path}:1: expected a JSON object")
    return data
