"""Data-parallel replicas: G backends of one engine behind a round-robin dispatcher (the paper's
8-GPU setup), seen by the runner as one backend.

Request i goes to replica i mod G. Each replica runs its share on its own thread (an HTTP
backend runs its own event loop), and their events reach the caller's sink one at a time.
Server state is reported as the sum over replicas of each one's latest sample.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, TypeVar

from kvbench.backends.backlog import BacklogRun, ReplicaBacklogRun
from kvbench.backends.base import (
    Backend,
    DiscoveredProfile,
    EventSink,
    QueueSample,
    RequestRecord,
    RequestSpec,
)
from kvbench.benchmark.failures import MESSAGES_PER_KIND
from kvbench.errors import KvbenchError
from kvbench.workload import Workload

N = TypeVar("N", int, float)


def _sum(values: list[N | None]) -> N | None:
    present = [v for v in values if v is not None]
    return sum(present) if len(present) == len(values) else None


class _ReplicaSink:
    def __init__(self, owner: RoundRobinBackend, index: int, sink: EventSink):
        self.owner, self.index, self.sink = owner, index, sink

    def request(self, record: RequestRecord) -> None:
        with self.owner._lock:
            self.sink.request(record)

    def sample(self, sample: QueueSample) -> None:
        with self.owner._lock:
            self.owner._latest[self.index] = sample
            if any(s is None for s in self.owner._latest):
                return
            latest = [s for s in self.owner._latest if s is not None]
            kv_fractions = [s.kv_usage for s in latest]
            usage = [f for f in kv_fractions if f is not None]
            self.sink.sample(
                QueueSample(
                    time=sample.time,
                    in_flight=sum(s.in_flight for s in latest),
                    waiting=_sum([s.waiting for s in latest]),
                    running=_sum([s.running for s in latest]),
                    kv_used_tokens=_sum([s.kv_used_tokens for s in latest]),
                    kv_usage=sum(usage) / len(latest) if len(usage) == len(latest) else None,
                    preemptions_total=_sum([s.preemptions_total for s in latest]),
                )
            )


class RoundRobinBackend(Backend):
    def __init__(self, replicas: list[Backend]):
        if not replicas:
            raise KvbenchError("round-robin dispatch needs at least one replica")
        self.replicas = replicas
        self.name = replicas[0].name
        self.kind = replicas[0].kind
        self.has_backlog_probe = all(r.has_backlog_probe for r in replicas)
        self._lock = threading.Lock()
        self._latest: list[QueueSample | None] = []

    def discover_profile(self) -> DiscoveredProfile:
        """The first replica's profile; every replica must have the same KV capacity, or the
        theory's G·μ would not describe them."""
        found = [r.discover_profile() for r in self.replicas]
        self.kind = (
            "real" if all(r.kind == "real" for r in self.replicas) else self.replicas[0].kind
        )
        sizes = {f.profile.kv_tokens for f in found}
        if len(sizes) > 1:
            raise KvbenchError(
                f"replicas of {self.name} differ in KV capacity ({sorted(sizes)} tokens): "
                "give replicas of one configuration"
            )
        sources = dict(found[0].sources)
        sources["replicas"] = f"{len(self.replicas)} endpoints, round-robin"
        return DiscoveredProfile(found[0].profile, sources)

    @property
    def time_scale(self) -> float:
        return self.replicas[0].time_scale

    @property
    def notes(self) -> list[str]:
        return [n for r in self.replicas for n in getattr(r, "notes", [])]

    def bounded_backlog(
        self, workload: Workload, *, backlog: int, seed: int, chunk_size: int | None = None
    ) -> BacklogRun:
        """K per replica (K·G in all): replica i runs its own probe with seed + i."""
        runs: list[BacklogRun] = []
        try:
            for i, r in enumerate(self.replicas):
                runs.append(
                    r.bounded_backlog(
                        workload, backlog=backlog, seed=seed + i, chunk_size=chunk_size
                    )
                )
        except BaseException:
            for run in runs:
                run.close()
            raise
        return ReplicaBacklogRun(runs)

    def execute(self, requests: list[RequestSpec], sink: EventSink, *, duration: float) -> None:
        g = len(self.replicas)
        self._latest = [None] * g
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                self.replicas[i].execute(
                    requests[i::g], _ReplicaSink(self, i, sink), duration=duration
                )
            except BaseException as err:  # re-raised on the caller's thread below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(g)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def scrape_report(self) -> dict[str, Any] | None:
        """The replicas' reports added up (messages: the first few over all of them)."""
        reports = [r for r in (b.scrape_report() for b in self.replicas) if r is not None]
        if not reports:
            return None
        errors: Counter[str] = Counter()
        messages: list[str] = []
        for r in reports:
            errors.update(r["errors"])
            messages += [m for m in r["messages"] if m not in messages]
        return {
            "scrapes": sum(r["scrapes"] for r in reports),
            "errors": dict(errors),
            "messages": messages[:MESSAGES_PER_KIND],
        }

    def close(self) -> None:
        for r in self.replicas:
            r.close()
