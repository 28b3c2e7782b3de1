"""The simulated engine behind an emulator, run on the wall clock.

`kvbench._core.EngineSim` is stepped to each iteration's end as real time reaches it (virtual
time = real time × time_scale). Each iteration's end is a moment the emulator can observe: the
per-iteration snapshot goes to the format layer (TensorRT-LLM publishes one record per
iteration; SGLang refreshes its gauges every N iterations), and request events go to the
requests' streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kvbench.profile import EngineProfile

Event = tuple[int, str, float, int]  # (request_id, kind, virtual time, tokens so far)


class RealTimeEngine:
    def __init__(
        self,
        profile: EngineProfile,
        *,
        time_scale: float = 1.0,
        seed: int = 0,
        on_iteration: Callable[[dict[str, Any]], None] | None = None,
    ):
        from kvbench import _core

        self.sim = _core.EngineSim(profile, seed)
        self.profile = profile
        self.time_scale = time_scale
        self.on_iteration = on_iteration
        self.streams: dict[int, asyncio.Queue[Event]] = {}
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._wake = asyncio.Event()
        self._next_id = 0
        self._iterations = 0
        self._task = self._loop.create_task(self._run())

    def now(self) -> float:
        """Virtual seconds since the emulator started."""
        return (self._loop.time() - self._t0) * self.time_scale

    def submit(self, prompt_len: int, output_len: int) -> tuple[int, asyncio.Queue[Event]]:
        """Queue a request now; its events arrive on the returned queue. ValueError if it can
        never fit the KV cache."""
        rid = self._next_id
        self._next_id += 1
        self.sim.add_request(rid, prompt_len, output_len, max(self.now(), self.sim.state()["time"]))
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self.streams[rid] = queue
        self._wake.set()
        return rid, queue

    def abandon(self, rid: int) -> None:
        """The client went away: the engine aborts the request, as vLLM, SGLang and
        TensorRT-LLM do on a disconnect (a running one finishes its current iteration first).
        Without that, the backlog an overloaded run leaves would still be served during the
        next run against the same server."""
        if self.streams.pop(rid, None) is not None:
            self.sim.abort(rid)
            self._wake.set()

    def state(self) -> dict[str, Any]:
        return self.sim.state()

    async def _run(self) -> None:
        while True:
            now = self.now()
            while (t := self.sim.next_event_time()) is not None and t <= now:
                for event in self.sim.advance(t):
                    queue = self.streams.get(event[0])
                    if queue is not None:
                        queue.put_nowait(event)
                        if event[1] == "finished":
                            self.streams.pop(event[0], None)
                state = self.sim.state()
                if state["iteration"] > self._iterations:
                    self._iterations = state["iteration"]
                    if self.on_iteration is not None:
                        self.on_iteration(state)
            t = self.sim.next_event_time()
            self._wake.clear()
            timeout = None if t is None else max(0.0, (t - self.now()) / self.time_scale)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def close(self) -> None:
        self._task.cancel()
