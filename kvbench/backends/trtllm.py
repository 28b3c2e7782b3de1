"""TensorRT-LLM (`trtllm-serve`, PyTorch backend): request body, iteration records, and M.

Formats: ../shared/docs/engines.md §3. The request models forbid unknown fields (HTTP 400), so
the body holds only fields TensorRT-LLM declares. `GET /metrics` hands over, and forgets, the
JSON iteration records accumulated since the last call: a draining queue with one consumer. So
exactly one task reads it, each record becomes one state at the server's own timestamp, and a
jump in `iter` between two records means the bounded stats queue overflowed or another client
drained it; those iterations are counted as missing. An empty list means "no new iterations"
(or iteration stats are off), never zero load. A call may block up to ~2 s server-side.

Where the iteration records are off but the server has the newer `trtllm_` gauges on
`/prometheus/metrics`, M comes from those and the run samples them instead (one state per
scrape, not per iteration). When kvbench launched the server, the startup log's "Allocated …
for max tokens in paged KV cache (N)" and "max_seq_len=…, max_num_tokens=…, max_batch_size=…"
lines fill whatever the endpoints lack.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime

from kvbench.backends.base import DiscoveredProfile
from kvbench.backends.client import ServerClient
from kvbench.backends.http import (
    HttpBackend,
    ScrapeLog,
    ServerState,
    discovered_profile,
    log_settings,
    setting,
)
from kvbench.backends.prometheus import Metrics
from kvbench.calibration import IterationWindows, trtllm_iteration
from kvbench.errors import KvbenchError
from kvbench.redact import redact_url

TIMESTAMP_FORMAT = "%m-%d-%Y %H:%M:%S.%f"
PROMETHEUS_PATH = "/prometheus/metrics"
# The KV cache is sized twice at startup (a small estimation pass, then the real pool): the last
# line is the one that serves.
_LOG_KV = re.compile(r"for max tokens in paged KV cache \((\d+)\)")
_LOG_BLOCK = re.compile(r"Number of tokens per block: (\d+)")
_LOG_LIMITS = re.compile(r"max_seq_len=\d+(?:, \w+=\d+)*")


def record_time(record: dict, fallback: float) -> float:
    """Epoch seconds of a record's server-local `timestamp`, else `fallback`."""
    stamp = record.get("timestamp")
    if not isinstance(stamp, str):
        return fallback
    try:
        return datetime.strptime(stamp, TIMESTAMP_FORMAT).timestamp()
    except ValueError:
        return fallback


def record_state(record: dict, at: float) -> ServerState:
    """running = scheduled requests; waiting = the executor queue plus fetched requests that are
    not scheduled (still waiting for KV) — engines.md §3.4."""
    ifb = record.get("inflightBatchingStats") or {}
    kv = record.get("kvCacheStats") or {}
    scheduled = ifb.get("numScheduledRequests")
    queued = record.get("numQueuedRequests")
    active = record.get("numActiveRequests")
    waiting = None
    if queued is not None:
        waiting = int(queued)
        if active is not None and scheduled is not None:
            waiting += max(0, int(active) - int(scheduled))
    used, total, per_block = (
        kv.get("usedNumBlocks"),
        kv.get("maxNumBlocks"),
        kv.get("tokensPerBlock"),
    )
    return ServerState(
        time=at,
        waiting=waiting,
        running=None if scheduled is None else int(scheduled),
        kv_used_tokens=None if used is None or not per_block else float(used * per_block),
        kv_usage=None if used is None or not total else used / total,
        preemptions_total=None,  # paused requests are a level, not a count
    )


class IterationDrain:
    """The single consumer of /metrics: turns each drained list into states, counts gaps, and
    keeps each busy iteration's (batch tokens, KV held, seconds) for the iteration-time fit."""

    def __init__(self, log: ScrapeLog):
        self.log = log
        self.last_iter: int | None = None
        self.timings: list[tuple[float, float, float]] = []

    def take(self, records: list, received: float) -> list[ServerState]:
        states = []
        for record in sorted(
            (r for r in records if isinstance(r, dict)), key=lambda r: r.get("iter", 0)
        ):
            it = record.get("iter")
            if isinstance(it, int):
                if self.last_iter is not None and it > self.last_iter + 1:
                    missing = it - self.last_iter - 1
                    self.log.missing_iterations += missing
                    self.log.error(
                        f"/metrics: iterations {self.last_iter + 1}..{it - 1} missing "
                        "(stats queue overflowed, or another client drains /metrics)",
                        "iteration_gap",
                    )
                if self.last_iter is None or it > self.last_iter:
                    self.last_iter = it
            states.append(record_state(record, record_time(record, received)))
            try:
                timing = trtllm_iteration(record)
            except (KeyError, TypeError, ValueError, AttributeError):
                timing = None  # a record without timings still gave its state
            if timing is not None:
                self.timings.append(timing)
        return states


def prometheus_state(metrics: Metrics, at: float) -> ServerState | None:
    """A state from the `trtllm_` gauges, mapped as the iteration records are (their "running"
    gauge counts active requests, so the scheduled gauge is running); None without the gauges."""
    queued = metrics.total("trtllm_num_requests_waiting")
    if queued is None:
        return None
    active = metrics.total("trtllm_num_requests_running")
    scheduled = metrics.total("trtllm_num_scheduled_requests")
    used = metrics.total("trtllm_kv_cache_used_blocks")
    per_block = metrics.total("trtllm_kv_cache_tokens_per_block")
    waiting = int(queued)
    if active is not None and scheduled is not None:
        waiting += max(0, int(active) - int(scheduled))
    running = scheduled if scheduled is not None else active
    return ServerState(
        time=at,
        waiting=waiting,
        running=None if running is None else int(running),
        kv_used_tokens=None if used is None or not per_block else used * per_block,
        kv_usage=metrics.total("trtllm_kv_cache_utilization"),
        preemptions_total=None,
    )


def read_log(text: str) -> dict[str, int]:
    """M and the limits the startup log states: kv_tokens (the last paged-KV allocation), the
    block size, and max_seq_len / max_num_requests / max_num_tokens / max_batch_size."""
    found: dict[str, int] = {}
    for m in _LOG_KV.finditer(text):
        found["kv_tokens"] = int(m.group(1))
    for m in _LOG_BLOCK.finditer(text):
        found["block_size"] = int(m.group(1))
    found.update(log_settings(_LOG_LIMITS, text))
    return found


def build_profile(
    record: dict,
    settings: dict,
    settings_source: str,
    prometheus: Metrics | None = None,
    log_text: str | None = None,
) -> DiscoveredProfile:
    sources: dict[str, str] = {}
    log = read_log(log_text) if log_text else {}
    kv = record.get("kvCacheStats") or {}
    if kv.get("maxNumBlocks") and kv.get("tokensPerBlock"):
        kv_tokens = int(kv["maxNumBlocks"]) * int(kv["tokensPerBlock"])
        sources["kv_tokens"] = "/metrics kvCacheStats maxNumBlocks × tokensPerBlock"
        block = int(kv["tokensPerBlock"])
        sources["block_size"] = "/metrics kvCacheStats tokensPerBlock"
    elif prometheus is not None and prometheus.total("trtllm_kv_cache_max_blocks"):
        block = int(prometheus.total("trtllm_kv_cache_tokens_per_block") or 32)
        kv_tokens = int(prometheus.total("trtllm_kv_cache_max_blocks") or 0) * block
        sources["kv_tokens"] = "/prometheus/metrics trtllm_kv_cache_max_blocks × tokens_per_block"
        sources["block_size"] = "/prometheus/metrics trtllm_kv_cache_tokens_per_block"
    elif "kv_tokens" in log:
        kv_tokens = log["kv_tokens"]
        sources["kv_tokens"] = "startup log 'Allocated … for max tokens in paged KV cache (N)'"
        block = setting(
            log,
            sources,
            "block_size",
            ("block_size",),
            "startup log",
            32,
            "TensorRT-LLM default tokens_per_block (32)",
        )
    else:
        raise KvbenchError(
            "TensorRT-LLM /metrics has no kvCacheStats (enable_iter_perf_stats off, or no "
            "iteration yet), no trtllm_ gauges on /prometheus/metrics and no startup log: "
            "cannot read M"
        )
    launch = {**{k: log[k] for k in ("max_batch_size", "max_num_tokens") if k in log}, **settings}
    launch_source = settings_source if settings else "startup log"
    if record.get("maxBatchSizeStatic"):
        running = int(record["maxBatchSizeStatic"])
        sources["max_running"] = "/metrics maxBatchSizeStatic"
    else:
        running = setting(
            launch,
            sources,
            "max_running",
            ("max_batch_size",),
            launch_source,
            2048,
            "TensorRT-LLM default max_batch_size (2048)",
        )
    if record.get("maxNumTokensStatic"):
        budget = int(record["maxNumTokensStatic"])
        sources["token_budget"] = "/metrics maxNumTokensStatic"
    else:
        budget = setting(
            launch,
            sources,
            "token_budget",
            ("max_num_tokens",),
            launch_source,
            8192,
            "TensorRT-LLM default max_num_tokens (8192)",
        )
    chunked = settings.get("enable_chunked_prefill")
    sources["chunk_size"] = sources["token_budget"] + (
        "; chunked prefill on"
        if chunked
        else "; chunked prefill off by default: a prompt must fit the budget whole"
    )
    policy = settings.get("capacity_scheduler_policy", "GUARANTEED_NO_EVICT")
    sources["policy"] = f"TensorRT-LLM {policy}: reserve prompt + max_tokens at admission" + (
        " (from the launch config)"
        if "capacity_scheduler_policy" in settings
        else " (default; not exposed by the server)"
    )
    sources["iteration_time"] = "iterLatencyMS per record; not a profile constant"
    return discovered_profile(
        "trtllm",
        sources,
        kv_tokens=kv_tokens,
        block_size=block,
        chunk_size=budget,
        token_budget=budget,
        max_running=running,
    )


class TrtllmBackend(HttpBackend):
    name = "trtllm"

    def __init__(self, url: str, **options):
        super().__init__(url, **options)
        self.drain = IterationDrain(self.scrape_log)
        self.last_record: dict | None = None
        self.state_from_gauges = False  # discovery found no iteration records, only the gauges

    def iteration_windows(self) -> IterationWindows | None:
        # None with iteration stats off (only the gauges)
        if not self.drain.timings:
            return None
        tokens, kv, seconds = zip(*self.drain.timings, strict=True)
        return IterationWindows.per_iteration(
            tokens,
            kv,
            seconds,
            source=f"TensorRT-LLM iteration stats ({redact_url(self.url)}/metrics)",
        )

    async def scrape(self, client: ServerClient) -> list[ServerState]:
        if self.state_from_gauges:
            text = await client.get_text(PROMETHEUS_PATH)
            state = prometheus_state(
                Metrics.parse(text, client.url(PROMETHEUS_PATH), keep=("trtllm_",)), time.time()
            )
            if state is None:
                raise KvbenchError(f"{client.url(PROMETHEUS_PATH)}: no trtllm_num_requests_waiting")
            return [state]
        records = await client.get_json("/metrics")
        if not isinstance(records, list):
            raise KvbenchError(
                f"{client.url('/metrics')}: expected a JSON list of iteration records"
            )
        if records:
            self.last_record = records[-1]
        return self.drain.take(records, time.time())

    async def _drain_latest(self, client: ServerClient) -> None:
        records = await client.get_json("/metrics")
        if isinstance(records, list) and records:
            self.drain.take(records, time.time())
            self.last_record = records[-1]

    async def read_profile(self, client: ServerClient) -> DiscoveredProfile:
        # Reading /metrics drains it; discovery happens before the run, so nothing of the run is
        # lost, and the records taken here only advance the gap detector. The list is empty
        # until the engine has run an iteration, so an idle engine gets one 1-token request.
        await self._drain_latest(client)
        if self.last_record is None:
            body = self.completion_body(self.model_id, [1000, 1001, 1002, 1003], 1)
            body["stream"] = False
            del body["stream_options"]
            await client.post_json("/v1/completions", body)
            for _ in range(20):
                await self._drain_latest(client)
                if self.last_record is not None:
                    break
                await asyncio.sleep(0.1)
        text = await client.get_text(PROMETHEUS_PATH, missing_ok=True)
        prometheus = Metrics.parse(text, client.url(PROMETHEUS_PATH)) if text else None
        log_text = self.server.log_text() if self.server is not None else None
        found = build_profile(
            self.last_record or {}, self.settings, self.settings_source, prometheus, log_text
        )
        self.state_from_gauges = (
            self.last_record is None
            and prometheus is not None
            and prometheus_state(prometheus, 0.0) is not None
        )
        found.sources["queue_state"] = (
            f"{PROMETHEUS_PATH} trtllm_ gauges, one state per scrape (no iteration records)"
            if self.state_from_gauges
            else "/metrics iteration records, one state per iteration"
        )
        return found
