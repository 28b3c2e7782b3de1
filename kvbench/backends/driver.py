"""Open-loop HTTP load generation: every request sent at its scheduled time, every event timed.

One coroutine walks the schedule and starts each request at its intended time; each request
streams its completion and reports a RequestRecord to the sink when it ends. A failure is
recorded on its request with a kind (`http_<status>`, `timeout`, `connection_refused`,
`connection_reset`, `bad_stream`, `truncated_stream`, `missing_usage`, `short_output`,
`long_output`) and counted; nothing is dropped. A refused connection means the engine is gone:
the run stops sending and ends early, and the caller reports it.

Timing: the loop sleeps until 1.5 ms before a send, then yields in a tight loop until the send
time, because event-loop timers (epoll, libuv) fire with millisecond granularity and the schedule
lag budget is 1 ms.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import aiohttp

from kvbench.backends.base import EventSink, RequestRecord, RequestSpec
from kvbench.backends.stream import DONE, StreamResult, parse_line

_SPIN = 0.0015
_JSON = {"Content-Type": "application/json"}


class HttpDriver:
    """Sends one schedule to one completions URL. Times are seconds since `t0` (loop time)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        completions_url: str,
        sink: EventSink,
        *,
        t0: float,
        request_timeout: float | None = None,
    ):
        self.session = session
        self.url = completions_url
        self.sink = sink
        self.t0 = t0
        self.timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.loop = asyncio.get_running_loop()
        self.in_flight = 0
        self.sent = 0
        self.failures: Counter[str] = Counter()
        self.first_message: dict[str, str] = {}  # one example message per failure kind
        self.engine_down_at: float | None = None
        self._tasks: set[asyncio.Task] = set()

    def now(self) -> float:
        return self.loop.time() - self.t0

    async def run(
        self,
        requests: list[RequestSpec],
        make_body: Callable[[RequestSpec], bytes],
        duration: float,
    ) -> None:
        """Send `requests` (in intended-send order) until `duration`; requests still in flight
        then are reported unfinished."""
        loop = self.loop
        end = self.t0 + duration
        for spec in sorted(requests, key=lambda r: r.intended_send):
            if spec.intended_send >= duration or self.engine_down_at is not None:
                break
            body = make_body(spec)
            target = self.t0 + spec.intended_send
            while (delay := target - loop.time()) > _SPIN:
                await asyncio.sleep(min(delay - _SPIN, 0.05))
                if self.engine_down_at is not None:
                    break
            while loop.time() < target:
                await asyncio.sleep(0)
            if self.engine_down_at is not None:
                break
            task = loop.create_task(self._one(spec, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while self._tasks and self.engine_down_at is None and (left := end - loop.time()) > 0:
            await asyncio.wait(self._tasks, timeout=min(left, 0.1))
        # a request sent just before the end has a task that has not run yet: cancelled now, it
        # would never report its record
        await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _fail(self, record: RequestRecord, kind: str, message: str) -> None:
        record.error = kind
        self.failures[kind] += 1
        self.first_message.setdefault(kind, message)

    async def _one(self, spec: RequestSpec, body: bytes) -> None:
        record = RequestRecord(
            request_id=spec.request_id,
            intended_send=spec.intended_send,
            prompt_len=spec.prompt_len,
            output_len=spec.output_len,
        )
        self.in_flight += 1
        self.sent += 1
        record.sent = self.now()
        try:
            async with self.session.post(
                self.url, data=body, headers=_JSON, timeout=self.timeout
            ) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    self._fail(record, f"http_{resp.status}", text[:200].strip())
                    return
                result = StreamResult()
                async for line in resp.content:
                    chunk = parse_line(line)
                    if chunk is None:
                        continue
                    if chunk is DONE:
                        result.done = True
                        break
                    if result.feed(chunk):
                        t = self.now()
                        if record.first_token is None:
                            record.first_token = t
                        record.token_times.append(t)
                self._finish(record, result)
        except asyncio.CancelledError:
            if self.engine_down_at is not None:
                self._fail(record, "engine_down", "run stopped: the engine refused connections")
            raise
        except asyncio.TimeoutError:
            self._fail(record, "timeout", f"no answer within {self.timeout.total} s")
        except aiohttp.ClientConnectorError as err:
            self._fail(record, "connection_refused", str(err))
            if self.engine_down_at is None:
                self.engine_down_at = self.now()
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as err:
            self._fail(record, "connection_reset", str(err) or type(err).__name__)
        except (aiohttp.ClientError, ConnectionError) as err:
            self._fail(record, "connection_reset", str(err) or type(err).__name__)
        except ValueError as err:  # a chunk that is not JSON
            self._fail(record, "bad_stream", str(err)[:200])
        finally:
            self.in_flight -= 1
            self.sink.request(record)

    def _finish(self, record: RequestRecord, result: StreamResult) -> None:
        if not result.done:
            self._fail(record, "truncated_stream", "stream ended without data: [DONE]")
            return
        if not result.final_usage or result.completion_tokens is None:
            self._fail(record, "missing_usage", "no final usage chunk (choices: [] with usage)")
            return
        record.finished = self.now()
        record.output_tokens = int(result.completion_tokens)
        if record.output_tokens < record.output_len:
            self._fail(
                record,
                "short_output",
                f"{record.output_tokens} of {record.output_len} tokens "
                f"(finish_reason {result.finish_reason})",
            )
        elif record.output_tokens > record.output_len:
            self._fail(
                record, "long_output", f"{record.output_tokens} of {record.output_len} tokens"
            )
