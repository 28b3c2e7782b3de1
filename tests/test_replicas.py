"""Round-robin dispatch over data-parallel replicas."""

from __future__ import annotations

import pytest

from kvbench.backends.base import (
    Backend,
    DiscoveredProfile,
    QueueSample,
    RequestRecord,
    RequestSpec,
)
from kvbench.backends.replicas import RoundRobinBackend
from kvbench.errors import KvbenchError
from kvbench.profile import build_profile


class _Replica(Backend):
    """Finishes each request 1 s after its intended send and reports its own queue."""

    kind = "real"

    def __init__(self, name: str, kv_tokens: int = 131_000, fail: bool = False):
        self.name, self.kv_tokens, self.fail = name, kv_tokens, fail
        self.got: list[int] = []

    def discover_profile(self) -> DiscoveredProfile:
        return DiscoveredProfile(
            build_profile("vllm", kv_tokens=self.kv_tokens), {"kv_tokens": "test"}
        )

    def execute(self, requests, sink, *, duration):
        for r in requests:
            self.got.append(r.request_id)
            sink.request(
                RequestRecord(
                    r.request_id,
                    r.intended_send,
                    r.prompt_len,
                    r.output_len,
                    sent=r.intended_send,
                    finished=r.intended_send + 1,
                )
            )
        sink.sample(
            QueueSample(
                time=1.0, in_flight=len(requests), waiting=1, kv_usage=0.5, kv_used_tokens=100.0
            )
        )
        if self.fail:
            raise KvbenchError(f"{self.name}: connection reset")


class _Sink:
    def __init__(self):
        self.records, self.samples = [], []

    def request(self, r):
        self.records.append(r)

    def sample(self, s):
        self.samples.append(s)


def _specs(n):
    return [RequestSpec(i, i * 0.1, 100, 10) for i in range(n)]


def test_requests_go_round_robin_and_samples_are_summed():
    replicas = [_Replica(f"r{i}") for i in range(3)]
    backend = RoundRobinBackend(replicas)
    sink = _Sink()
    backend.execute(_specs(10), sink, duration=5.0)
    assert [r.got for r in replicas] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(r.request_id for r in sink.records) == list(range(10))
    # the first combined sample appears once every replica has reported
    last = sink.samples[-1]
    assert last.in_flight == 10 and last.waiting == 3 and last.kv_used_tokens == 300.0
    assert last.kv_usage == pytest.approx(0.5)


def test_replicas_must_share_a_kv_capacity():
    backend = RoundRobinBackend([_Replica("a"), _Replica("b", kv_tokens=65_536)])
    with pytest.raises(KvbenchError, match="differ in KV capacity"):
        backend.discover_profile()


def test_a_failing_replica_fails_the_run_and_keeps_the_others_records():
    backend = RoundRobinBackend([_Replica("a"), _Replica("b", fail=True)])
    sink = _Sink()
    with pytest.raises(KvbenchError, match="b: connection reset"):
        backend.execute(_specs(4), sink, duration=5.0)
    assert len(sink.records) == 4
