"""vLLM (V1 engine, `vllm serve`): request body, Prometheus state, and where M comes from.

Formats: ../shared/docs/engines.md §1. M is `kv_cache_size_tokens` on `vllm:cache_config_info`
where the build has it (it stays right for hybrid models), else `num_gpu_blocks × block_size`,
else the startup log line "… KV cache size: N tokens". The running cap and the token budget are
launch flags the server does not expose (0.32), so they come from the launch command or the
startup log's "non-default args", else vLLM's documented defaults.
"""

from __future__ import annotations

import ast
import re
import time

from kvbench.backends.base import DiscoveredProfile
from kvbench.backends.client import ServerClient
from kvbench.backends.http import HttpBackend, ServerState, discovered_profile, setting
from kvbench.backends.prometheus import Metrics
from kvbench.errors import KvbenchError

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, then the old
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
ITERATIONS = "vllm:iteration_tokens_total"  # a histogram: one observation per engine step
SCRAPED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:cache_config_info",
    *KV_USAGE,
    "vllm:num_preemptions",
    f"{ITERATIONS}_count",  # the count alone: its buckets are most of the text
)
_LOG_KV = re.compile(r"(?:GPU|CPU|XPU|TPU)? ?KV cache size: ([\d,]+) tokens")
_LOG_ARGS = re.compile(r"non-default args: (\{.*\})")


def kv_capacity(metrics: Metrics) -> tuple[int, str] | None:
    """M in tokens from `cache_config_info`, summed over data-parallel engines, with its source."""
    series = metrics.samples("vllm:cache_config_info")
    if not series:
        return None
    total, source = 0, ""
    for s in series:
        labels = s.labels
        tokens = labels.get("kv_cache_size_tokens", "None")
        if tokens not in ("None", ""):
            total += int(float(tokens))
            source = "vllm:cache_config_info kv_cache_size_tokens"
            continue
        blocks, size = labels.get("num_gpu_blocks", "None"), labels.get("block_size", "None")
        if blocks in ("None", "") or size in ("None", ""):
            return None  # early V1 printed num_gpu_blocks="None" (vLLM #16560)
        total += int(blocks) * int(size)
        source = "vllm:cache_config_info num_gpu_blocks × block_size"
    return total, source


def _usage_denominator(metrics: Metrics) -> float | None:
    """Tokens that `kv_cache_usage_perc` is a share of: vLLM's block pool keeps one null block
    out of the count (usage = 1 − free / (num_gpu_blocks − 1)), so a full 32-block cache of
    32-token blocks reports 16 used blocks as 16/31."""
    info = metrics.labels("vllm:cache_config_info") or {}
    blocks, size = info.get("num_gpu_blocks", "None"), info.get("block_size", "None")
    if blocks not in ("None", "") and size not in ("None", "") and int(blocks) > 1:
        return float((int(blocks) - 1) * int(size))
    capacity = kv_capacity(metrics)
    return None if capacity is None else float(capacity[0])


def read_state(metrics: Metrics, at: float) -> ServerState:
    denominator = _usage_denominator(metrics)
    usage_series = metrics.samples(*KV_USAGE)
    usage = sum(s.value for s in usage_series) / len(usage_series) if usage_series else None
    preempt = metrics.total(*PREEMPTIONS)
    waiting = metrics.total("vllm:num_requests_waiting")
    running = metrics.total("vllm:num_requests_running")
    iterations = metrics.total(f"{ITERATIONS}_count")
    return ServerState(
        time=at,
        waiting=None if waiting is None else int(waiting),
        running=None if running is None else int(running),
        kv_usage=usage,
        kv_used_tokens=None if usage is None or denominator is None else usage * denominator,
        preemptions_total=None if preempt is None else int(preempt),
        iterations=None if iterations is None else int(iterations),
    )


def read_log(text: str) -> dict:
    """What the startup log says: M (the last "KV cache size" line) and the non-default args."""
    found: dict = {}
    for m in _LOG_KV.finditer(text):
        found["kv_tokens"] = int(m.group(1).replace(",", ""))
    for m in _LOG_ARGS.finditer(text):
        try:
            found["args"] = ast.literal_eval(m.group(1))
        except (ValueError, SyntaxError):
            pass
    return found


def build_profile(
    metrics: Metrics,
    settings: dict,
    settings_source: str,
    log_text: str | None = None,
) -> DiscoveredProfile:
    """The profile from one /metrics scrape, the launch settings and the startup log."""
    sources: dict[str, str] = {}
    log = read_log(log_text) if log_text else {}
    settings = {**log.get("args", {}), **settings}
    if log.get("args") and settings_source == "none":
        settings_source = "startup log non-default args"
    capacity = kv_capacity(metrics)
    if capacity is not None:
        kv_tokens, sources["kv_tokens"] = capacity
    elif "kv_tokens" in log:
        kv_tokens, sources["kv_tokens"] = log["kv_tokens"], "startup log 'KV cache size'"
    else:
        raise KvbenchError(
            "vLLM /metrics has no usable vllm:cache_config_info and no startup log was kept: "
            "cannot read the KV capacity M"
        )
    info = metrics.labels("vllm:cache_config_info") or {}
    if info.get("block_size", "None") not in ("None", ""):
        block = int(info["block_size"])
        sources["block_size"] = "vllm:cache_config_info block_size"
    else:
        block = setting(
            settings,
            sources,
            "block_size",
            ("block_size",),
            settings_source,
            16,
            "vLLM default on CUDA (16)",
        )
    running = setting(
        settings,
        sources,
        "max_running",
        ("max_num_seqs",),
        settings_source,
        256,
        "vLLM default --max-num-seqs on GPUs < 70 GiB (not exposed by the server)",
    )
    budget = setting(
        settings,
        sources,
        "token_budget",
        ("max_num_batched_tokens",),
        settings_source,
        2048,
        "vLLM default --max-num-batched-tokens on GPUs < 70 GiB (not exposed)",
    )
    sources["chunk_size"] = sources["token_budget"] + "; V1 chunks prefill to the token budget"
    full_sequence = setting(
        settings,
        sources,
        "full_sequence_admission",
        ("scheduler_reserve_full_isl",),
        settings_source,
        1,
        "vLLM default --scheduler-reserve-full-isl since 2026-03 (not exposed)",
    )
    sources["policy"] = (
        "vLLM V1 rule: admit FCFS when the whole known sequence fits (else its first chunk), "
        "preempt newest, recompute"
    )
    sources["iteration_time"] = "not discoverable; measure it from a run"
    if info.get("enable_prefix_caching") == "True":
        sources["prefix_caching"] = "on (kvbench sends fresh random token ids per request)"
    return discovered_profile(
        "vllm",
        sources,
        kv_tokens=kv_tokens,
        block_size=block,
        chunk_size=budget,
        token_budget=budget,
        max_running=running,
        full_sequence_admission=bool(full_sequence),
    )


class VllmBackend(HttpBackend):
    name = "vllm"

    async def scrape(self, client: ServerClient) -> list[ServerState]:
        text = await client.get_text("/metrics")
        received = time.time()
        return [read_state(Metrics.parse(text, client.url("/metrics"), keep=SCRAPED), received)]

    async def read_profile(self, client: ServerClient) -> DiscoveredProfile:
        text = await client.get_text("/metrics")
        log_text = self.server.log_text() if self.server is not None else None
        return build_profile(
            Metrics.parse(text, client.url("/metrics")),
            self.settings,
            self.settings_source if self.settings else "none",
            log_text,
        )
