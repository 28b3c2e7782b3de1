"""The simulated engine as a backend (kind "simulated"): the Rust simulator in virtual time.

It reports what a real-time run against the same engine would: every request's send, first-token
and finish times (a virtual client keeps its schedule exactly, so sends equal intended times) and
queue samples at the period an HTTP backend scrapes, in the order a live run would see them. So
the runner, the verdict and the search cannot tell it from a real engine, except that it runs in
a fraction of the time and is labelled SIMULATED everywhere.

A longer schedule with the same seed replays a shorter one exactly (same arrivals, same
iteration-time noise), so extending a run costs only the added seconds: `replays_prefix`.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np

from kvbench import _core
from kvbench.backends.backlog import SimBacklogRun
from kvbench.backends.base import (
    Backend,
    DiscoveredProfile,
    EventSink,
    QueueSample,
    RequestRecord,
    RequestSpec,
)
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile
from kvbench.simulator import simulate
from kvbench.workload import Workload

# The scrape period of the HTTP backends, so simulated and real runs sample alike.
SAMPLE_PERIOD = 0.25


def _optional(values: np.ndarray) -> list[float | None]:
    """Floats with NaN (did not happen) as None, as RequestRecord has them."""
    return [None if v != v else v for v in values.tolist()]


class SimBackend(Backend):
    kind = "simulated"
    replays_prefix = True
    has_backlog_probe = True

    def __init__(
        self,
        profile: EngineProfile,
        *,
        name: str | None = None,
        replicas: int = 1,
        seed: int = 0,
        sample_period: float = SAMPLE_PERIOD,
        sources: dict[str, str] | None = None,
    ) -> None:
        self.profile = profile
        self.name = name or f"sim:{profile.policy}"
        self.replicas = replicas
        self.seed = seed
        self.sample_period = sample_period
        self.sources = sources or {f.name: "preset" for f in fields(EngineProfile)}

    def discover_profile(self) -> DiscoveredProfile:
        return DiscoveredProfile(self.profile, dict(self.sources))

    def execute(self, requests: list[RequestSpec], sink: EventSink, *, duration: float) -> None:
        s = np.fromiter((r.prompt_len for r in requests), np.int64, len(requests))
        o = np.fromiter((r.output_len for r in requests), np.int64, len(requests))
        t = np.fromiter((r.intended_send for r in requests), np.float64, len(requests))
        until = None if math.isinf(duration) else float(duration)
        if until is not None:
            keep = t < until
            s, o, t, requests = (
                s[keep],
                o[keep],
                t[keep],
                [r for r, k in zip(requests, keep, strict=True) if k],
            )
        result = simulate(
            self.profile,
            s,
            o,
            t,
            replicas=self.replicas,
            seed=self.seed,
            until=until,
            sample_interval=self.sample_period,
        )
        rec = result.records
        fin = rec["finished"].to_numpy()
        end = until if until is not None else float(np.nanmax(fin, initial=0.0))
        samples = self._samples(result.timeseries, t, fin, end)
        # A live run reports a request when it finishes and a still-running one at the end.
        report_at = np.where(np.isnan(fin), np.inf, fin)
        order = np.argsort(report_at, kind="stable")
        columns = [
            _optional(rec[c].to_numpy()[order]) for c in ("first_token", "finished", "admitted")
        ]
        preemptions = rec["preemptions"].to_numpy()[order].tolist()
        sample_times = [x.time for x in samples]
        si = 0
        for i, first, finished, admitted, pre in zip(
            order.tolist(), *columns, preemptions, strict=True
        ):
            at = math.inf if finished is None else finished
            while si < len(samples) and sample_times[si] <= at:
                sink.sample(samples[si])
                si += 1
            spec = requests[i]
            sink.request(
                RequestRecord(
                    request_id=spec.request_id,
                    intended_send=spec.intended_send,
                    prompt_len=spec.prompt_len,
                    output_len=spec.output_len,
                    sent=spec.intended_send,
                    first_token=first,
                    finished=finished,
                    output_tokens=None if finished is None else spec.output_len,
                    preemptions=int(pre),
                    admitted=admitted,
                )
            )
        for sample in samples[si:]:
            sink.sample(sample)

    def bounded_backlog(
        self, workload: Workload, *, backlog: int, seed: int, chunk_size: int | None = None
    ) -> SimBacklogRun:
        # `backlog` per replica: the client tops up the replica whose request started
        if chunk_size not in (None, self.profile.chunk_size):
            raise KvbenchError(
                f"{self.name}: the simulator serves with its profile's chunk "
                f"({self.profile.chunk_size}), not {chunk_size}"
            )
        return SimBacklogRun(
            self.profile, workload, backlog=backlog, replicas=self.replicas, seed=seed
        )

    def _samples(self, ts, sent: np.ndarray, finished: np.ndarray, end: float) -> list[QueueSample]:
        if ts.empty:
            return []
        by_time = ts.groupby("time", sort=True)[["waiting", "running", "kv_used"]].sum()
        times = by_time.index.to_numpy(dtype=np.float64)
        keep = times < end
        times = times[keep]
        step_t, step_n = _core.in_system_steps(sent, finished)
        idx = np.searchsorted(step_t, times, side="right") - 1
        in_flight = np.where(idx >= 0, step_n[np.maximum(idx, 0)], 0.0)
        kv_total = self.profile.usable_kv_tokens * self.replicas
        waiting = by_time["waiting"].to_numpy()[keep]
        running = by_time["running"].to_numpy()[keep]
        kv = by_time["kv_used"].to_numpy(dtype=np.float64)[keep]
        return [
            QueueSample(
                time=a,
                in_flight=int(b),
                waiting=int(c),
                running=int(d),
                kv_used_tokens=e,
                kv_usage=e / kv_total,
            )
            for a, b, c, d, e in zip(
                times.tolist(),
                in_flight.tolist(),
                waiting.tolist(),
                running.tolist(),
                kv.tolist(),
                strict=True,
            )
        ]
