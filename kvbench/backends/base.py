"""The backend interface shared by the simulator, the HTTP emulators and real engines.

A run hands a backend a schedule of requests (intended send time, exact prompt and output
lengths); the backend executes it — in virtual time for the simulator, in real time over HTTP
for engines — and reports every request's events and periodic samples of server state to a sink.
Times are seconds from the start of the run (t = 0 is the schedule's origin).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile

if TYPE_CHECKING:
    from kvbench.backends.backlog import BacklogRun
    from kvbench.calibration import IterationWindows
    from kvbench.workload import Workload

BackendKind = Literal["simulated", "emulated", "real"]


@dataclass(frozen=True)
class RequestSpec:
    request_id: int
    intended_send: float
    prompt_len: int  # prefix included
    output_len: int
    # a shared-prefix workload's request opens with prefix `prefix_id`'s `prefix_len` tokens,
    # the same tokens in every request naming it (kvbench.workload.SharedPrefix)
    prefix_id: int | None = None
    prefix_len: int = 0


@dataclass
class RequestRecord:
    """What happened to one request. Times are None when the event did not happen (yet)."""

    request_id: int
    intended_send: float
    prompt_len: int
    output_len: int
    sent: float | None = None
    first_token: float | None = None
    finished: float | None = None
    output_tokens: int | None = None  # as the server reported it (usage), never re-tokenised
    # one time per output token (a chunk of k tokens spreads its gap over them; see DriverRecord)
    token_times: list[float] = field(default_factory=list)
    preemptions: int | None = None  # known to the simulator only
    error: str | None = None  # failure kind, e.g. "http_500", "timeout", "short_output"
    message: str | None = None  # what the failure said (the server's error text), no credentials
    admitted: float | None = None  # first scheduled by the engine; known to the simulator only


@dataclass(frozen=True)
class QueueSample:
    """Server state at one instant. Fields an engine does not expose are None."""

    time: float
    in_flight: int  # client side: sent and not finished
    waiting: int | None = None
    running: int | None = None
    kv_used_tokens: float | None = None
    kv_usage: float | None = None  # 0..1
    preemptions_total: int | None = None


@dataclass(frozen=True)
class DiscoveredProfile:
    """The engine profile a backend read at runtime, with where each value came from
    (field name → e.g. "vllm:cache_config_info label", "launch recipe", "preset")."""

    profile: EngineProfile
    sources: dict[str, str]


class EventSink(Protocol):
    """Receives results as they happen; the recorder writes them to disk incrementally."""

    def request(self, record: RequestRecord) -> None: ...

    def sample(self, sample: QueueSample) -> None: ...


class Backend(ABC):
    """One engine (possibly several replicas) that can execute a request schedule."""

    name: str
    kind: BackendKind
    #: True when executing a longer schedule with the same seed repeats a shorter one exactly
    #: (the simulator), so the search can extend a run and pay only for the added seconds.
    replays_prefix: bool = False
    #: True when `bounded_backlog` runs the bounded-backlog probe (boundary's default then).
    has_backlog_probe: bool = False

    @property
    def time_scale(self) -> float:
        """Engine seconds per real second. An emulator may run its engine faster than real time;
        the backend still reports every time in the engine's seconds (the simulator's are
        virtual)."""
        return 1.0

    @abstractmethod
    def discover_profile(self) -> DiscoveredProfile:
        """Read M, page size, token budget, chunk size, running cap and policy from the engine."""

    @abstractmethod
    def execute(self, requests: list[RequestSpec], sink: EventSink, *, duration: float) -> None:
        """Send `requests` at their intended times, report events to `sink`, and stop at
        `duration` seconds after the start (requests still in flight then are reported
        unfinished). Raises KvbenchError naming the endpoint if the engine fails; everything
        reported to `sink` before that stays recorded."""

    def bounded_backlog(
        self, workload: Workload, *, backlog: int, seed: int, chunk_size: int | None = None
    ) -> BacklogRun:
        """Start the bounded-backlog probe (`kvbench.backends.backlog`): `backlog` requests drawn
        from `workload` kept sent but not started. `chunk_size`: the prefill chunk ŝ its served
        work is counted with, where the caller knows better than the engine says (None: the
        backend's own). Backends that cannot run it say so."""
        raise KvbenchError(
            f"{self.name}: no bounded-backlog probe on this backend yet; use --method open-loop"
        )

    def scrape_report(self) -> dict[str, Any] | None:
        """What reading server state during the last `execute` ran into: {"scrapes": n,
        "errors": {kind: n}, "messages": [the first few distinct, no credentials]}; None for a
        backend that reads no state over the network (the simulator)."""
        return None

    def iteration_windows(self) -> IterationWindows | None:
        """Every busy iteration the engine itself reported so far, for `fit_iteration_time`
        (TensorRT-LLM's iteration stats); None for an engine that reports none."""
        return None

    def close(self) -> None:  # noqa: B027 (a hook: most backends hold nothing to release)
        """Release what the backend holds (stop a launched engine, close sessions)."""
