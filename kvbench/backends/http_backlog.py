"""The bounded-backlog probe over HTTP: the Rust driver keeps K requests sent and not started
(`HttpDriver.backlog`), and this run turns its events into the probe's bins.

The driver reports every send, every chunk that carried output (its arrival and the request's
output tokens so far, from the engine's running usage count) and every request that ended
without a first token. Served work per bin is `_core.served_work` over those chunk events, the
same G(s, k) the simulator counts; the backlog at a bin's end is the sends up to then less the
starts (and unstarted ends); the engine's waiting gauge is the last scrape before it. Times are
the engine's seconds: an emulator's time scale is undone, as for a timed run.

A chunk's count is only known from a running usage count (`continuous_usage_stats`): an engine
that merges tokens into chunks without one would have its served work undercounted, so the run
refuses it as soon as a request's final count says so.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from kvbench import _core
from kvbench.backends.backlog import BIN_WIDTH, DRAW, BacklogBins, RequestStream
from kvbench.backends.base import RequestRecord
from kvbench.backends.client import ServerClient
from kvbench.benchmark.failures import server_message
from kvbench.errors import KvbenchError
from kvbench.workload import Workload

if TYPE_CHECKING:
    from kvbench.backends.http import HttpBackend

# Real seconds `advance` waits past its end before reading the driver, so a chunk that arrived
# just before the end is in the driver's log.
_SETTLE = 0.02
# Real seconds between reads of the driver while `advance` waits: a failing engine (which
# answers every top-up at once) is given up on within this, and the stream kept ahead.
_READ_PERIOD = 0.05


def _grown(values: np.ndarray, size: int, fill: float) -> np.ndarray:
    """`values` padded with `fill` to `size`."""
    return np.concatenate([values, np.full(size - values.size, fill, values.dtype)])


class HttpBacklogRun:
    """The bounded-backlog probe against an engine over HTTP, in real time (engine seconds
    reported). `backlog` is K for the one engine behind `backend.url`; served work is counted
    with prefill chunk `chunk_size` (None: the one the engine's discovery reads)."""

    def __init__(
        self,
        backend: HttpBackend,
        workload: Workload,
        *,
        backlog: int,
        seed: int = 0,
        bin_width: float = BIN_WIDTH,
        chunk_size: int | None = None,
    ) -> None:
        self.backlog = backlog
        self.bin_width = bin_width
        self._backend = backend
        self._scale = backend.time_scale  # also reads the model id and whether it is emulated
        self._chunk = chunk_size or backend.discover_profile().profile.chunk_size
        backend.wait_until_idle()
        self._stream = RequestStream(workload, seed)
        s, o = self._stream.draw()
        self._prompt = s.astype(np.int64)
        self._output = o.astype(np.int64)
        self._driver = backend.backlog_driver(s, o, backlog=backlog)
        n = self._prompt.size
        self._sent = np.full(n, np.nan)
        self._start = np.full(n, np.nan)  # first token
        self._unstarted = np.full(n, np.nan)  # an end without a first token
        self._counted = np.zeros(n, np.int64)  # output tokens the chunks carried, driver-counted
        self._finished: list[float] = []
        # every request served whole, as a timed run records it (engine seconds): what compare
        # measures b̄ and an engine's separate batch times from after the probe
        self.records: list[RequestRecord] = []
        self._events = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
        self._ended = np.zeros(n, bool)
        self._next_bin = 0
        # the scrapes: (engine seconds, waiting gauge, the engine's iteration count)
        self._samples: list[tuple[float, int | None, int | None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._wall0 = time.time()
        self._t0 = time.monotonic()
        self._scraper = threading.Thread(
            target=self._scrape, name="kvbench-backlog-scrape", daemon=True
        )
        self._scraper.start()
        self._driver.start(time.monotonic() - self._t0)

    # ---- the engine's waiting gauge, on its own thread and event loop ---------------------

    def _scrape(self) -> None:
        backend = self._backend

        async def loop() -> None:
            async with backend._session() as session:
                client = ServerClient(session, backend.url, timeout=10.0)
                while not self._stop.is_set():
                    started = time.monotonic()
                    try:
                        states = await backend.scrape(client)
                        backend.scrape_log.scrapes += 1
                    except KvbenchError as err:
                        backend.scrape_log.error(str(err))
                        states = []
                    with self._lock:
                        self._samples += [
                            ((st.time - self._wall0) * self._scale, st.waiting, st.iterations)
                            for st in states
                        ]
                    left = backend.scrape_period - (time.monotonic() - started)
                    await asyncio.sleep(max(0.0, left))

        backend.scrape_log.reset()
        backend._run(loop())

    # ---- the probe ------------------------------------------------------------------------

    def advance(self, until: float) -> BacklogBins:
        wake = self._t0 + until / self._scale + _SETTLE
        while True:
            self._read()
            now = time.monotonic()
            if now >= wake:
                return self._bins(until)
            time.sleep(min(_READ_PERIOD, wake - now))

    def _read(self) -> None:
        """Take the driver's records and events so far; refuse a failed request or merged
        chunks as soon as they are seen, and keep the stream ahead of the sends."""
        down = self._driver.engine_down_at
        if down is not None:
            raise KvbenchError(
                f"{self._backend.url}: engine stopped answering at t={down * self._scale:.2f} "
                "engine-s during the bounded-backlog probe"
            )
        # records first: every chunk of a request reported here is in the progress that follows
        records = self._driver.poll()
        self._take(self._driver.poll_progress())
        for r in records:
            self._ended[r.index] = True
            # served work and E[g] both assume every request served whole at its own lengths:
            # a failure, or an output or prompt the engine counts otherwise (short_output: an
            # engine that stops at EOS despite ignore_eos), would bias the rate
            if r.error is not None:
                said = server_message(r.message)
                raise KvbenchError(
                    f"{self._backend.url}: request {r.index} of the bounded-backlog probe failed "
                    f"({r.error}{': ' + said if said else ''}); the probe needs every request "
                    "served at its lengths"
                )
            if r.prompt_tokens is not None and r.prompt_tokens != self._prompt[r.index]:
                raise KvbenchError(
                    f"{self._backend.url}: the engine counted {r.prompt_tokens} prompt tokens "
                    f"for request {r.index}'s {self._prompt[r.index]}; the bounded-backlog probe "
                    "needs prompts served at the workload's lengths: use --method open-loop"
                )
            if r.finished is not None:
                k = self._scale
                self._finished.append(r.finished * k)
                self.records.append(
                    RequestRecord(
                        request_id=r.index,
                        intended_send=r.sent * k,
                        prompt_len=int(self._prompt[r.index]),
                        output_len=int(r.output_tokens or len(r.token_times)),
                        sent=r.sent * k,
                        first_token=None if r.first_token is None else r.first_token * k,
                        finished=r.finished * k,
                        output_tokens=r.output_tokens,
                        token_times=[t * k for t in r.token_times],
                    )
                )
                if r.output_tokens is not None and self._counted[r.index] != r.output_tokens:
                    raise KvbenchError(
                        f"{self._backend.url}: the engine streams several tokens per chunk "
                        f"without saying how many (request {r.index}: its chunks counted "
                        f"{self._counted[r.index]}, its usage {r.output_tokens} tokens); the "
                        "bounded-backlog probe needs a running count per chunk "
                        "(stream_options.continuous_usage_stats): use --method open-loop"
                    )
        if self._driver.remaining < 2 * DRAW:
            s, o = self._stream.draw()
            self._driver.extend(s, o)
            self._grow(s, o)

    def _take(self, progress: _core.DriverProgress) -> None:
        k = self._scale
        i, t = progress.sent
        self._sent[i] = t * k
        i, t = progress.unstarted
        self._unstarted[i] = t * k
        ci, ct, ck = progress.chunks
        ct = ct * k
        first = np.isnan(self._start[ci])
        # a request's first chunk is its start (its chunks are logged in arrival order)
        starts, at = np.unique(ci[first], return_index=True)
        self._start[starts] = ct[first][at]
        np.maximum.at(self._counted, ci, ck)
        ri, rt, rk = self._events
        self._events = (
            np.concatenate([ri, ci]),
            np.concatenate([rt, ct]),
            np.concatenate([rk, ck]),
        )

    def _grow(self, s: np.ndarray, o: np.ndarray) -> None:
        self._prompt = np.concatenate([self._prompt, s.astype(np.int64)])
        self._output = np.concatenate([self._output, o.astype(np.int64)])
        n = self._prompt.size
        self._sent = _grown(self._sent, n, np.nan)
        self._start = _grown(self._start, n, np.nan)
        self._unstarted = _grown(self._unstarted, n, np.nan)
        self._counted = _grown(self._counted, n, 0)
        self._ended = _grown(self._ended, n, False)

    def _bins(self, until: float) -> BacklogBins:
        w = self.bin_width
        first, last = self._next_bin, int(until / w + 1e-9)
        self._next_bin = last
        lo, hi = first * w, last * w
        ends = (np.arange(first, last) + 1) * w
        ri, rt, rk = self._events
        # a request's work is the growth of G over its own history: give served_work the whole
        # history of every request that streamed in these bins, and keep only these bins
        active = np.unique(ri[(rt >= lo) & (rt < hi)])
        mine = np.isin(ri, active)
        work = _core.served_work(
            self._prompt,
            self._chunk,
            ri[mine],
            rt[mine],
            rk[mine],
            bin_width=w,
            bins=last,
        )[first:]
        # a request that ended has no more events: its history is done once binned
        keep = ~self._ended[ri] | (rt >= hi)
        self._events = (ri[keep], rt[keep], rk[keep])
        edges = np.arange(first, last + 1) * w

        def per_bin(times: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
            return np.histogram(times, edges, weights=weights)[0].astype(np.int64)

        has_started = ~np.isnan(self._start)
        started = self._start[has_started]
        left = np.sort(np.concatenate([started, self._unstarted[~np.isnan(self._unstarted)]]))
        sent = np.sort(self._sent[~np.isnan(self._sent)])
        backlog = np.searchsorted(sent, ends, "right") - np.searchsorted(left, ends, "right")
        return BacklogBins(
            first=first,
            bin_width=w,
            work=work,
            starts=per_bin(started),
            start_prompt=per_bin(started, self._prompt[has_started]),
            start_output=per_bin(started, self._output[has_started]),
            finishes=per_bin(np.asarray(self._finished)),
            backlog=backlog.astype(np.int64),
            waiting=self._waiting(ends),
        )

    def _waiting(self, ends: np.ndarray) -> np.ndarray | None:
        """The engine's waiting gauge at each bin end: its last reading at or before it (the
        first reading for ends before any); None for an engine without the gauge."""
        with self._lock:
            seen = [(t, n) for t, n, _ in self._samples if n is not None]
        if not seen:
            return None
        times = np.array([t for t, _ in seen])
        values = np.array([n for _, n in seen], np.int64)
        at = np.searchsorted(times, ends, "right") - 1
        return values[np.maximum(at, 0)]

    def iteration_time(self, after: float) -> float | None:
        """The engine's mean iteration time from `after` (engine seconds) on, from its own
        iteration count (vLLM's vllm:iteration_tokens_total): elapsed time over iterations run
        between the first and last scrapes since; None for an engine that counts none."""
        with self._lock:
            seen = [(t, n) for t, _, n in self._samples if n is not None and t >= after]
        if len(seen) < 2 or seen[-1][1] <= seen[0][1]:
            return None
        return (seen[-1][0] - seen[0][0]) / (seen[-1][1] - seen[0][1])

    def close(self) -> None:
        self._driver.stop()
        left = [r for r in self._driver.poll() if r.finished is None and r.error is None]
        # what the engine still runs: the next run waits for it to drain first
        self._backend.left_running(len(left))
        self._stop.set()
        self._scraper.join(15)
