"""SGLang's API as an emulator serves it: `include_usage` off unless asked, `/get_server_info`
and `/server_info`, `/v1/loads` (live), and Prometheus gauges that refresh only every
`decode_log_interval` iterations and stick in between — the quirk that makes /metrics lag."""

from __future__ import annotations

from aiohttp import web

from kvbench.emulate.server import EngineFormat, prometheus_text
from kvbench.profile import EngineProfile


class SglangFormat(EngineFormat):
    name = "sglang"
    model_id = "default"

    def __init__(self, profile: EngineProfile, decode_log_interval: int = 40):
        super().__init__(profile)
        self.decode_log_interval = decode_log_interval
        self.gauges = {"running": 0, "waiting": 0, "kv_used_tokens": 0, "preemptions_total": 0}

    def validate(self, body: dict) -> None:
        pass  # SGLang accepts unknown fields

    def usage_flags(self, body: dict) -> tuple[bool, bool]:
        opts = body.get("stream_options") or {}
        return bool(opts.get("include_usage", False)), bool(
            opts.get("continuous_usage_stats", False)
        )

    def on_iteration(self, state: dict) -> None:
        if state["iteration"] % self.decode_log_interval == 0:
            self.gauges = {k: state[k] for k in self.gauges}

    def _live(self) -> dict:
        return (
            self.engine.state()
            if self.engine is not None
            else {"running": 0, "waiting": 0, "kv_used_tokens": 0}
        )

    def server_info(self) -> dict:
        p = self.profile
        return {
            "model_path": self.model_id,
            "host": "127.0.0.1",
            "max_running_requests": p.max_running,
            "max_total_tokens": p.kv_tokens,
            "chunked_prefill_size": p.chunk_size,
            "max_prefill_tokens": 16384,
            "schedule_policy": "fcfs",
            "schedule_conservativeness": 1.0,
            "page_size": p.block_size,
            # SGLang's default, and the admission path the simulator's rule is (with the cache
            # off, ignore_eos requests take add_one_req_ignore_eos instead)
            "disable_radix_cache": False,
            "enable_metrics": True,
            "decode_log_interval": self.decode_log_interval,
            "enable_mixed_chunk": not p.separate_prefill_decode,
            "max_total_num_tokens": p.kv_tokens,
            "max_req_input_len": self.max_model_len - 5,
            "internal_states": [{"last_gen_throughput": 0.0}],
            "version": self.version,
        }

    def loads(self) -> dict:
        st, p = self._live(), self.profile
        return {
            "version": "0.5.6",
            "loads": [
                {
                    "dp_rank": 0,
                    "num_running_reqs": st["running"],
                    "num_waiting_reqs": st["waiting"],
                    "num_used_tokens": st["kv_used_tokens"],
                    "max_total_num_tokens": p.kv_tokens,
                    "max_running_requests": p.max_running,
                    "token_usage": st["kv_used_tokens"] / p.kv_tokens,
                }
            ],
        }

    def metrics_text(self) -> str:
        g, p = self.gauges, self.profile
        labels = (
            f'engine_type="unified",model_name="{self.model_id}",moe_ep_rank="0",'
            'pp_rank="0",tp_rank="0"'
        )
        return prometheus_text(
            labels,
            [
                ("sglang:num_running_reqs", "gauge", g["running"]),
                ("sglang:num_queue_reqs", "gauge", g["waiting"]),
                ("sglang:num_used_tokens", "gauge", g["kv_used_tokens"]),
                ("sglang:token_usage", "gauge", g["kv_used_tokens"] / p.kv_tokens),
                ("sglang:max_total_num_tokens", "gauge", p.kv_tokens),
                ("sglang:num_retracted_requests_total", "counter", g["preemptions_total"]),
            ],
        )

    def routes(self) -> list[web.RouteDef]:
        async def info(request):
            return web.json_response(self.server_info())

        async def loads(request):
            return web.json_response(self.loads())

        async def metrics(request):
            return web.Response(text=self.metrics_text(), content_type="text/plain")

        return [
            web.get("/get_server_info", info),
            web.get("/server_info", info),
            web.get("/v1/loads", loads),
            web.get("/metrics", metrics),
        ]
