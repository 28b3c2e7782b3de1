"""Progress display for long runs and searches (rich, on stderr, only on a terminal).

A run's progress is the time of the latest event it reported, against its planned duration, so
a real engine's run advances with the wall clock and a simulated one jumps to the end at once.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kvbench.backends.base import QueueSample, RequestRecord


def _enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class RunProgress:
    """An EventSink that shows a bar of run time reported / planned, and requests done."""

    def __init__(self, label: str, planned_seconds: float | None, *, quiet: bool = False) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._done = 0
        self._planned = planned_seconds
        if _enabled(quiet):
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task(label, total=planned_seconds, detail="")

    def __enter__(self) -> RunProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _advance(self, time: float | None) -> None:
        if self._progress is None or self._task is None or time is None:
            return
        done = time if self._planned is None else min(time, self._planned)
        self._progress.update(
            self._task, completed=done, detail=f"{self._done:,} requests done · t = {time:,.0f} s"
        )

    def request(self, record: RequestRecord) -> None:
        self._done += 1
        self._advance(record.finished or record.sent)

    def sample(self, sample: QueueSample) -> None:
        self._advance(sample.time)


def probe_line(rate: float, duration: float, verdict: str, engine_seconds: float) -> str:
    return f"  probe λ = {rate:.3f} req/s  {duration:,.0f} s  {verdict:<12}  ({engine_seconds:,.0f} engine-s so far)"


def echo_progress(text: str, *, quiet: bool = False) -> None:
    """A line on stderr for the user watching (never part of --json output)."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)
