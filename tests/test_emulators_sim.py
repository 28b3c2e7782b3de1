"""The SGLang and TensorRT-LLM adapters against their emulators with the simulated engine
behind them (real time, 4× speed): profile discovery, per-iteration records, sticky gauges.
Schedules and durations are in the emulated engine's seconds: the backend reads the emulator's
time scale and runs them 4× faster."""

from __future__ import annotations

import urllib.request

from emulator_helpers import ListSink, serving

from kvbench.backends.base import RequestSpec
from kvbench.backends.engines import ENGINES
from kvbench.backends.prometheus import Metrics
from kvbench.emulate.formats import make_format
from kvbench.emulate.server import build_app
from kvbench.emulate.trtllm import TrtllmFormat
from kvbench.profile import IterationTimeModel, build_profile

FAST = IterationTimeModel.constant(0.02)


def test_trtllm_iteration_records_cover_every_iteration():
    profile = build_profile("trtllm", kv_tokens=4000, max_running=8, iteration_time=FAST)
    with serving(build_app(make_format("trtllm", profile), time_scale=4.0)) as url:
        backend = ENGINES["trtllm"](url, scrape_period=0.1, time_scale=4.0)
        found = backend.discover_profile()  # an idle engine: discovery sends one warm-up request
        sink = ListSink()
        backend.execute([RequestSpec(i, i * 0.02, 100, 20) for i in range(40)], sink, duration=12.0)
    assert backend.time_scale == 4.0
    assert found.profile.kv_tokens == 4000 and found.profile.max_running == 8
    assert found.sources["kv_tokens"] == "/metrics kvCacheStats maxNumBlocks × tokensPerBlock"
    assert not backend.failures and backend.scrape_log.missing_iterations == 0
    assert all(r.output_tokens == 20 for r in sink.records)
    # One sample per engine iteration (20 ms engine time = 5 ms real), far denser than the scrapes.
    assert len(sink.samples) > 5 * backend.scrape_log.scrapes
    assert max(s.running for s in sink.samples) == 8  # the running cap binds


def test_trtllm_without_iteration_records_samples_the_prometheus_gauges():
    """enable_iter_perf_stats off: /metrics stays [], so M and the queue come from the newer
    trtllm_ gauges on /prometheus/metrics, one state per scrape."""
    profile = build_profile("trtllm", kv_tokens=4000, max_running=8, iteration_time=FAST)
    fmt = TrtllmFormat(profile, iter_stats=False)
    with serving(build_app(fmt, time_scale=4.0)) as url:
        backend = ENGINES["trtllm"](url, scrape_period=0.05, time_scale=4.0)
        found = backend.discover_profile()
        sink = ListSink()
        backend.execute([RequestSpec(i, i * 0.005, 100, 20) for i in range(40)], sink, duration=3.0)
    assert found.profile.kv_tokens == 4000
    assert found.sources["kv_tokens"].startswith("/prometheus/metrics")
    assert "gauges" in found.sources["queue_state"]
    assert not backend.failures and all(r.output_tokens == 20 for r in sink.records)
    assert len(sink.samples) == backend.scrape_log.scrapes  # one state per scrape
    assert max(s.running for s in sink.samples) == 8  # the scheduled gauge saw the cap bind
    assert max(s.waiting for s in sink.samples) > 0


def test_sglang_gauges_stick_between_refreshes_while_loads_are_live():
    profile = build_profile("sglang", kv_tokens=20000, iteration_time=FAST)
    fmt = make_format("sglang", profile)
    with serving(build_app(fmt, time_scale=4.0)) as url:
        backend = ENGINES["sglang"](url, scrape_period=0.05, time_scale=4.0)
        found = backend.discover_profile()
        sink = ListSink()
        backend.execute([RequestSpec(i, i * 0.08, 50, 30) for i in range(50)], sink, duration=10.0)
        gauges = Metrics.parse(urllib.request.urlopen(url + "/metrics").read().decode(), "m")
    assert found.profile.kv_tokens == 20000
    assert found.sources["max_running"] == "/v1/loads max_running_requests (effective)"
    assert not backend.failures and all(r.output_tokens == 30 for r in sink.records)
    assert max(s.running for s in sink.samples) > 5  # /v1/loads saw the load live
    # The gauges refreshed only every 40 iterations: they hold a value from a refresh, and the
    # adapter read /v1/loads, not them, for queue lengths.
    assert fmt.gauges["running"] == gauges.total("sglang:num_running_reqs")
