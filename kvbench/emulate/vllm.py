"""vLLM's API as an emulator serves it: lenient request fields, the `{"error": {...}}` 400 body,
`/version`, and Prometheus `/metrics` with vLLM's names, labels and quirks (the usage gauge is a
share of num_gpu_blocks − 1 blocks; the preemption counter family lacks `_total`)."""

from __future__ import annotations

from aiohttp import web

from kvbench.emulate.server import BadRequest, EngineFormat


class VllmFormat(EngineFormat):
    name = "vllm"
    # vllm:iteration_tokens_total's sum: the batch tokens of every iteration the engine ran
    _iteration_tokens = 0

    def on_iteration(self, state: dict) -> None:
        self._iteration_tokens += int(state["batch_tokens"])

    def validate(self, body: dict) -> None:
        if body.get("stream_options") and not body.get("stream"):
            raise BadRequest("Stream options can only be defined when `stream=True`.")

    def error_body(self, message: str, status: int) -> dict:
        return {
            "error": {"message": message, "type": "BadRequestError", "param": None, "code": status}
        }

    def metrics_text(self) -> str:
        p = self.profile
        st = self.engine.state() if self.engine is not None else {}
        blocks = p.kv_tokens // p.block_size
        labels = f'engine="0",model_name="{self.model_id}"'
        iterations = float(st.get("iteration", 0))
        info = (
            f'block_size="{p.block_size}",cache_dtype="auto",enable_prefix_caching="False",'
            f'engine="0",gpu_memory_utilization="0.9",kv_cache_size_tokens="{p.kv_tokens}",'
            f'num_gpu_blocks="{blocks}",num_gpu_blocks_override="None"'
        )
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(st.get('running', 0))}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {float(st.get('waiting', 0))}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {st.get('kv_used_tokens', 0) / p.usable_kv_tokens}\n"
            "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.\n"
            "# TYPE vllm:num_preemptions_total counter\n"
            f"vllm:num_preemptions_total{{{labels}}} {float(st.get('preemptions_total', 0))}\n"
            "# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.\n"
            "# TYPE vllm:iteration_tokens_total histogram\n"
            f'vllm:iteration_tokens_total_bucket{{{labels},le="+Inf"}} {iterations}\n'
            f"vllm:iteration_tokens_total_count{{{labels}}} {iterations}\n"
            f"vllm:iteration_tokens_total_sum{{{labels}}} {float(self._iteration_tokens)}\n"
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
            "# TYPE vllm:cache_config_info gauge\n"
            f"vllm:cache_config_info{{{info}}} 1.0\n"
        )

    def routes(self) -> list[web.RouteDef]:
        async def metrics(request):
            return web.Response(
                text=self.metrics_text(), content_type="text/plain", charset="utf-8"
            )

        async def version(request):
            return web.json_response({"version": self.version})

        return [web.get("/metrics", metrics), web.get("/version", version)]
