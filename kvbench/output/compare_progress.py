"""What `kvbench compare` shows while it measures, on stderr. On a terminal, a live view: one
line per engine, refreshed while it is measured.

● trtllm (simulated)   2/2  probe λ=3.412  12.3 s / ~20 s  in system 87  waiting 12  S2 U1 I0

Off a terminal (a job runner's log), plain lines instead: one per phase and per probe, and one a
minute, each with the engine-second budget left, so an unattended comparison is never silent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from kvbench.backends.base import QueueSample
from kvbench.output.progress import (
    HEARTBEAT_SECONDS,
    Heartbeat,
    budget_text,
    echo_progress,
    elapsed,
)


@dataclass
class _Row:
    label: str
    kind: str
    index: int
    total: int
    phase: str = "waiting"
    rate: float | None = None
    planned: float | None = None
    phase_started: float = field(default_factory=time.monotonic)
    in_flight: int | None = None
    waiting: int | None = None
    verdicts: dict[str, int] = field(
        default_factory=lambda: {"STABLE": 0, "UNSTABLE": 0, "INCONCLUSIVE": 0, "FAILING": 0}
    )
    status: str | None = None
    error: str | None = None
    spent: float = 0.0  # engine seconds the search has used
    budget: float | None = None  # of --max-engine-seconds, known from the first probe on


class CompareProgress:
    """A `CompareObserver` drawing a rich Live table on stderr; `with CompareProgress(...):`."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.rows: dict[str, _Row] = {}
        self.started = time.monotonic()
        self._live = (
            Live(
                self._render(),
                console=self.console,
                refresh_per_second=4,
                transient=False,
                get_renderable=self._render,
            )
            if enabled
            else None
        )

    def __enter__(self) -> CompareProgress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for r in self.rows.values():
            name = escape(r.label) + ("" if r.kind == "real" else f" ({r.kind})")
            if r.status is None:
                elapsed = now - r.phase_started
                timing = f"{elapsed:5.1f} s" + (f" / ~{r.planned:.0f} s" if r.planned else "")
                rate = "" if r.rate is None else f"λ={r.rate:.3f}"
                queue = "" if r.in_flight is None else f"in system {r.in_flight}"
                if r.waiting is not None:
                    queue += f"  waiting {r.waiting}"
                state = f"[cyan]{escape(r.phase)}[/]"
            else:
                timing = rate = queue = ""
                state = (
                    "[green]done[/]"
                    if r.status == "ok"
                    else (f"[red]{r.status.upper()}[/]: {escape(r.error or '')}")
                )
            v = r.verdicts
            if r.budget is not None:
                queue += f"  {r.spent:,.0f}/{r.budget:,.0f} engine-s"
            table.add_row(
                f"[bold]{name}[/]",
                f"{r.index + 1}/{r.total}",
                state,
                rate,
                timing,
                queue,
                f"S{v['STABLE']} U{v['UNSTABLE']} I{v['INCONCLUSIVE']} F{v['FAILING']}",
            )
        table.add_row(
            "",
            "",
            f"[dim]elapsed {now - self.started:.0f} s — Ctrl-C stops and "
            "writes the report for what was measured[/]",
            "",
            "",
            "",
            "",
        )
        return table

    def engine_started(self, label: str, kind: str, index: int, total: int) -> None:
        self.rows[label] = _Row(label, kind, index, total, phase="starting")

    def phase(self, label: str, what: str, rate: float | None, planned: float | None) -> None:
        row = self.rows[label]
        row.phase, row.rate, row.planned = what, rate, planned
        row.phase_started = time.monotonic()

    def sample(self, label: str, sample: QueueSample) -> None:
        row = self.rows[label]
        row.in_flight, row.waiting = sample.in_flight, sample.waiting

    def probe_finished(
        self, label: str, rate: float, verdict: str, spent: float, budget: float
    ) -> None:
        row = self.rows[label]
        row.verdicts[verdict] = row.verdicts.get(verdict, 0) + 1
        row.spent, row.budget = spent, budget

    def engine_finished(self, label: str, status: str, error: str | None) -> None:
        row = self.rows[label]
        row.status, row.error = status, error


class PlainCompareProgress(CompareProgress):
    """A `CompareObserver` for a log: the live view's rows as plain, time-stamped lines on
    stderr, one per phase and per probe, and the engine being measured once every `interval`
    seconds (a minute)."""

    def __init__(self, interval: float = HEARTBEAT_SECONDS):
        super().__init__(enabled=False)
        self._lock = threading.Lock()  # the heartbeat thread reads the rows too
        self._current: str | None = None
        self._heartbeat = Heartbeat(self._beat, interval)

    def __enter__(self) -> PlainCompareProgress:
        self._heartbeat.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._heartbeat.__exit__()

    def _say(self, label: str, text: str) -> None:
        row = self.rows[label]
        stamp = elapsed(time.monotonic() - self.started)
        echo_progress(f"[{stamp}] {label} ({row.index + 1}/{row.total}): {text}")

    def _budget(self, row: _Row) -> str:
        return "" if row.budget is None else f"; {budget_text(row.spent, row.budget)}"

    def _beat(self) -> None:
        with self._lock:
            if self._current is None or self.rows[self._current].status is not None:
                return
            r = self.rows[self._current]
            what = r.phase + ("" if r.rate is None else f" λ = {r.rate:.3f} req/s")
            timing = f"{time.monotonic() - r.phase_started:,.0f} s" + (
                f" of ~{r.planned:,.0f} s" if r.planned else ""
            )
            queue = "" if r.in_flight is None else f", {r.in_flight} in system"
            if r.waiting is not None:
                queue += f", {r.waiting} waiting"
            self._say(r.label, f"{what}, {timing}{queue}{self._budget(r)}")

    def engine_started(self, label: str, kind: str, index: int, total: int) -> None:
        with self._lock:
            super().engine_started(label, kind, index, total)
            self._current = label
            self._say(label, "starting" + ("" if kind == "real" else f" ({kind})"))

    def phase(self, label: str, what: str, rate: float | None, planned: float | None) -> None:
        with self._lock:
            super().phase(label, what, rate, planned)
            if what != "probe":  # a probe gets its line when it is judged
                self._say(label, what)

    def sample(self, label: str, sample: QueueSample) -> None:
        with self._lock:
            super().sample(label, sample)

    def probe_finished(
        self, label: str, rate: float, verdict: str, spent: float, budget: float
    ) -> None:
        with self._lock:
            super().probe_finished(label, rate, verdict, spent, budget)
            row = self.rows[label]
            n = sum(row.verdicts.values())
            self._say(label, f"probe {n} λ = {rate:.3f} req/s {verdict}{self._budget(row)}")

    def engine_finished(self, label: str, status: str, error: str | None) -> None:
        with self._lock:
            super().engine_finished(label, status, error)
            row = self.rows[label]
            self._say(
                label,
                ("done" if status == "ok" else f"{status.upper()}: {error}") + self._budget(row),
            )
