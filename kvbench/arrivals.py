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
