"""A backend whose discovered profile is amended with what the engine does not say itself: a
measured b̄ where it reports no iteration time (the search sizes its runs from it), and the
settings the user gave (`--engine-setting`), which replace what was read or assumed."""

from __future__ import annotations

from typing import Any

from kvbench.backends.backlog import BacklogRun
from kvbench.backends.base import Backend, DiscoveredProfile, RequestSpec
from kvbench.backends.settings import apply_given
from kvbench.profile import IterationTimeModel
from kvbench.workload import Workload


class AmendedProfile(Backend):
    def __init__(
        self,
        backend: Backend,
        *,
        batch_time: float | None = None,
        batch_source: str = "",
        settings: dict[str, int] | None = None,
    ):
        self.backend, self.batch_time, self.batch_source = backend, batch_time, batch_source
        self.settings = dict(settings or {})
        self.name, self.kind = backend.name, backend.kind
        self.replays_prefix = getattr(backend, "replays_prefix", False)
        self.has_backlog_probe = backend.has_backlog_probe
        self.backlog_run: BacklogRun | None = None  # the last bounded-backlog probe started

    @property
    def time_scale(self) -> float:
        return self.backend.time_scale

    @property
    def notes(self) -> list[str]:
        return list(getattr(self.backend, "notes", []))

    def discover_profile(self) -> DiscoveredProfile:
        found = apply_given(self.backend.discover_profile(), self.settings)
        if self.batch_time is None or found.profile.iteration_time.known:
            return found
        sources = dict(found.sources, iteration_time=self.batch_source)
        profile = found.profile.replace(iteration_time=IterationTimeModel.constant(self.batch_time))
        return DiscoveredProfile(profile, sources)

    def execute(self, requests: list[RequestSpec], sink, *, duration: float) -> None:
        self.backend.execute(requests, sink, duration=duration)

    def bounded_backlog(
        self, workload: Workload, *, backlog: int, seed: int, chunk_size: int | None = None
    ) -> BacklogRun:
        # served work counted with the chunk the search's E[g] uses: the given one, if any
        if chunk_size is None:
            chunk_size = self.discover_profile().profile.chunk_size
        self.backlog_run = self.backend.bounded_backlog(
            workload, backlog=backlog, seed=seed, chunk_size=chunk_size
        )
        return self.backlog_run

    def scrape_report(self) -> dict[str, Any] | None:
        return self.backend.scrape_report()

    def close(self) -> None:
        self.backend.close()
