"""Arrival schedules: the Python front of the Rust generators in `kvbench._core`.

Every function returns cumulative arrival times in seconds (float64, non-decreasing). Random
schedules are reproducible: the same (rate, n, burstiness, seed) gives the same array on every
platform (Pcg64 seeded from `seed`, see rust/arrivals.rs). Arguments are checked here so a bad
flag becomes a one-line KvbenchError rather than a ValueError from Rust.
"""

from __future__ import annotations

import math

import numpy as np

from kvbench import _core, validate
from kvbench.errors import KvbenchError


def arrival_times(rate: float, n: int, *, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """n arrival times at `rate` requests/s: Poisson when burstiness == 1, otherwise gamma gaps
    with shape = burstiness and mean 1/rate (vLLM's --burstiness). rate = inf sends all n at
    time 0, as vLLM's --request-rate inf does."""
    rate = validate.positive_number(rate, "request rate", allow_inf=True)
    n = validate.non_negative_int(n, "number of arrivals")
    seed = validate.seed(seed)
    burstiness = validate.positive_number(burstiness, "burstiness")
    if math.isinf(rate):
        return np.zeros(n)
    if burstiness == 1.0:
        return _core.poisson_arrivals(rate, n, seed)
    return _core.gamma_arrivals(rate, burstiness, n, seed)


def constant_arrival_times(rate: float, n: int) -> np.ndarray:
    """n evenly spaced arrivals at k/rate, k = 1..n."""
    rate = validate.positive_number(rate, "request rate", allow_inf=True)
    n = validate.non_negative_int(n, "number of arrivals")
    if math.isinf(rate):
        return np.zeros(n)
    return _core.constant_arrivals(rate, n)


def replay_arrival_times(timestamps: np.ndarray, time_scale: float = 1.0) -> np.ndarray:
    """A recorded schedule (seconds, non-decreasing) shifted to start at 0 and divided by
    `time_scale`: time_scale > 1 replays faster (time_scale = 2 doubles the rate), < 1 slower."""
    time_scale = validate.positive_number(time_scale, "time scale")
    try:
        stamps = np.ascontiguousarray(timestamps, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise KvbenchError(f"timestamps must be numbers: {err}") from None
    if stamps.ndim != 1:
        raise KvbenchError(f"timestamps must be one-dimensional, got shape {stamps.shape}")
    try:
        return _core.replay_arrivals(stamps, time_scale)
    except ValueError as err:
        raise KvbenchError(f"cannot replay trace: {err}") from None


def trace_rate(timestamps: np.ndarray) -> float:
    """A recorded schedule's mean rate in requests/s: (n − 1) requests over its span, the rate
    at which `replay_schedule` replays it with speed 1. KvbenchError when it spans no time."""
    stamps = np.asarray(timestamps, dtype=np.float64)
    span = float(stamps[-1] - stamps[0]) if stamps.size else 0.0
    if stamps.size < 2 or not span > 0:
        raise KvbenchError("cannot replay a trace whose timestamps span no time")
    return (stamps.size - 1) / span


def replay_schedule(
    timestamps: np.ndarray,
    rate: float,
    *,
    num_prompts: int | None = None,
    duration: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A recorded schedule replayed at mean rate `rate` (its own gaps, scaled by one factor):
    (arrival times from 0, the trace row each arrival replays), for `num_prompts` arrivals or
    every arrival before `duration`. Past its end the trace starts over, one mean gap after its
    last request, so a run may be longer than the trace; a longer run extends a shorter one."""
    rate = validate.positive_number(rate, "request rate")
    base = trace_rate(timestamps)
    stamps = np.asarray(timestamps, dtype=np.float64) - timestamps[0]
    period = stamps[-1] + 1.0 / base  # one pass: n requests at the trace's mean rate
    if num_prompts is not None:
        n = validate.non_negative_int(num_prompts, "number of arrivals")
    else:
        assert duration is not None
        # one pass lasts n_rows / rate seconds
        n = stamps.size * (int(duration * rate // stamps.size) + 2)
    passes = -(-n // stamps.size)
    looped = (stamps[None, :] + period * np.arange(passes)[:, None]).ravel()[:n]
    times = replay_arrival_times(looped, rate / base)
    rows = np.arange(n, dtype=np.int64) % stamps.size
    if duration is not None:
        keep = int(np.searchsorted(times, duration, side="left"))
        times, rows = times[:keep], rows[:keep]
    return times, rows
