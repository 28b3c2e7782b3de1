"""b̄: a representative engine iteration time near saturation, from the engine's own timings.

The paper takes the median measured iteration time near saturation, or a 5–10% trimmed mean
when the tail is heavy. Timings come from the server when it reports each iteration
(TensorRT-LLM's `iterLatencyMS`), otherwise from the client: a decoding request gets exactly
one token per engine iteration, so its time per output token, (finished − first token) /
(output tokens − 1), is the mean iteration time over its decode. Only requests that decoded
while others were still waiting for admission count: the engine was saturated then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvbench import validate
from kvbench.backends.base import RequestRecord
from kvbench.errors import KvbenchError

MIN_TIMINGS = 20
SERVER_SOURCE = "per-iteration latency (server)"
CLIENT_SOURCE = "per-request time per output token while requests waited (client)"
PROBE_SOURCE = "per-request time per output token in {where}, after its warm-up (client)"


@dataclass(frozen=True)
class BatchTimeEstimate:
    value: float
    method: str  # "median" or "trimmed-mean"
    trim: float
    samples: int
    source: str
    q25: float
    q75: float


def saturated_decode_times(records: list[RequestRecord], after: float = 0.0) -> np.ndarray:
    """Time per output token of each request whose whole decode happened while some request
    was still waiting for its first token (the engine ran full batches all along), counting
    only requests whose first token came at or after `after` (the end of a run's warm-up)."""
    done = [
        (r.first_token, r.finished, r.output_tokens or r.output_len)
        for r in records
        if r.error is None
        and r.first_token is not None
        and r.first_token >= after
        and r.finished is not None
        and (r.output_tokens or r.output_len) > 1
    ]
    if not done:
        return np.empty(0)
    last_admission = max(first for first, _, _ in done)
    return np.array(
        [
            (finished - first) / (tokens - 1)
            for first, finished, tokens in done
            if finished <= last_admission
        ]
    )


def check_trim(trim: float) -> float:
    """The fraction cut from each tail: [0, 0.5), as a trimmed mean allows (0.5 would leave
    nothing, or just the median)."""
    return validate.in_range(trim, "--trim", 0.0, 0.5, high_open=True)


def estimate_batch_time(
    timings: np.ndarray, *, source: str, trim: float = 0.0
) -> BatchTimeEstimate:
    """The median of `timings` (trim = 0) or their mean with `trim` cut from each tail."""
    timings = np.asarray(timings, dtype=np.float64)
    timings = timings[np.isfinite(timings) & (timings > 0)]
    if timings.size < MIN_TIMINGS:
        raise KvbenchError(
            f"only {timings.size} iteration timings near saturation (need {MIN_TIMINGS}) "
            "to estimate the batch time; give --batch-time or a longer calibration"
        )
    check_trim(trim)
    if trim == 0:
        value = float(np.median(timings))
    else:  # as scipy.stats.trim_mean: cut ⌊n·trim⌋ values from each end
        cut = int(timings.size * trim)
        value = float(np.sort(timings)[cut : timings.size - cut].mean())
    q25, q75 = np.percentile(timings, [25, 75])
    return BatchTimeEstimate(
        value=value,
        method="median" if trim == 0 else "trimmed-mean",
        trim=trim,
        samples=int(timings.size),
        source=source,
        q25=float(q25),
        q75=float(q75),
    )
