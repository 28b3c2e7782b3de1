"""b̄ of an engine that does not report its iteration time, from a short saturating burst.

No engine serves its iteration-time model over HTTP, so the theory's μ and the boundary search's
run lengths (in units of a request's life) are unknown until b̄ is measured. Both `compare` and
`boundary` measure it the same way: one warm-up request (TensorRT-LLM publishes its KV-cache
stats, and so M, only after an iteration has run; every engine's first request pays one-off
start-up costs), then a burst at t = 0 of CALIBRATION_FILL KV caches' worth of requests, whose
saturated part gives the client-side b̄ (kvbench.benchmark.batch_time) and a rough capacity.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from kvbench.backends.base import (
    Backend,
    EventSink,
    QueueSample,
    RequestRecord,
    RequestSpec,
)
from kvbench.benchmark.batch_time import (
    CLIENT_SOURCE,
    MIN_TIMINGS,
    BatchTimeEstimate,
    estimate_batch_time,
    saturated_decode_times,
)
from kvbench.profile import EngineProfile
from kvbench.workload import Workload

# A calibration burst holds this many KV caches' worth of requests, so that the engine runs full
# batches while about half of them wait.
CALIBRATION_FILL = 2.0
# Long enough for one 16-token prompt and 2 output tokens on any engine that is up at all.
WARMUP_SECONDS = 60.0


class _Discard:
    """An event sink that keeps nothing (the warm-up request)."""

    def request(self, record: RequestRecord) -> None:
        pass

    def sample(self, sample: QueueSample) -> None:
        pass


class _Keep:
    """Keeps the burst's records and passes every event on."""

    def __init__(self, sink: EventSink | None):
        self.sink = sink
        self.records: list[RequestRecord] = []

    def request(self, record: RequestRecord) -> None:
        self.records.append(record)
        if self.sink is not None:
            self.sink.request(record)

    def sample(self, sample: QueueSample) -> None:
        if self.sink is not None:
            self.sink.sample(sample)


def warm_up(backend: Backend) -> None:
    backend.execute([RequestSpec(0, 0.0, 16, 2)], _Discard(), duration=WARMUP_SECONDS)


def calibration_requests(workload: Workload, kv_tokens: int, replicas: int, seed: int):
    """A burst at t = 0 of CALIBRATION_FILL KV caches' worth of requests (by mean footprint)."""
    prompts, outputs = workload.draw(4096, seed)
    footprint = float(np.mean(prompts + outputs))
    n = max(64, math.ceil(CALIBRATION_FILL * kv_tokens * replicas / footprint))
    prompts, outputs = workload.draw(n, seed)
    return [
        RequestSpec(request_id=i, intended_send=0.0, prompt_len=int(s), output_len=int(o))
        for i, (s, o) in enumerate(zip(prompts, outputs, strict=True))
    ]


def burst_duration(requests: list[RequestSpec]) -> float:
    """Long enough for every request to finish at a pessimistic 0.2 s per iteration is not
    needed: the burst's saturated part is what counts, so bound it by the decode of ~3 waves."""
    return 3 * CALIBRATION_FILL * float(np.mean([r.output_len for r in requests])) * 0.2


def burst_throughput(records: list[RequestRecord]) -> float | None:
    """Completions per second in a burst while some request was still waiting for its first
    token (the engine saturated): a direct, rough measure of the engine's capacity. None with
    fewer than MIN_TIMINGS such completions."""
    firsts = [r.first_token for r in records if r.first_token is not None]
    if not firsts:
        return None
    last_admission = max(firsts)
    done = sorted(
        r.finished
        for r in records
        if r.error is None and r.finished is not None and r.finished <= last_admission
    )
    if len(done) < MIN_TIMINGS or done[-1] <= done[0]:
        return None
    return (len(done) - 1) / (done[-1] - done[0])


def engine_seconds(backend: Backend, records: list[RequestRecord], wall: float) -> float:
    """Engine time a run took: virtual for a simulator (its last event), wall time otherwise,
    in the engine's seconds (an emulator may run faster or slower than real time)."""
    if backend.kind == "simulated":
        times = [r.finished or r.first_token or r.sent or 0.0 for r in records]
        return float(max(times, default=0.0))
    return wall * backend.time_scale


@dataclass(frozen=True)
class Burst:
    estimate: BatchTimeEstimate
    throughput: float | None  # burst_throughput
    engine_seconds: float
    requests: int


def run_burst(
    backend: Backend,
    workload: Workload,
    profile: EngineProfile,
    *,
    replicas: int = 1,
    seed: int = 0,
    trim: float = 0.0,
    sink: EventSink | None = None,
) -> Burst:
    """Run the calibration burst on `backend` (events also to `sink`) and estimate b̄ from it.
    Raises KvbenchError when the burst saturated too little to time (too few timings)."""
    requests = calibration_requests(workload, profile.kv_tokens, replicas, seed)
    keep = _Keep(sink)
    started = time.monotonic()
    try:
        backend.execute(requests, keep, duration=burst_duration(requests))
    finally:
        elapsed = engine_seconds(backend, keep.records, time.monotonic() - started)
    estimate = estimate_batch_time(
        saturated_decode_times(keep.records), source=CLIENT_SOURCE, trim=trim
    )
    return Burst(estimate, burst_throughput(keep.records), elapsed, len(requests))
