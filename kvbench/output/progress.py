"""Progress display for long runs and searches, on stderr: a live bar on a terminal, and off one
(a job runner's log, `2> file`) plain lines: one per probe and one a minute, so an unattended run
is never silent for long.

A run's progress is the time of the latest event it reported, against its planned duration, so
a real engine's run advances with the wall clock and a simulated one jumps to the end at once.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kvbench.backends.base import QueueSample, RequestRecord

# Seconds between the plain status lines of an unattended run.
HEARTBEAT_SECONDS = 60.0


def _enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Heartbeat:
    """Calls `beat()` every `interval` seconds on a daemon thread while open: the per-minute
    line of an unattended run, which must come even while the engine sends nothing (a hung
    server, a long calibration)."""

    def __init__(self, beat: Callable[[], None], interval: float = HEARTBEAT_SECONDS) -> None:
        self._beat, self._interval = beat, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kvbench-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RunProgress:
    """An EventSink that shows a bar of run time reported / planned, and requests done; off a
    terminal, a plain line of the same a minute (`interval` seconds)."""

    def __init__(
        self,
        label: str,
        planned_seconds: float | None,
        *,
        quiet: bool = False,
        interval: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._heartbeat: Heartbeat | None = None
        self._label = label
        self._done = 0
        self._time: float | None = None
        self._started = time.monotonic()
        self._planned = planned_seconds
        if not quiet and not on_terminal():
            self._heartbeat = Heartbeat(self._line, interval)
        elif _enabled(quiet):
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
        if self._heartbeat is not None:
            self._heartbeat.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._heartbeat is not None:
            self._heartbeat.__exit__()

    def _line(self) -> None:
        at = "no event yet" if self._time is None else f"t = {self._time:,.0f} s"
        planned = "" if self._planned is None else f" of {self._planned:,.0f} s"
        echo_progress(
            f"  {self._label}: {at}{planned}, {self._done:,} requests done "
            f"({elapsed(time.monotonic() - self._started)} elapsed)"
        )

    def _advance(self, time: float | None) -> None:
        if time is not None:
            self._time = time if self._time is None else max(self._time, time)
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


def elapsed(seconds: float) -> str:
    """A wall-clock span as a person reads it in a log: 45 s, 12 min, 3 h 05 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def budget_text(spent: float, budget: float) -> str:
    """Engine seconds used against the search's budget (--max-engine-seconds)."""
    return f"{spent:,.0f} of {budget:,.0f} engine-s used, {max(budget - spent, 0.0):,.0f} left"


def probe_line(
    rate: float, duration: float, verdict: str, engine_seconds: float, budget: float
) -> str:
    return (
        f"  probe λ = {rate:.3f} req/s  {duration:,.0f} s  {verdict:<12}  "
        f"({budget_text(engine_seconds, budget)})"
    )


def echo_progress(text: str, *, quiet: bool = False) -> None:
    """A line on stderr for the user watching (never part of --json output)."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)
