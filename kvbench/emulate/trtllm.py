"""TensorRT-LLM's API as an emulator serves it: strict request fields (HTTP 400 on any field
`CompletionRequest` does not declare), `model` required, usage on by default once stream_options
is present, the final usage chunk serialised as a chat object, `/metrics` as a draining,
bounded queue of per-iteration JSON records (oldest dropped when full, `[]` when empty; always
`[]` with `iter_stats=False`, as with enable_iter_perf_stats off), `/prometheus/metrics` with
the newer `trtllm_` gauges, which show the latest iteration (the collector's mapping: "running"
gauge = active requests, "waiting" = the executor queue), `/version`, and a `/v1/models` card
without max_model_len."""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import datetime

from aiohttp import web

from kvbench.backends.trtllm import TIMESTAMP_FORMAT
from kvbench.emulate.server import BadRequest, EngineFormat, prometheus_text
from kvbench.profile import EngineProfile

# tensorrt_llm/serve/openai_protocol.py CompletionRequest (extra="forbid").
FIELDS = frozenset(
    """model prompt best_of echo frequency_penalty logit_bias logprobs max_tokens n
presence_penalty seed stop stream stream_options suffix temperature top_p user lora_request
use_beam_search top_k top_p_min min_p repetition_penalty length_penalty early_stopping
stop_token_ids include_stop_str_in_output ignore_eos min_tokens skip_special_tokens
spaces_between_special_tokens truncate_prompt_tokens return_context_logits detokenize
add_special_tokens response_format disaggregated_params""".split()
)
STREAM_OPTION_FIELDS = frozenset({"include_usage", "continuous_usage_stats"})


class TrtllmFormat(EngineFormat):
    name = "trtllm"

    def __init__(
        self, profile: EngineProfile, iter_stats_max_iterations: int = 1000, iter_stats: bool = True
    ):
        super().__init__(profile)
        self.records: deque[dict] = deque(maxlen=iter_stats_max_iterations)
        self.iter_stats = iter_stats
        self.latest: dict | None = None  # the last iteration's record, for the gauges

    def validate(self, body: dict) -> None:
        extra = sorted(set(body) - FIELDS)
        extra += sorted(
            f"stream_options.{k}"
            for k in set(body.get("stream_options") or {}) - STREAM_OPTION_FIELDS
        )
        if extra:
            raise BadRequest(f"Extra inputs are not permitted: {', '.join(extra)}")
        if "model" not in body:
            raise BadRequest("model: Field required")
        if body.get("logprobs"):
            raise BadRequest("logprobs is not supported")
        if body.get("suffix"):
            raise BadRequest("suffix is not supported")
        if body.get("stream_options") and not body.get("stream"):
            raise BadRequest("Stream options can only be defined when stream is true.")

    def usage_flags(self, body: dict) -> tuple[bool, bool]:
        opts = body.get("stream_options")
        if opts is None:
            return False, False
        return bool(opts.get("include_usage", True)), bool(opts.get("continuous_usage_stats", True))

    def final_chunk(self, rid: str, created: int, usage: dict) -> dict:
        chunk = super().final_chunk(rid, created, usage)
        chunk["object"] = "chat.completion.chunk"  # as postprocess_handlers.py does
        return chunk

    def model_card(self) -> dict:
        # openai_protocol.py ModelCard: no max_model_len, owned_by "tensorrt_llm"
        return {
            "id": self.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "tensorrt_llm",
        }

    def on_iteration(self, state: dict) -> None:
        p = self.profile
        per_block = p.block_size
        total = p.kv_tokens // per_block
        used = min(total, math.ceil(state["kv_used_tokens"] / per_block))
        self.latest = {
            "timestamp": datetime.now().strftime(TIMESTAMP_FORMAT),
            "iter": int(state["iteration"]) - 1,
            "iterLatencyMS": 1000.0 * state["last_iteration_time"],
            "numActiveRequests": state["running"],
            "numQueuedRequests": state["waiting"],
            "numCompletedRequests": 0,
            "maxNumActiveRequests": p.max_running,
            "maxBatchSizeStatic": p.max_running,
            "maxNumTokensStatic": p.token_budget,
            "gpuMemUsage": 0,
            "cpuMemUsage": 0,
            "pinnedMemUsage": 0,
            # the last iteration's batch, as the engine reports it (context requests are those
            # prefilled in it, whole prompts: TensorRT-LLM's chunked prefill is off by default)
            "inflightBatchingStats": {
                "numScheduledRequests": state["decode_requests"] + state["prefill_requests"],
                "numContextRequests": state["prefill_requests"],
                "numGenRequests": state["decode_requests"],
                "numPausedRequests": 0,
                "numCtxTokens": state["prefill_tokens"],
            },
            "kvCacheStats": {
                "maxNumBlocks": total,
                "freeNumBlocks": total - used,
                "usedNumBlocks": used,
                "tokensPerBlock": per_block,
            },
        }
        if self.iter_stats:
            self.records.append(self.latest)

    def gauges_text(self) -> str:
        labels = f'engine_type="trtllm",model_name="{self.model_id}"'
        p = self.profile
        r = self.latest or {
            "numActiveRequests": 0,
            "numQueuedRequests": 0,
            "iterLatencyMS": 0.0,
            "inflightBatchingStats": {"numScheduledRequests": 0},
            "kvCacheStats": {"usedNumBlocks": 0},
        }
        total = p.kv_tokens // p.block_size
        used = r["kvCacheStats"]["usedNumBlocks"]
        return prometheus_text(
            labels,
            [
                (f"trtllm_{name}", "gauge", value)
                for name, value in [
                    ("num_requests_running", r["numActiveRequests"]),
                    ("num_requests_waiting", r["numQueuedRequests"]),
                    ("num_scheduled_requests", r["inflightBatchingStats"]["numScheduledRequests"]),
                    ("kv_cache_max_blocks", total),
                    ("kv_cache_used_blocks", used),
                    ("kv_cache_free_blocks", total - used),
                    ("kv_cache_tokens_per_block", p.block_size),
                    ("kv_cache_utilization", used / total),
                    ("max_num_active_requests", p.max_running),
                    ("iteration_latency_seconds", r["iterLatencyMS"] / 1000.0),
                ]
            ],
        )

    def routes(self) -> list[web.RouteDef]:
        async def metrics(request):
            drained = list(self.records)
            self.records.clear()
            return web.json_response(drained)

        async def prometheus(request):
            return web.Response(text=self.gauges_text(), content_type="text/plain")

        async def version(request):
            return web.json_response({"version": self.version})

        return [
            web.get("/metrics", metrics),
            web.get("/prometheus/metrics", prometheus),
            web.get("/version", version),
        ]
