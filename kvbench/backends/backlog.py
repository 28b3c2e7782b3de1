"""The bounded-backlog probe's interface: a client keeps exactly K requests sent but not yet
started (no first token), sending the next one the moment one starts, so the engine runs
saturated from its first seconds while its queue never grows past K.

A backend that can run it returns a `BacklogRun`, advanced on the engine's clock; each step
reports bins of served work (`kvbench._core.served_work` defines it: G(s, k) per request after k
streamed tokens), first tokens and completions, and the backlog the client kept. The simulator
counts tokens in Rust as it runs (`SimBacklogRun`); a streaming HTTP client gives the same bins
from its per-request (time, tokens so far) events through `_core.served_work`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kvbench import _core
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile
from kvbench.workload import Workload

# Bin width of the served-work series, engine seconds: several iterations per bin, and far
# below a request's life (the estimator's batches are at least a quarter life).
BIN_WIDTH = 0.25


@dataclass(frozen=True)
class BacklogBins:
    """Consecutive bins of width `bin_width`, the first starting at first·bin_width.

    work: served work (token·iterations of KV) per bin; starts/finishes: first tokens and
    completions per bin; start_prompt/start_output: the prompt and output tokens of the requests
    that started in each bin (the served-work estimator's control variates); backlog: requests
    sent and not started at each bin's end (the client's count); waiting: the engine's own
    waiting gauge there (None when it has none)."""

    first: int
    bin_width: float
    work: np.ndarray
    starts: np.ndarray
    start_prompt: np.ndarray
    start_output: np.ndarray
    finishes: np.ndarray
    backlog: np.ndarray
    waiting: np.ndarray | None


class BacklogRun(Protocol):
    backlog: int

    def advance(self, until: float) -> BacklogBins:
        """Run to `until` engine seconds from the start; the bins that ended since the last call."""

    def iteration_time(self, after: float) -> float | None:
        """The engine's own mean iteration time from `after` engine seconds on, where the engine
        counts its iterations; None otherwise."""

    def close(self) -> None: ...


class ReplicaBacklogRun:
    """The probe over several replicas, each kept at K by its own run (so the replica whose
    request started is the one topped up, as the simulator's client does); bins are the sums
    over replicas, the waiting gauge too (None unless every replica has one). The runs start one
    after another, milliseconds apart: each bins on its own clock."""

    def __init__(self, runs: list[BacklogRun]) -> None:
        self.runs = runs
        self.backlog = runs[0].backlog

    def advance(self, until: float) -> BacklogBins:
        parts = [run.advance(until) for run in self.runs]
        gauges = [p.waiting for p in parts if p.waiting is not None]
        return BacklogBins(
            first=parts[0].first,
            bin_width=parts[0].bin_width,
            work=np.sum([p.work for p in parts], axis=0),
            starts=np.sum([p.starts for p in parts], axis=0),
            start_prompt=np.sum([p.start_prompt for p in parts], axis=0),
            start_output=np.sum([p.start_output for p in parts], axis=0),
            finishes=np.sum([p.finishes for p in parts], axis=0),
            backlog=np.sum([p.backlog for p in parts], axis=0),
            waiting=np.sum(gauges, axis=0) if len(gauges) == len(parts) else None,
        )

    def iteration_time(self, after: float) -> float | None:
        """The replicas' mean (each runs its own iterations), when every replica counts them."""
        times = [t for run in self.runs if (t := run.iteration_time(after)) is not None]
        return float(np.mean(times)) if len(times) == len(self.runs) else None

    def close(self) -> None:
        for run in self.runs:
            run.close()


# Requests drawn per extension of a probe's stream, and the stretch of engine time one Rust call
# of the simulator may run: the stream is topped up between stretches so it never runs out.
DRAW = 4096
_STRETCH = 30.0


class RequestStream:
    """A probe's request stream, drawn in chunks of DRAW, each from its own seed, so a run is
    reproducible for a seed however far it is extended."""

    def __init__(self, workload: Workload, seed: int) -> None:
        self.workload = workload
        self.seed = seed
        self._chunks = 0

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """The next DRAW requests' (prompt lengths, output lengths)."""
        chunk_seed = int(np.random.SeedSequence([self.seed, self._chunks]).generate_state(1)[0])
        self._chunks += 1
        return self.workload.draw(DRAW, chunk_seed)


class SimBacklogRun:
    """The bounded-backlog probe on the simulator, in virtual time (results SIMULATED),
    reproducible for a seed however it is advanced."""

    def __init__(
        self,
        profile: EngineProfile,
        workload: Workload,
        *,
        backlog: int,
        replicas: int = 1,
        seed: int = 0,
        bin_width: float = BIN_WIDTH,
    ) -> None:
        self.backlog = backlog
        self.bin_width = bin_width
        self._stream = RequestStream(workload, seed)
        s, o = self._stream.draw()
        try:
            self._sim = _core.BacklogSim(
                profile,
                s,
                o,
                backlog=backlog,
                replicas=replicas,
                seed=seed,
                bin_width=bin_width,
            )
        except ValueError as err:
            raise KvbenchError(f"simulator: {err}") from None
        # the stream must outlast a stretch at the most starts a stretch can see
        self._reserve = 2 * DRAW

    def advance(self, until: float) -> BacklogBins:
        parts = []
        while True:
            while self._sim.remaining < self._reserve:
                self._sim.extend(*self._stream.draw())
            step = min(until, self._sim.clock + _STRETCH)
            try:
                parts.append(self._sim.advance(step))
            except ValueError as err:
                raise KvbenchError(f"simulator: {err}") from None
            if step >= until:
                break
        return BacklogBins(
            first=parts[0]["first"],
            bin_width=self.bin_width,
            **{
                k: np.concatenate([p[k] for p in parts])
                for k in (
                    "work",
                    "starts",
                    "start_prompt",
                    "start_output",
                    "finishes",
                    "backlog",
                    "waiting",
                )
            },
        )

    def iteration_time(self, after: float) -> float | None:
        return None  # the simulated engine's iteration-time model is its profile's, known

    def close(self) -> None:
        pass
