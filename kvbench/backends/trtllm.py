"""TensorRT-LLM (`trtllm-serve`, PyTorch backend): request body, iteration records, and M.

Formats: ../shared/docs/engines.md §3. The request models forbid unknown fields (HTTP 400), so
the body holds only fields TensorRT-LLM declares. `GET /metrics` hands over, and forgets, the
JSON iteration records accumulated since the last call: a draining queue with one consumer. So
exactly one task reads it, each record becomes one state at the server's own timestamp, and a
jump in `iter` between two records means the bounded stats queue overflowed or another client
drained it; those iterations are counted as missing. An empty list means "no new iterations"
(or iteration stats are off), never zero load. A call may block up to ~2 s server-side.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from kvbench.backends.base import DiscoveredProfile
from kvbench.backends.client import ServerClient
from kvbench.backends.http import HttpBackend, discovered_profile, ScrapeLog, ServerState, setting
from kvbench.backends.prometheus import Metrics
from kvbench.errors import KvbenchError

TIMESTAMP_FORMAT = "%m-%d-%Y %H:%M:%S.%f"



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
    used, total, per_block = kv.get("usedNumBlocks"), kv.get("maxNumBlocks"), kv.get("tokensPerBlock")
    return ServerState(
        time=at,
        waiting=waiting,
        running=None if scheduled is None else int(scheduled),
        kv_used_tokens=None if used is None or not per_block else float(used * per_block),
        kv_usage=None if used is None or not total else used / total,
        preemptions_total=None,  # paused requests are a level, not a count
    )


class IterationDrain:
    """The single consumer of /metrics: turns each drained list into states and counts gaps."""

    def __init__(self, log: ScrapeLog):
        self.log = log
        self.last_iter: int | None = None

    def take(self, records: list, received: float) -> list[ServerState]:
        states = []
        for record in sorted((r for r in records if isinstance(r, dict)), key=lambda r: r.get("iter", 0)):
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
        return states


def build_profile(record: dict, settings: dict, settings_source: str,
                  prometheus: Metrics | None = None) -> DiscoveredProfile:
    sources: dict[str, str] = {}
    kv = record.get("kvCacheStats") or {}
    if kv.get("maxNumBlocks") and kv.get("tokensPerBlock"):
        kv_tokens = int(kv["maxNumBlocks"]) * int(kv["tokensPerBlock"])
        sources["kv_tokens"] = "/metrics kvCacheStats maxNumBlocks × tokensPerBlock"
        block = int(kv["tokensPerBlock"])
        sources["block_size"] = "/metrics kvCacheStats tokensPerBlock"
    elif prometheus is not None and prometheus.total("trtllm_kv_cache_max_blocks"):
        block = int(prometheus.total("trtllm_kv_cache_tokens_per_block") or 32)
        kv_tokens = int(prometheus.total("trtllm_kv_cache_max_blocks")) * block
        sources["kv_tokens"] = "/prometheus/metrics trtllm_kv_cache_max_blocks × tokens_per_block"
        sources["block_size"] = "/prometheus/metrics trtllm_kv_cache_tokens_per_block"
    else:
        raise KvbenchError(
            "TensorRT-LLM /metrics has no kvCacheStats (enable_iter_perf_stats off, or no "
            "iteration yet): cannot read M"
        )
    if record.get("maxBatchSizeStatic"):
        running = int(record["maxBatchSizeStatic"])
        sources["max_running"] = "/metrics maxBatchSizeStatic"
    else:
        running = setting(settings, sources, "max_running", ("max_batch_size",), settings_source,
                          2048, "TensorRT-LLM default max_batch_size (2048)")
    if record.get("maxNumTokensStatic"):
        budget = int(record["maxNumTokensStatic"])
        sources["token_budget"] = "/metrics maxNumTokensStatic"
    else:
        budget = setting(settings, sources, "token_budget", ("max_num_tokens",), settings_source,
                         8192, "TensorRT-LLM default max_num_tokens (8192)")
    chunked = settings.get("enable_chunked_prefill")
    sources["chunk_size"] = sources["token_budget"] + (
        "; chunked prefill on" if chunked else "; chunked prefill off by default: a prompt "
        "must fit the budget whole"
    )
    policy = settings.get("capacity_scheduler_policy", "GUARANTEED_NO_EVICT")
    sources["policy"] = (
        f"TensorRT-LLM {policy}: reserve prompt + max_tokens at admission"
        + (" (from the launch config)" if "capacity_scheduler_policy" in settings else
           " (default; not exposed by the server)")
    )
    sources["iteration_time"] = "iterLatencyMS per record; not a profile constant"
    return discovered_profile(
        "trtllm", sources, kv_tokens=kv_tokens, block_size=block, chunk_size=budget,
        token_budget=budget, max_running=running,
    )


class TrtllmBackend(HttpBackend):
    name = "trtllm"

    def __init__(self, url: str, **options):
        super().__init__(url, **options)
        self.drain = IterationDrain(self.scrape_log)
        self.last_record: dict | None = None

    async def scrape(self, client: ServerClient) -> list[ServerState]:
        records = await client.get_json("/metrics")
        if not isinstance(records, list):
            raise KvbenchError(f"{client.url('/metrics')}: expected a JSON list of iteration records")
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
            body = self.completion_body(self.model, [1000, 1001, 1002, 1003], 1)
            body["stream"] = False
            del body["stream_options"]
            await client.post_json("/v1/completions", body)
            for _ in range(20):
                await self._drain_latest(client)
                if self.last_record is not None:
                    break
                await asyncio.sleep(0.1)
        text = await client.get_text("/prometheus/metrics", missing_ok=True)
        prometheus = Metrics.parse(text, client.url("/prometheus/metrics")) if text else None
        return build_profile(self.last_record or {}, self.settings, self.settings_source, prometheus)
