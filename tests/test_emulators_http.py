"""Each adapter against its emulator in zero-latency mode (wire formats, strict fields, state
endpoints), and the driver's failure accounting against misbehaving servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import pytest
from aiohttp import web

from emulator_helpers import ListSink, serving
from kvbench.backends.base import RequestSpec
from kvbench.backends.engines import ENGINES
from kvbench.backends.http import completion_body
from kvbench.backends.launch import free_port
from kvbench.emulate.formats import make_format
from kvbench.emulate.server import build_app
from kvbench.errors import KvbenchError
from kvbench.profile import build_profile


def specs(n: int, rate: float, prompt: int = 16, output: int = 8) -> list[RequestSpec]:
    return [RequestSpec(i, i / rate, prompt, output) for i in range(n)]


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_adapter_against_zero_latency_emulator(engine):
    fmt = make_format(engine, build_profile(engine, kv_tokens=20_000))
    with serving(build_app(fmt, zero_latency=True)) as url:
        backend = ENGINES[engine](url, scrape_period=0.05)
        sink = ListSink()
        backend.execute(specs(40, 100.0, output=12), sink, duration=1.0)
    assert backend.kind == "emulated"  # the emulator header, never passed off as an engine
    assert not backend.failures
    assert len(sink.records) == 40
    assert all(r.output_tokens == 12 and len(r.token_times) == 12 for r in sink.records)
    assert all(r.first_token >= r.sent for r in sink.records)


def test_trtllm_emulator_rejects_unknown_fields_like_the_engine():
    fmt = make_format("trtllm", build_profile("trtllm"))
    with serving(build_app(fmt, zero_latency=True)) as url:
        def post(body):
            req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()

        ok = completion_body("kvbench-emulated", [1000, 1001], 3)
        assert post(ok)[0] == 200
        status, body = post({**ok, "return_tokens_as_token_ids": True})
        assert status == 400 and b"Extra inputs are not permitted" in body
        assert post({k: v for k, v in ok.items() if k != "model"})[0] == 400


def test_sglang_usage_is_off_unless_asked():
    fmt = make_format("sglang", build_profile("sglang"))
    with serving(build_app(fmt, zero_latency=True)) as url:
        body = {"model": "default", "prompt": [1000, 1001], "max_tokens": 2, "min_tokens": 2,
                "ignore_eos": True, "stream": True}
        req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        text = urllib.request.urlopen(req).read().decode()
    assert '"usage"' not in text and text.endswith("data: [DONE]\n\n")


def _driven(app: web.Application, requests, **options):
    with serving(app) as url:
        backend = ENGINES["vllm"](url, scrape_period=0.05, **options)
        sink = ListSink()
        error = None
        try:
            backend.execute(requests, sink, duration=2.0)
        except KvbenchError as err:
            error = err
    return backend, sink, error


def _stand_in(handler) -> web.Application:
    """A vLLM-like server whose completions endpoint is `handler`."""
    app = web.Application()
    fmt = make_format("vllm", build_profile("vllm"))
    app.add_routes([web.post("/v1/completions", handler), web.get("/v1/models", _models),
                    web.get("/metrics", _metrics(fmt)), web.get("/health", _health)])
    return app


async def _health(request):
    return web.Response(text="")


async def _models(request):
    return web.json_response({"data": [{"id": "m"}]})


def _metrics(fmt):
    async def handler(request):
        return web.Response(text=fmt.metrics_text(), content_type="text/plain")
    return handler


def test_5xx_and_short_outputs_are_counted_never_dropped():
    calls = {"n": 0}

    async def flaky(request):
        calls["n"] += 1
        body = await request.json()
        if calls["n"] % 3 == 0:
            return web.json_response({"error": "overloaded"}, status=503)
        resp = web.StreamResponse()
        await resp.prepare(request)
        n = body["max_tokens"] - (1 if calls["n"] % 3 == 1 else 0)  # every third one short
        chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
        await resp.write(b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for _ in range(n)))
        final = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": n}}
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    backend, sink, error = _driven(_stand_in(flaky), specs(30, 50.0, output=5))
    assert error is None
    assert len(sink.records) == 30
    assert backend.failures == {"http_503": 10, "short_output": 10}
    assert sorted(r.error or "ok" for r in sink.records).count("ok") == 10
    short = [r for r in sink.records if r.error == "short_output"]
    assert all(r.output_tokens == 4 and r.finished is not None for r in short)


def test_timeouts_are_counted():
    async def hang(request):
        await asyncio.sleep(5)
        return web.Response(text="late")

    backend, sink, error = _driven(_stand_in(hang), specs(5, 20.0), request_timeout=0.3)
    assert backend.failures == {"timeout": 5}
    assert all(r.error == "timeout" and r.finished is None for r in sink.records)


def test_engine_killed_mid_run_keeps_partial_results_and_reports(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvbench", "emulate", "--engine", "vllm", "--port", str(port),
         "--latency", "zero"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        backend = ENGINES["vllm"](url, scrape_period=0.1)
        sink = ListSink()
        killer = subprocess.Popen([sys.executable, "-c",
                                   f"import os,time,signal; time.sleep(1.5); os.kill({proc.pid}, signal.SIGKILL)"])
        with pytest.raises(KvbenchError, match=rf"{url}: engine stopped answering at t="):
            backend.execute(specs(200, 40.0, output=20), sink, duration=5.0)
        killer.wait()
    finally:
        proc.kill()
        proc.wait()
    finished = [r for r in sink.records if r.finished is not None]
    assert len(finished) > 20  # what completed before the kill is all there
    assert backend.failures["connection_refused"] >= 1
    assert sum(backend.failures.values()) + len(finished) == len(sink.records)
    assert sink.samples and sink.samples[0].running is not None
