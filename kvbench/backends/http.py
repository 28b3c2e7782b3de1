"""The part every HTTP engine backend shares: the run loop (the Rust driver, polled for its
records, beside the state scraper), profile discovery plumbing, and the per-engine hooks an
adapter fills in.

An adapter (vllm.py, sglang.py, trtllm.py) supplies, in its engine's own terms, a scrape of
server state and the profile it can read from the server; the completion request body is shared
(`completion_body`: only fields TensorRT-LLM's strict schema declares) unless an adapter
overrides it. Emulators mark every
response with the `X-Kvbench-Emulated` header, so a backend attached to one labels itself
emulated and its results are never shown as an engine's. An emulator that runs its engine
faster than real time says by how much in `X-Kvbench-Time-Scale` (engine seconds per real
second). The client's clock follows a scale only when it is known independently of the server:
the scale kvbench asked of an emulator it started itself, or one the user gave (--time-scale);
the backend then sends the schedule that much faster and reports every time in the engine's own
seconds, so rates, b̄ and run lengths mean the same as on the engine emulated. Any other server's
header is ignored and noted on the run: a server must not be able to stretch or shrink the
latencies of a run labelled real.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
from abc import abstractmethod
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from kvbench._core import OUTPUT_SLOT, PROMPT_SLOT, DriverRecord, HttpDriver
from kvbench.backends.base import (
    Backend,
    BackendKind,
    DiscoveredProfile,
    EventSink,
    QueueSample,
    RequestRecord,
    RequestSpec,
)
from kvbench.backends.client import ServerClient
from kvbench.backends.http_backlog import HttpBacklogRun
from kvbench.backends.registry import check_time_scale
from kvbench.backends.settings import assumed
from kvbench.benchmark.failures import MESSAGES_PER_KIND, server_message
from kvbench.credentials import refuse_userinfo
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile, IterationTimeModel, Policy
from kvbench.redact import redact_url
from kvbench.workload import Workload

# Prompt token ids are drawn fresh per request from this range: valid in every common vocabulary
# of ≥ 32k ids and clear of special ids, so prefix caching never shares work (engines.md §4 #1).
TOKEN_ID_RANGE = (1000, 30000)
EMULATED_HEADER = "X-Kvbench-Emulated"
TIME_SCALE_HEADER = "X-Kvbench-Time-Scale"
# Real seconds a run waits for the engine to finish what the last run left running, and for the
# count of those requests to fall before it stops waiting.
IDLE_WAIT = 120.0
DRAIN_STALL = 5.0
# How often a backend waiting for a server that is still starting asks again.
_WAIT_RETRY = 1.0
# How often finished records move from the Rust driver to the sink: results stay incremental,
# and the driver's own threads never wait for Python.
_POLL_PERIOD = 0.015


@dataclass(frozen=True)
class ServerState:
    """One reading of server state; `time` is wall-clock epoch seconds (the server's own
    timestamp where the engine gives one, else when the answer arrived)."""

    time: float
    waiting: int | None = None
    running: int | None = None
    kv_used_tokens: float | None = None
    kv_usage: float | None = None
    preemptions_total: int | None = None
    # the engine's count of the iterations (engine steps) it has run so far: vLLM's
    # vllm:iteration_tokens_total histogram counts one observation per step
    iterations: int | None = None


@dataclass
class ScrapeLog:
    """What the state scraper saw in one run besides states: errors (by kind, with the first
    few distinct messages) and, for draining endpoints, gaps."""

    scrapes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    missing_iterations: int = 0  # TensorRT-LLM: iterations lost between two drains

    def error(self, message: str, kind: str = "scrape_error") -> None:
        self.errors[kind] += 1
        kept = server_message(message)
        if kept and kept not in self.messages and len(self.messages) < MESSAGES_PER_KIND:
            self.messages.append(kept)

    def reset(self) -> None:
        """Start a new run's log (in place: an engine's drain holds this object)."""
        self.scrapes, self.missing_iterations = 0, 0
        self.errors.clear()
        self.messages.clear()

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "scrapes": self.scrapes,
            "errors": dict(self.errors),
            "messages": list(self.messages),
        }
        if self.missing_iterations:
            report["missing_iterations"] = self.missing_iterations
        return report


def discovered_profile(policy: Policy, sources: dict[str, str], **fields) -> DiscoveredProfile:
    """The profile read from a running engine. Its iteration-time model is unknown, since no
    server exposes one: b̄ is measured from a run, or a model fitted with `kvbench calibrate`."""
    profile = EngineProfile(
        policy=policy,
        iteration_time=IterationTimeModel.unknown(),
        name=policy,
        source="discovered from the running engine",
        **fields,
    )
    return DiscoveredProfile(profile=profile, sources=sources)


def completion_body(model: str, prompt: list[int], output_len: int) -> dict:
    """The /v1/completions body kvbench sends to every engine: prompt as token ids, exactly
    `output_len` tokens, streamed with usage.

    One body serves all three engines because every field in it is one that TensorRT-LLM's strict
    CompletionRequest declares (it answers 400 to any other; tests check the body against the
    field list from its source), and vLLM and SGLang accept the same names. SGLang's
    include_usage defaults to false and TensorRT-LLM's to true, so both usage flags are always
    set explicitly. An engine that ever needs another field overrides
    `HttpBackend.completion_body`.
    """
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "min_tokens": output_len,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


class HttpBackend(Backend):
    """An engine reached over HTTP at `url` (attached, or launched by kvbench.backends.launch)."""

    kind: BackendKind = "real"
    has_backlog_probe = True

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        settings: dict[str, Any] | None = None,
        settings_source: str = "launch command",
        scrape_period: float = 0.25,
        request_timeout: float | None = None,
        seed: int = 0,
        server=None,
        headers: dict[str, str] | None = None,
        time_scale: float | None = None,
        wait_for_server: float = 0.0,
    ):
        """`headers` go on every request (completions, discovery, scrapes); `time_scale` is the
        engine seconds per real second the server is known to run at (an emulator kvbench
        started, or the user's --time-scale), None for an engine; `wait_for_server`: seconds to
        wait for a server that is still starting (refusing connections, or 503)."""
        refuse_userinfo(url)
        if urlsplit(url).query:
            raise KvbenchError(f"{redact_url(url)}: give the engine's base URL, without a query")
        if urlsplit(url).scheme != "http":
            raise KvbenchError(
                f"{redact_url(url)}: kvbench drives engines over plain http:// only: engines "
                "serve plain HTTP, and through a TLS proxy the proxy's latency would be measured"
            )
        if time_scale is not None:
            check_time_scale(time_scale)
        self.url = url.rstrip("/")
        self.headers = dict(headers or {})
        self.wait_for_server = wait_for_server
        self.notes: list[str] = []  # what the run's record should say about the server
        self.model = model
        self.settings = dict(settings or {})
        self.settings_source = settings_source
        self.scrape_period = scrape_period
        self.request_timeout = request_timeout
        self.seed = seed
        self.server = server  # a launch.LaunchedServer this backend owns, stopped on close()
        self.failures: Counter[str] = Counter()
        self.scrape_log = ScrapeLog()
        self.schedule_lag: np.ndarray | None = None
        self._trusted_scale = time_scale
        self._time_scale: float | None = None  # settled at the server's first answer
        self._cut_off = 0  # requests the last run left unfinished in the engine

    # ---- engine hooks ---------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        """The served model's id: given, or read from /v1/models in the first exchange."""
        if self.model is None:
            raise KvbenchError(f"{self.url}: the model id is read from /v1/models first")
        return self.model

    def completion_body(self, model: str, prompt: list[int], output_len: int) -> dict:
        return completion_body(model, prompt, output_len)

    @abstractmethod
    async def scrape(self, client: ServerClient) -> list[ServerState]:
        """Read server state now (several states when the engine hands over a history)."""

    @abstractmethod
    async def read_profile(self, client: ServerClient) -> DiscoveredProfile:
        """Read the engine profile from the server (and the launch settings)."""

    # ---- shared plumbing ------------------------------------------------------------------

    def _run(self, coro):
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = None  # asyncio's own loop, as asyncio.run makes it
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                return runner.run(coro)
        except asyncio.CancelledError as err:
            # Nothing but an interrupt cancels the run's main task (nothing else holds it), and
            # asyncio.Runner turns that into KeyboardInterrupt only when it counts the one
            # cancellation it made itself: on Python 3.11 a SIGTERM that landed while a task
            # group or timeout inside was cancelling too came out as CancelledError and a
            # traceback, exit 1, instead of the interrupted run's report and exit 143.
            raise KeyboardInterrupt from err

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=None),
            headers=self.headers,
        )

    async def _prepare(self, client: ServerClient) -> None:
        """Model id from /v1/models when not given, whether the server is an emulator, and the
        time scale the client follows. A server that is still starting (refusing connections,
        or 503) is waited for up to `wait_for_server` seconds, the first time."""
        url = client.url("/v1/models")
        deadline = time.monotonic() + self.wait_for_server
        said = False
        while True:
            try:
                async with client.session.get(url, timeout=client.timeout) as resp:
                    status, headers, body = resp.status, resp.headers, await resp.text()
                if status != 503:
                    break
                why = f"HTTP 503: {body[:200].strip()}"
            except aiohttp.ClientConnectorError as err:
                why = f"cannot connect ({err.os_error.strerror or err})"
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                raise KvbenchError(
                    f"{url}: cannot reach the engine ({type(err).__name__}: {err})"
                ) from None
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" after waiting {self.wait_for_server:g} s" if said else ""
                raise KvbenchError(
                    f"{url}: no engine answered{waited} ({why}); start it first, or give it "
                    "longer with --wait-for-server SECONDS"
                )
            if not said:
                print(
                    f"waiting up to {self.wait_for_server:g} s for {url} to start ({why})…",
                    file=sys.stderr,
                    flush=True,
                )
                said = True
            await asyncio.sleep(min(_WAIT_RETRY, left))
        self.wait_for_server = 0.0  # once up, a server that stops answering has failed
        if headers.get(EMULATED_HEADER):
            self.kind = "emulated"
        self._settle_time_scale(headers.get(TIME_SCALE_HEADER), url)
        if status in (401, 403):
            raise KvbenchError(
                f"{url}: HTTP {status}: {body[:200].strip()}; the engine wants a key: give "
                "--api-key (or $OPENAI_API_KEY) or --header NAME=VALUE"
            )
        if status != 200:
            raise KvbenchError(f"{url}: HTTP {status}: {body[:200].strip()}")
        if self.model is None:
            try:
                self.model = json.loads(body)["data"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise KvbenchError(f"{url}: no model id in the answer: {body[:200]}") from None

    def discover_profile(self) -> DiscoveredProfile:
        async def go():
            async with self._session() as session:
                client = ServerClient(session, self.url)
                await self._prepare(client)
                return await self.read_profile(client)

        return self._run(go())

    def _settle_time_scale(self, header: str | None, url: str) -> None:
        """The scale the client follows: the trusted one (else 1), whatever the server says; a
        server's header that is not what the client follows is noted, once."""
        scale = 1.0 if self._trusted_scale is None else self._trusted_scale
        if self._time_scale is None and header is not None:
            try:
                said = float(header)
            except ValueError:
                said = math.nan
            if said != scale:
                why = (
                    "only an emulator kvbench started, or --time-scale, sets the client's clock"
                    if self._trusted_scale is None
                    else f"--time-scale {scale:g} was given"
                )
                self.notes.append(
                    f"ignored {TIME_SCALE_HEADER}: {header[:40]!r} from {url}: {why}; times are "
                    f"measured at {scale:g} engine seconds per real second"
                )
        self._time_scale = scale

    @property
    def time_scale(self) -> float:
        """Engine seconds per real second: 1 for an engine, the emulator's known scale
        otherwise."""
        if self._time_scale is None:

            async def identify():
                async with self._session() as session:
                    await self._prepare(ServerClient(session, self.url))

            self._run(identify())
        assert self._time_scale is not None, "_prepare reads the time scale"
        return self._time_scale

    def execute(self, requests: list[RequestSpec], sink: EventSink, *, duration: float) -> None:
        """As Backend.execute; `duration` may be inf: the run then ends when every request has
        (a run of --num-prompts requests)."""
        scale = self.time_scale
        if scale != 1.0:
            sink = EngineClock(sink, scale, requests)
            requests = [replace(r, intended_send=r.intended_send / scale) for r in requests]
            duration /= scale
        self._run(self._execute(requests, sink, duration))

    def body_template(self) -> str:
        """The adapter's body with the prompt and output length as the driver's slots: the
        driver renders each request's body (fresh random prompt ids) as it comes due."""
        return json.dumps(self.completion_body(self.model_id, [PROMPT_SLOT], OUTPUT_SLOT))

    async def _execute(self, requests: list[RequestSpec], sink: EventSink, duration: float):
        async with self._session() as session:
            client = ServerClient(session, self.url, timeout=max(10.0, 4 * self.scrape_period))
            await self._prepare(client)
            if self._cut_off:
                await self._wait_until_idle(client)
            self._cut_off = 0
            specs = sorted(
                (r for r in requests if r.intended_send < duration), key=lambda r: r.intended_send
            )
            prefix_ids, prefix_lens = _prefixes(specs)
            driver = HttpDriver(
                client.url("/v1/completions"),
                np.array([s.intended_send for s in specs], dtype=np.float64),
                np.array([s.prompt_len for s in specs], dtype=np.int64),
                np.array([s.output_len for s in specs], dtype=np.int64),
                self.body_template(),
                duration,
                seed=self.seed,
                token_range=TOKEN_ID_RANGE,
                headers=list(self.headers.items()),
                request_timeout=self.request_timeout,
                prefix_ids=prefix_ids,
                prefix_lens=prefix_lens,
            )
            lead = 0.05  # time to start the scraper before the first send
            t0 = time.monotonic() + lead
            wall0 = time.time() + lead
            scraper = asyncio.create_task(self._scrape_loop(client, driver, sink, wall0, duration))
            self.failures = Counter()
            self.scrape_log.reset()
            lags: list[float] = []
            driver.start(time.monotonic() - t0)
            try:
                while not driver.finished:
                    self._deliver(driver.poll(), specs, sink, lags)
                    await asyncio.sleep(_POLL_PERIOD)
            finally:
                if not driver.finished:  # cancelled (Ctrl-C): end it, keep what it has
                    driver.stop()
                self._deliver(driver.poll(), specs, sink, lags)
                self.schedule_lag = np.asarray(lags, dtype=np.float64)
                scraper.cancel()
                await asyncio.gather(scraper, return_exceptions=True)
            if driver.engine_down_at is not None or (
                self.failures["connection_reset"] and not await self._healthy(client)
            ):
                counts = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items()))
                at = f" at t={driver.engine_down_at:.2f} s" if driver.engine_down_at else ""
                raise KvbenchError(
                    f"{self.url}: engine stopped answering{at} ({counts}); "
                    "results up to then are recorded"
                )

    def _deliver(
        self, done: list[DriverRecord], specs: list[RequestSpec], sink: EventSink, lags: list[float]
    ) -> None:
        """The driver's records as RequestRecords to the sink, failures counted by kind."""
        for d in done:
            spec = specs[d.index]
            lags.append(d.sent - spec.intended_send)
            if d.error is not None:
                self.failures[d.error] += 1
            elif d.finished is None:
                self._cut_off += 1
            sink.request(
                RequestRecord(
                    request_id=spec.request_id,
                    intended_send=spec.intended_send,
                    prompt_len=spec.prompt_len,
                    output_len=spec.output_len,
                    sent=d.sent,
                    first_token=d.first_token,
                    finished=d.finished,
                    output_tokens=d.output_tokens,
                    token_times=d.token_times,
                    error=d.error,
                    message=None if d.error is None else server_message(d.message),
                )
            )

    def bounded_backlog(
        self, workload: Workload, *, backlog: int, seed: int, chunk_size: int | None = None
    ) -> HttpBacklogRun:
        return HttpBacklogRun(self, workload, backlog=backlog, seed=seed, chunk_size=chunk_size)

    def backlog_driver(self, prompt_lens: np.ndarray, output_lens: np.ndarray, *, backlog: int):
        """The Rust driver in bounded-backlog mode, sending this backend's bodies and headers
        (`time_scale` read first: it settles the model id)."""
        return HttpDriver.backlog(
            self.url + "/v1/completions",
            np.asarray(prompt_lens, np.int64),
            np.asarray(output_lens, np.int64),
            self.body_template(),
            backlog=backlog,
            seed=self.seed,
            token_range=TOKEN_ID_RANGE,
            headers=list(self.headers.items()),
            request_timeout=self.request_timeout,
        )

    def left_running(self, requests: int) -> None:
        """A run ended with `requests` still in the engine: the next waits for them first."""
        self._cut_off = requests

    def wait_until_idle(self) -> None:
        """Before a run: wait for what the last one left in the engine (see _wait_until_idle)."""
        if not self._cut_off:
            return

        async def go():
            async with self._session() as session:
                await self._wait_until_idle(ServerClient(session, self.url))

        self._run(go())
        self._cut_off = 0

    async def _wait_until_idle(self, client: ServerClient) -> None:
        """After a run that left requests in the engine, wait until its own gauges show none
        running or waiting: against a real vLLM a probe started while the engine still drained
        the last one's overload saw first TTFTs 10–20× normal. Not waited for: an engine without
        those gauges (or whose scrape fails: the run's scraper reports that), and one whose
        count stops falling for DRAIN_STALL seconds (other clients' load, or stuck gauges)."""
        started = last_fall = time.monotonic()
        lowest = math.inf
        while True:
            try:
                states = await self.scrape(client)
            except KvbenchError:
                return
            gauges = [s for s in states if s.running is not None or s.waiting is not None]
            busy = sum((s.running or 0) + (s.waiting or 0) for s in gauges[-1:])
            now = time.monotonic()
            if busy < lowest:
                lowest, last_fall = busy, now
            stalled = now - last_fall > DRAIN_STALL or now - started > IDLE_WAIT
            if busy == 0 or stalled:
                if now - started > 1.0:
                    print(
                        f"waited {now - started:.0f} s for {self.url} to finish the last run's "
                        "requests" + ("" if busy == 0 else f"; {busy} still there, starting"),
                        file=sys.stderr,
                    )
                return
            await asyncio.sleep(self.scrape_period)

    async def _healthy(self, client: ServerClient) -> bool:
        try:
            await client.get_text("/health")
            return True
        except KvbenchError:
            return False

    async def _scrape_loop(
        self,
        client: ServerClient,
        driver: HttpDriver,
        sink: EventSink,
        wall0: float,
        duration: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        log = self.scrape_log
        # Samples leave in time order, as the queue statistics require: a skew shift applied to
        # one scrape and not the next (a scrape late under load) could otherwise step back.
        last = -math.inf
        while True:
            started = loop.time()
            try:
                states = await self.scrape(client)
                log.scrapes += 1
            except KvbenchError as err:
                log.error(str(err))
                states = []
            received = time.time()
            # A server clock that disagrees with ours by seconds (another time zone, a remote
            # host) cannot place its records: shift them so the newest lands on the arrival
            # time. Judged on the newest record only: older ones in a drained history may be
            # seconds old when a scrape was late, and are placed right.
            shift = 0.0
            if states and abs(states[-1].time - received) > 5.0 + self.scrape_period:
                log.error(
                    f"{client.url('')}: server timestamps off by "
                    f"{states[-1].time - received:+.1f} s",
                    "clock_skew",
                )
                shift = received - states[-1].time
            for st in states:
                t = last = max(st.time + shift - wall0, last)
                sink.sample(
                    QueueSample(
                        time=t,
                        in_flight=driver.in_flight,
                        waiting=st.waiting,
                        running=st.running,
                        kv_used_tokens=st.kv_used_tokens,
                        kv_usage=st.kv_usage,
                        preemptions_total=st.preemptions_total,
                    )
                )
            await asyncio.sleep(max(0.0, self.scrape_period - (loop.time() - started)))

    def scrape_report(self) -> dict[str, Any] | None:
        return self.scrape_log.report()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class EngineClock:
    """Passes a run's events on with real seconds turned into the engine's own (× scale), and
    each request's intended send time as the schedule gave it."""

    def __init__(self, sink: EventSink, scale: float, requests: list[RequestSpec]):
        self.sink, self.scale = sink, scale
        self.intended = {r.request_id: r.intended_send for r in requests}

    def _engine(self, t: float | None) -> float | None:
        return None if t is None else t * self.scale

    def request(self, record: RequestRecord) -> None:
        k = self.scale
        self.sink.request(
            replace(
                record,
                intended_send=self.intended[record.request_id],
                sent=self._engine(record.sent),
                first_token=self._engine(record.first_token),
                finished=self._engine(record.finished),
                token_times=[t * k for t in record.token_times],
            )
        )

    def sample(self, sample: QueueSample) -> None:
        self.sink.sample(replace(sample, time=sample.time * self.scale))


def log_settings(pattern: re.Pattern[str], text: str) -> dict[str, int]:
    """The integer values of the last line of a startup log that `pattern` matches, a run of
    "key=value, key=value, …" (engines print such a line again when they resize their pools, so
    the last one holds); values that are not integers ("12.3 GB") are left out."""
    found: dict[str, int] = {}
    for m in pattern.finditer(text):
        pairs = (pair.partition("=") for pair in m.group(0).split(", "))
        found = {key: int(value) for key, _, value in pairs if value.isdigit()}
    return found


def setting(
    settings: dict[str, Any],
    sources: dict[str, str],
    field_name: str,
    keys: tuple[str, ...],
    source: str,
    default: int,
    default_source: str,
) -> int:
    """The first of `keys` present in `settings` (recording `source`), else `default`."""
    for key in keys:
        if settings.get(key) is not None:
            sources[field_name] = f"{source} ({key})"
            return int(settings[key])
    sources[field_name] = assumed(default_source)
    return default


def _prefixes(specs: list[RequestSpec]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The driver's prefix ids and lengths for a shared-prefix schedule (None otherwise)."""
    if not any(s.prefix_id is not None for s in specs):
        return None, None
    ids = np.array([s.prefix_id or 0 for s in specs], dtype=np.int64)
    return ids, np.array([s.prefix_len for s in specs], dtype=np.int64)
