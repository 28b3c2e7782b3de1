"""SGLang (`python -m sglang.launch_server`): request body, state, and where M comes from.

Formats: ../shared/docs/engines.md §2. State comes from `/v1/loads` (newer builds; fresher than
the gauges) or `/get_load` (older), with `/metrics` (only with --enable-metrics) for the
retraction counter. The Prometheus gauges refresh only every `decode_log_interval` decode steps
and stick when idle, so they are the last resort for queue lengths. Only attention-TP rank 0
reports; series are summed over `dp_rank`, never over `tp_rank`. Gateways re-export the names as
`sglang_…`, so both spellings are read. M is `max_total_num_tokens` from /get_server_info (or
/server_info), and the effective running cap from /v1/loads, since server_args holds only the
user's value, which the engine may have capped. When kvbench launched the server, its startup
log line "max_total_num_tokens=…, chunked_prefill_size=…, max_running_requests=…" (the
scheduler's own, effective values) fills whatever the endpoints lack.
"""

from __future__ import annotations

import re
import time

from kvbench.backends.base import DiscoveredProfile
from kvbench.backends.client import ServerClient
from kvbench.backends.http import HttpBackend, ServerState, discovered_profile, log_settings
from kvbench.backends.prometheus import Metrics
from kvbench.backends.settings import assumed
from kvbench.errors import KvbenchError

INFO_PATHS = ("/get_server_info", "/server_info")
_LOG_LIMITS = re.compile(r"max_total_num_tokens=\d+(?:, \w+=[^,\s]+)*")


def _names(metric: str) -> tuple[str, str]:
    return f"sglang:{metric}", f"sglang_{metric}"


def _rank0(metrics: Metrics, metric: str) -> float | None:
    """Sum over data-parallel ranks of the tp_rank-0 series."""
    series = [s for s in metrics.samples(*_names(metric)) if s.labels.get("tp_rank", "0") == "0"]
    return sum(s.value for s in series) if series else None


def _loads(body) -> list[dict]:
    """The per-rank records of /v1/loads ({"loads": [...]}) or /get_load ([...])."""
    if isinstance(body, dict):
        body = body.get("loads", [])
    return [r for r in body if isinstance(r, dict)] if isinstance(body, list) else []


def read_state(loads: list[dict] | None, metrics: Metrics | None, at: float) -> ServerState:
    def total(*keys: str):
        """Sum over ranks of the first of `keys` each record has."""
        values = []
        for record in loads or []:
            found = next((record[k] for k in keys if record.get(k) is not None), None)
            if found is not None:
                values.append(found)
        return sum(values) if values else None

    waiting = total("num_waiting_reqs")
    running = total("num_running_reqs")
    used = total("num_used_tokens", "num_tokens")
    capacity = total("max_total_num_tokens")
    if metrics is not None:
        waiting = waiting if waiting is not None else _rank0(metrics, "num_queue_reqs")
        running = running if running is not None else _rank0(metrics, "num_running_reqs")
        used = used if used is not None else _rank0(metrics, "num_used_tokens")
        capacity = capacity if capacity is not None else _rank0(metrics, "max_total_num_tokens")
    usage = used / capacity if used is not None and capacity else None
    if usage is None and metrics is not None:
        usage = _rank0(metrics, "token_usage")
    retracted = None
    if metrics is not None:
        retracted = _rank0(metrics, "num_retracted_requests_total")
    return ServerState(
        time=at,
        waiting=None if waiting is None else int(waiting),
        running=None if running is None else int(running),
        kv_used_tokens=None if used is None else float(used),
        kv_usage=usage,
        preemptions_total=None if retracted is None else int(retracted),
    )


def read_log(text: str) -> dict[str, int]:
    """The scheduler's limits from the last "max_total_num_tokens=…, …" startup line (it is
    printed again when the memory pool is resized), numeric values only."""
    return log_settings(_LOG_LIMITS, text)


def build_profile(
    info: dict, info_path: str, loads: list[dict], log_text: str | None = None
) -> DiscoveredProfile:
    sources: dict[str, str] = {}
    args = info.get("server_args", info)  # older builds nest server_args; newer flatten them
    log = read_log(log_text) if log_text else {}

    def pick(key: str, where: dict, source: str, field_name: str):
        value = where.get(key)
        if value is not None:
            sources[field_name] = source
        return value

    kv = pick("max_total_num_tokens", info, f"{info_path} max_total_num_tokens", "kv_tokens")
    if kv is None and loads:
        kv = sum(r.get("max_total_num_tokens", 0) for r in loads) or None
        if kv:
            sources["kv_tokens"] = "/v1/loads max_total_num_tokens"
    if kv is None:
        kv = pick("max_total_num_tokens", log, "startup log max_total_num_tokens", "kv_tokens")
    if kv is None:
        raise KvbenchError(f"SGLang {info_path}: no max_total_num_tokens: cannot read M")
    running = None
    if loads and all(r.get("max_running_requests") is not None for r in loads):
        running = sum(r["max_running_requests"] for r in loads)
        sources["max_running"] = "/v1/loads max_running_requests (effective)"
    if running is None:
        running = pick(
            "max_running_requests",
            log,
            "startup log max_running_requests (effective)",
            "max_running",
        )
    if running is None:
        running = pick(
            "max_running_requests",
            args,
            f"{info_path} server_args (user value, may be capped by the engine)",
            "max_running",
        )
    if running is None:
        running = min(4096, int(kv) // 2)
        sources["max_running"] = assumed("SGLang derived default, ≤ M/2 (not exposed)")
    chunk = pick("chunked_prefill_size", args, f"{info_path} chunked_prefill_size", "chunk_size")
    if chunk is None:
        chunk = pick("chunked_prefill_size", log, "startup log chunked_prefill_size", "chunk_size")
    if chunk is None or int(chunk) <= 0:
        chunk = (
            pick(
                "max_prefill_tokens",
                args,
                f"{info_path} max_prefill_tokens (chunking off)",
                "chunk_size",
            )
            or 16384
        )
        sources.setdefault("chunk_size", assumed("SGLang default max_prefill_tokens (16384)"))
    page = pick("page_size", args, f"{info_path} page_size", "block_size") or 1
    sources.setdefault("block_size", assumed("SGLang default page size (1)"))
    policy = args.get("schedule_policy")
    sources["policy"] = (
        f"SGLang rule: reserve remaining output × new_token_ratio, retract on overflow; "
        f"schedule_policy={policy!r} from {info_path}"
    )
    if args.get("disable_radix_cache"):
        # PrefillAdder.add_one_req hands an ignore_eos request (every kvbench request) to
        # add_one_req_ignore_eos only when the tree cache is disabled (schedule_policy.py)
        sources["policy"] += (
            "; radix cache off, so kvbench's ignore_eos requests take add_one_req_ignore_eos "
            "(whole remaining outputs reserved at ratio 1, checked in finish order), which "
            "kvbench's SGLang rule does not model: its engine-aware μ assumes the default path"
        )
    sources["token_budget"] = sources["chunk_size"] + "; prefill batches only, decode separate"
    sources["iteration_time"] = "not discoverable; measure it from a run"
    conservativeness = float(args.get("schedule_conservativeness") or 1.0)
    return discovered_profile(
        "sglang",
        sources,
        kv_tokens=int(kv),
        block_size=int(page),
        chunk_size=int(chunk),
        token_budget=int(chunk),
        max_running=int(running),
        separate_prefill_decode=not bool(args.get("enable_mixed_chunk")),
        sglang_init_ratio=0.7 * conservativeness,
    )


class SglangBackend(HttpBackend):
    name = "sglang"
    _loads_path: str | None = None
    _metrics_enabled: bool | None = None

    async def _read_loads(self, client: ServerClient) -> list[dict] | None:
        if self._loads_path is None:
            path, body = await client.first_json("/v1/loads", "/get_load")
            self._loads_path = path or ""
            return _loads(body) if path else None
        if not self._loads_path:
            return None
        return _loads(await client.get_json(self._loads_path))

    async def _read_metrics(self, client: ServerClient) -> Metrics | None:
        if self._metrics_enabled is False:
            return None
        text = await client.get_text("/metrics", missing_ok=True)
        self._metrics_enabled = text is not None
        if text is None:
            return None
        return Metrics.parse(text, client.url("/metrics"), keep=("sglang:", "sglang_"))

    async def scrape(self, client: ServerClient) -> list[ServerState]:
        loads = await self._read_loads(client)
        metrics = await self._read_metrics(client)
        if loads is None and metrics is None:
            raise KvbenchError(
                f"{client.url('')}: SGLang serves neither /v1/loads, /get_load nor /metrics "
                "(launch it with --enable-metrics)"
            )
        return [read_state(loads, metrics, time.time())]

    async def read_profile(self, client: ServerClient) -> DiscoveredProfile:
        path, info = await client.first_json(*INFO_PATHS)
        if info is None:
            raise KvbenchError(
                f"{client.url('')}: SGLang answers neither {' nor '.join(INFO_PATHS)}"
            )
        loads = await self._read_loads(client) or []
        log_text = self.server.log_text() if self.server is not None else None
        return build_profile(info, path, loads, log_text)
