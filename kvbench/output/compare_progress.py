"""The live view of `kvbench compare`: one line per engine, refreshed while it is measured.

● trtllm (simulated)   2/2  probe λ=3.412  12.3 s / ~20 s  in system 87  waiting 12  S2 U1 I0
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from kvbench.backends.base import QueueSample


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

    def probe_finished(self, label: str, rate: float, verdict: str) -> None:
        self.rows[label].verdicts[verdict] = self.rows[label].verdicts.get(verdict, 0) + 1

    def engine_finished(self, label: str, status: str, error: str | None) -> None:
        row = self.rows[label]
        row.status, row.error = status, error
