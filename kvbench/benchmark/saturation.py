"""Capacity of a simulated engine from a saturated run: every request is queued at t = 0, so the
queue never empties and the departure rate over the steady middle of the run is the rate the
engine sustains — its stability boundary λ*. Results are SIMULATED.

The same run gives what the paper would have measured (the median iteration time near
saturation, its b̄) and what a preemption-aware model needs (the batch tokens recomputed per
completed request because of preemption or retraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile
from kvbench.simulator import simulate
from kvbench.workload import Workload

# The steady window, as fractions of completions: skips the ramp-up while the cache first fills
# and the tail where the queue drains and the mix of running requests changes.
WINDOW = (0.2, 0.8)
_BATCHES = 20


@dataclass(frozen=True)
class SaturatedRun:
    """rate: departures per second in the steady window, with its batch-means standard error;
    median/mean_iteration_time: over the iterations in that window; preemption_waste: batch
    tokens per completed request beyond its own s + o − 1; completed: requests in the window."""

    rate: float
    rate_stderr: float
    median_iteration_time: float
    mean_iteration_time: float
    preemption_waste: float
    preemptions_per_request: float
    completed: int
    num_prompts: int
    simulated: bool = True


def saturated_run(
    profile: EngineProfile, workload: Workload, *, num_prompts: int = 20_000, seed: int = 0
) -> SaturatedRun:
    """Simulates `num_prompts` requests drawn from `workload`, all queued at t = 0."""
    if num_prompts < 10 * _BATCHES:
        raise KvbenchError(
            f"a saturated run needs at least {10 * _BATCHES} requests, got {num_prompts}"
        )
    prompt, output = workload.draw(num_prompts, seed)
    result = simulate(profile, prompt, output, np.zeros(num_prompts), seed=seed)
    finished = result.records["finished"].to_numpy()
    order = np.argsort(finished, kind="stable")
    times = finished[order]
    k1, k2 = (int(f * num_prompts) for f in WINDOW)
    span = times[k2] - times[k1]
    if not span > 0:
        raise KvbenchError("saturated run: no time passed in the steady window")
    rate = float((k2 - k1) / span)
    # Batch means over equal slices of time (completions can coincide, so not of counts).
    counts, _ = np.histogram(times[k1:k2], bins=_BATCHES, range=(times[k1], times[k2]))
    rate_se = float(np.std(counts / (span / _BATCHES), ddof=1) / math.sqrt(_BATCHES))

    series = result.timeseries
    start = series["time"].to_numpy()
    in_window = (start >= times[k1]) & (start < times[k2])
    iteration_time = series["iteration_time"].to_numpy()[in_window]
    batch_tokens = float(series["batch_tokens"].to_numpy()[in_window].sum())
    done = order[k1:k2]
    useful = float(np.sum(prompt[done] + output[done] - 1))
    preemptions = result.records["preemptions"].to_numpy()
    return SaturatedRun(
        rate=rate,
        rate_stderr=rate_se,
        median_iteration_time=float(np.median(iteration_time)),
        mean_iteration_time=float(np.mean(iteration_time)),
        preemption_waste=max(0.0, (batch_tokens - useful) / (k2 - k1)),
        preemptions_per_request=float(preemptions.sum() / num_prompts),
        completed=k2 - k1,
        num_prompts=num_prompts,
    )
