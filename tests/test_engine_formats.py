"""Contract tests of the engine adapters against payloads shaped like each engine's real output
(tests/fixtures/<engine>/: vLLM's captured from a real vLLM 0.32 CPU server; SGLang's and
TensorRT-LLM's written from their source, see the READMEs there). The completion streams are
parsed in Rust: their payload tests are in rust/driver/stream.rs, and
tests/test_emulators_http.py replays them through the driver end to end."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from kvbench.backends import sglang, trtllm, vllm
from kvbench.backends.http import ScrapeLog, completion_body
from kvbench.backends.prometheus import Metrics
from kvbench.errors import KvbenchError

FIX = Path(__file__).parent / "fixtures"


def read(engine: str, name: str) -> str:
    return (FIX / engine / name).read_text()


def test_trtllm_body_uses_only_declared_fields():
    spec = json.loads(read("trtllm", "completion_request_fields.json"))
    body = completion_body("m", [1000, 1001], 7)
    assert set(body) <= set(spec["CompletionRequest"])
    assert set(body["stream_options"]) <= set(spec["StreamOptions"])
    assert not set(body) & set(spec["rejected_when_set"])
    assert body["max_tokens"] == body["min_tokens"] == 7 and body["ignore_eos"] is True


def test_body_forces_exact_output_and_streams_usage():
    body = completion_body("m", [1000, 29999], 128)
    assert body["prompt"] == [1000, 29999]
    assert body["max_tokens"] == body["min_tokens"] == 128
    assert body["ignore_eos"] is True and body["stream"] is True
    assert body["stream_options"]["include_usage"] is True  # SGLang defaults it to false


# ---- vLLM -----------------------------------------------------------------------------------


def test_vllm_state_from_real_metrics_under_load():
    m = Metrics.parse(read("vllm", "metrics_loaded.prom"), "fixture")
    st = vllm.read_state(m, 12.0)
    assert (st.waiting, st.running, st.preemptions_total) == (8, 4, 0)
    assert st.kv_usage == pytest.approx(16 / 31)
    assert st.kv_used_tokens == pytest.approx(16 * 32)  # 16 blocks of 32; one null block excluded
    after = vllm.read_state(Metrics.parse(read("vllm", "metrics_after.prom"), "f"), 13.0)
    assert (after.waiting, after.running, after.preemptions_total) == (0, 0, 3)
    # engine steps: vllm:iteration_tokens_total's count (one observation per step)
    assert (st.iterations, after.iterations) == (95, 1086)


def test_vllm_old_kv_usage_name_is_a_fallback():
    text = read("vllm", "metrics_loaded.prom").replace(
        "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"
    )
    st = vllm.read_state(Metrics.parse(text, "f"), 0.0)
    assert st.kv_usage == pytest.approx(16 / 31)


def test_vllm_profile_reads_m_and_says_where_from():
    m = Metrics.parse(read("vllm", "metrics_loaded.prom"), "f")
    found = vllm.build_profile(m, {"max_num_seqs": 4}, "launch command")
    p, src = found.profile, found.sources
    assert (p.kv_tokens, p.block_size, p.max_running, p.policy) == (1024, 32, 4, "vllm")
    assert src["kv_tokens"] == "vllm:cache_config_info kv_cache_size_tokens"
    assert src["max_running"] == "launch command (max_num_seqs)"
    assert "default" in src["token_budget"]


def test_vllm_profile_without_size_label_multiplies_blocks():
    text = read("vllm", "metrics_loaded.prom").replace('kv_cache_size_tokens="1024",', "")
    found = vllm.build_profile(Metrics.parse(text, "f"), {}, "none")
    assert found.profile.kv_tokens == 32 * 32
    assert "num_gpu_blocks × block_size" in found.sources["kv_tokens"]


def test_vllm_profile_falls_back_to_the_startup_log():
    text = read("vllm", "metrics_loaded.prom").replace('kv_cache_size_tokens="1024",', "")
    text = text.replace('num_gpu_blocks="32"', 'num_gpu_blocks="None"')  # early V1 (#16560)
    found = vllm.build_profile(Metrics.parse(text, "f"), {}, "none", read("vllm", "startup.log"))
    assert found.profile.kv_tokens == 1024
    assert found.sources["kv_tokens"] == "startup log 'KV cache size'"
    assert found.profile.max_running == 4  # from the log's non-default args
    assert found.sources["max_running"].startswith("startup log non-default args")
    with pytest.raises(KvbenchError, match="cannot read the KV capacity"):
        vllm.build_profile(Metrics.parse(text, "f"), {}, "none")


def test_vllm_log_takes_the_last_capacity_line():
    log = "GPU KV cache size: 12,000 tokens\n... GPU KV cache size: 2,042,016 tokens, Maximum"
    assert vllm.read_log(log)["kv_tokens"] == 2_042_016


def test_prometheus_garbage_names_the_endpoint():
    with pytest.raises(KvbenchError, match="http://x/metrics: not Prometheus text"):
        Metrics.parse("vllm:num_requests_waiting{ 1 2 3", "http://x/metrics")


# ---- SGLang ---------------------------------------------------------------------------------


def test_sglang_state_prefers_loads_and_reads_retractions_from_metrics():
    loads = sglang._loads(json.loads(read("sglang", "v1_loads.json")))
    m = Metrics.parse(read("sglang", "metrics.prom"), "f")
    st = sglang.read_state(loads, m, 0.0)
    assert (st.waiting, st.running, st.kv_used_tokens) == (17, 48, 181234)
    assert st.kv_usage == pytest.approx(181234 / 200000)
    assert st.preemptions_total == 7


def test_sglang_state_from_gauges_only_and_gateway_names():
    m = Metrics.parse(read("sglang", "metrics.prom").replace("sglang:", "sglang_"), "f")
    st = sglang.read_state(None, m, 0.0)
    assert (st.waiting, st.running, st.kv_used_tokens, st.kv_usage) == (19, 46, 176000, 0.88)


def test_sglang_metrics_ignore_other_tp_ranks():
    text = read("sglang", "metrics.prom")
    extra = 'sglang:num_queue_reqs{engine_type="unified",model_name="q",moe_ep_rank="0",pp_rank="0",tp_rank="1"} 19.0\n'
    text = text.replace("# HELP sglang:num_used_tokens", extra + "# HELP sglang:num_used_tokens")
    assert sglang.read_state(None, Metrics.parse(text, "f"), 0.0).waiting == 19


def test_sglang_old_get_load():
    st = sglang.read_state(sglang._loads(json.loads(read("sglang", "get_load.json"))), None, 0.0)
    assert (st.waiting, st.running, st.kv_used_tokens) == (17, None, 181234)


def test_sglang_profile():
    info = json.loads(read("sglang", "get_server_info.json"))
    loads = sglang._loads(json.loads(read("sglang", "v1_loads.json")))
    found = sglang.build_profile(info, "/get_server_info", loads)
    p = found.profile
    assert (p.kv_tokens, p.chunk_size, p.max_running, p.block_size) == (200000, 2048, 64, 1)
    assert p.separate_prefill_decode and p.policy == "sglang"
    assert found.sources["kv_tokens"] == "/get_server_info max_total_num_tokens"
    assert found.sources["max_running"] == "/v1/loads max_running_requests (effective)"
    assert "'fcfs'" in found.sources["policy"]
    # this server runs with the radix cache off: SGLang then admits kvbench's ignore_eos
    # requests by add_one_req_ignore_eos, a path kvbench's rule does not model, and says so
    assert "add_one_req_ignore_eos" in found.sources["policy"]
    default = dict(info, server_args=dict(info.get("server_args", info), disable_radix_cache=False))
    assert (
        "add_one_req_ignore_eos"
        not in (sglang.build_profile(default, "/get_server_info", loads).sources["policy"])
    )


# ---- TensorRT-LLM ---------------------------------------------------------------------------


def test_trtllm_records_become_states_at_server_time():
    records = json.loads(read("trtllm", "metrics_drain_1.json"))
    drain = trtllm.IterationDrain(ScrapeLog())
    states = drain.take(records, received=0.0)
    assert len(states) == 3
    first = states[0]
    expected = datetime(2026, 11, 28, 14, 33, 20, 101250).timestamp()
    assert first.time == pytest.approx(expected)
    # running = scheduled (1 ctx + 30 gen); waiting = queued 3 + (active 40 − scheduled 31)
    assert (first.running, first.waiting) == (31, 12)
    assert first.kv_used_tokens == 6000 * 32 and first.kv_usage == pytest.approx(6000 / 8219)


def test_trtllm_gaps_in_iter_are_counted():
    log = ScrapeLog()
    drain = trtllm.IterationDrain(log)
    drain.take(json.loads(read("trtllm", "metrics_drain_1.json")), 0.0)
    assert log.missing_iterations == 0
    drain.take([], 0.0)  # nothing new is not zero load, and not a gap
    drain.take(json.loads(read("trtllm", "metrics_drain_2.json")), 0.0)
    assert log.missing_iterations == 2 and log.errors["iteration_gap"] == 1
    assert "104..105" in log.messages[0]


def test_trtllm_profile():
    record = json.loads(read("trtllm", "metrics_drain_1.json"))[-1]
    found = trtllm.build_profile(record, {}, "none")
    p = found.profile
    assert (p.kv_tokens, p.block_size, p.max_running, p.token_budget) == (8219 * 32, 32, 64, 2048)
    assert "GUARANTEED_NO_EVICT" in found.sources["policy"]
    with pytest.raises(KvbenchError, match="enable_iter_perf_stats"):
        trtllm.build_profile({}, {}, "none")


def test_vllm_scrape_filter_reads_the_same_state():
    text = read("vllm", "metrics_loaded.prom")
    full = vllm.read_state(Metrics.parse(text, "f"), 0.0)
    assert vllm.read_state(Metrics.parse(text, "f", keep=vllm.SCRAPED), 0.0) == full
    kept = Metrics.parse(text, "f", keep=vllm.SCRAPED).names()
    assert "vllm:num_preemptions_total" in kept and not any("bucket" in n for n in kept)


# ---- startup logs and TensorRT-LLM's Prometheus gauges --------------------------------------


def test_sglang_log_gives_m_and_the_effective_running_cap():
    log = sglang.read_log(read("sglang", "startup.log"))
    assert log["max_total_num_tokens"] == 200000 and log["max_running_requests"] == 64
    assert log["chunked_prefill_size"] == 2048 and "available_gpu_mem" not in log  # not an int
    # An old build: /get_server_info without max_total_num_tokens, no /v1/loads; server_args
    # says 256 running, but the scheduler capped it at 64, as its log line says.
    info = {"server_args": {"max_running_requests": 256, "schedule_policy": "fcfs"}}
    found = sglang.build_profile(info, "/get_server_info", [], read("sglang", "startup.log"))
    p = found.profile
    assert (p.kv_tokens, p.max_running, p.chunk_size) == (200000, 64, 2048)
    assert found.sources["kv_tokens"] == "startup log max_total_num_tokens"
    assert found.sources["max_running"] == "startup log max_running_requests (effective)"
    with pytest.raises(KvbenchError, match="cannot read M"):
        sglang.build_profile(info, "/get_server_info", [])


def test_trtllm_log_takes_the_final_kv_pool():
    log = trtllm.read_log(read("trtllm", "startup.log"))
    assert log["kv_tokens"] == 263008 == 8219 * 32  # not the estimation pass's 8192
    assert (log["block_size"], log["max_batch_size"], log["max_num_tokens"]) == (32, 64, 2048)
    found = trtllm.build_profile({}, {}, "none", None, read("trtllm", "startup.log"))
    p = found.profile
    assert (p.kv_tokens, p.block_size, p.max_running, p.token_budget) == (263008, 32, 64, 2048)
    assert found.sources["kv_tokens"].startswith("startup log")
    assert found.sources["max_running"] == "startup log (max_batch_size)"
    # the launch command's own settings win over what the log repeats
    found = trtllm.build_profile(
        {}, {"max_batch_size": 8}, "launch command", None, read("trtllm", "startup.log")
    )
    assert found.profile.max_running == 8
    with pytest.raises(KvbenchError, match="no startup log"):
        trtllm.build_profile({}, {}, "none")


def test_trtllm_gauges_map_like_the_iteration_record():
    m = Metrics.parse(read("trtllm", "prometheus_metrics.prom"), "f")
    from_gauges = trtllm.prometheus_state(m, 5.0)
    record = json.loads(read("trtllm", "metrics_drain_1.json"))[-1]
    from_record = trtllm.record_state(record, 5.0)
    assert from_gauges.waiting == from_record.waiting == 2 + (41 - 32)
    assert from_gauges.running == from_record.running == 32
    assert from_gauges.kv_used_tokens == from_record.kv_used_tokens == 6100 * 32
    assert from_gauges.kv_usage == pytest.approx(from_record.kv_usage)
    assert trtllm.prometheus_state(Metrics.parse("", "f"), 0.0) is None
    found = trtllm.build_profile({}, {}, "none", m)
    assert found.profile.kv_tokens == 8219 * 32


def test_vllm_admission_rule_is_assumed_unless_the_launch_says_otherwise():
    m = Metrics.parse(read("vllm", "metrics_loaded.prom"), "f")
    found = vllm.build_profile(m, {}, "none")
    assert found.profile.full_sequence_admission is True
    assert found.sources["full_sequence_admission"].startswith("assumed: ")
    # --no-scheduler-reserve-full-isl, as vLLM's startup log lists it among non-default args
    log = read("vllm", "startup.log").replace(
        "non-default args: {", "non-default args: {'scheduler_reserve_full_isl': False, "
    )
    found = vllm.build_profile(m, {}, "none", log)
    assert found.profile.full_sequence_admission is False
    assert found.sources["full_sequence_admission"].startswith("startup log non-default args")
