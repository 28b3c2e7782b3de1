"""Each adapter against its emulator in zero-latency mode (wire formats, strict fields, state
endpoints), and the driver's failure accounting against misbehaving servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from emulator_helpers import ListSink, serving

from kvbench._core import HttpDriver
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
    assert all(r.first_token >= r.sent >= r.intended_send for r in sink.records)  # never early
    assert sorted(r.request_id for r in sink.records) == list(range(40))


def test_trtllm_emulator_rejects_unknown_fields_like_the_engine():
    fmt = make_format("trtllm", build_profile("trtllm"))
    with serving(build_app(fmt, zero_latency=True)) as url:

        def post(body):
            req = urllib.request.Request(
                url + "/v1/completions",
                json.dumps(body).encode(),
                {"Content-Type": "application/json"},
            )
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
        body = {
            "model": "default",
            "prompt": [1000, 1001],
            "max_tokens": 2,
            "min_tokens": 2,
            "ignore_eos": True,
            "stream": True,
        }
        req = urllib.request.Request(
            url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
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
    app.add_routes(
        [
            web.post("/v1/completions", handler),
            web.get("/v1/models", _models),
            web.get("/metrics", _metrics(fmt)),
            web.get("/health", _health),
        ]
    )
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
        await resp.write(
            b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for _ in range(n))
        )
        final = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": n}}
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    backend, sink, error = _driven(_stand_in(flaky), specs(30, 50.0, output=5))
    assert error is None
    assert len(sink.records) == 30
    assert backend.failures == {"http_503": 10, "short_output": 10}
    said = {(r.error, r.message) for r in sink.records if r.error}
    # the JSON error body's message, and the driver's own account of a short output
    assert said == {
        ("http_503", "overloaded"),
        ("short_output", "4 of 5 tokens (finish_reason None)"),
    }
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
        [
            sys.executable,
            "-m",
            "kvbench",
            "emulate",
            "--engine",
            "vllm",
            "--port",
            str(port),
            "--latency",
            "zero",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
        killer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import os,time,signal; time.sleep(1.5); os.kill({proc.pid}, signal.SIGKILL)",
            ]
        )
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


FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "engine, tokens, chunks", [("vllm", 5, 5), ("sglang", 3, 3), ("trtllm", 3, 2)]
)
def test_real_shaped_streams_through_the_driver(engine, tokens, chunks):
    """Each engine's captured or source-derived stream, served in small pieces so lines span
    reads: counts come from the final usage chunk (TensorRT-LLM's is a chat object, and one of
    its chunks carries two tokens), one token event per output chunk."""
    stream = (FIX / engine / "completion_stream.sse").read_bytes()

    async def replay(request):
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for k in range(0, len(stream), 97):
            await resp.write(stream[k : k + 97])
            await asyncio.sleep(0.001)
        return resp

    backend, sink, error = _driven(_stand_in(replay), specs(10, 50.0, output=tokens))
    assert error is None and not backend.failures
    assert len(sink.records) == 10
    for r in sink.records:
        assert r.output_tokens == tokens and len(r.token_times) == chunks
        assert r.first_token == r.token_times[0] and r.finished >= r.token_times[-1]


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_broken_streams_are_failures_by_kind():
    chunk = _sse({"choices": [{"index": 0, "text": "x", "finish_reason": None}]})
    final = _sse({"choices": [], "usage": {"prompt_tokens": 16, "completion_tokens": 2}})
    done = b"data: [DONE]\n\n"
    bodies = [
        chunk * 2 + final + done,  # fine
        chunk * 2 + final,  # truncated_stream: no [DONE]
        chunk * 2 + done,  # missing_usage: no closing usage chunk
        chunk + b"data: {not json\n\n" + final + done,  # bad_stream
        chunk * 3 + _sse({"choices": [], "usage": {"completion_tokens": 3}}) + done,  # long_output
    ]
    calls = {"n": 0}

    async def handler(request):
        await request.read()
        body = bodies[calls["n"] % len(bodies)]
        calls["n"] += 1
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(body)
        return resp

    backend, sink, error = _driven(_stand_in(handler), specs(25, 50.0, output=2))
    assert error is None
    assert backend.failures == {
        "truncated_stream": 5,
        "missing_usage": 5,
        "bad_stream": 5,
        "long_output": 5,
    }
    assert all("not json" in r.message for r in sink.records if r.error == "bad_stream")
    long = [r for r in sink.records if r.error == "long_output"]
    assert all(r.output_tokens == 3 and r.finished is not None for r in long)
    unfinished = [r for r in sink.records if r.error in ("truncated_stream", "missing_usage")]
    assert all(r.finished is None and len(r.token_times) == 2 for r in unfinished)


def test_connection_dropped_mid_stream_is_a_reset():
    calls = {"n": 0}

    async def handler(request):
        await request.read()
        calls["n"] += 1
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(_sse({"choices": [{"index": 0, "text": "x", "finish_reason": None}]}))
        if calls["n"] % 2:
            request.transport.close()  # mid-stream: the chunked body never ends
            return resp
        await resp.write(
            _sse({"choices": [], "usage": {"completion_tokens": 1}}) + b"data: [DONE]\n\n"
        )
        return resp

    backend, sink, error = _driven(_stand_in(handler), specs(10, 50.0, output=1))
    assert error is None  # /health still answers: the engine is up, these requests failed
    assert backend.failures == {"connection_reset": 5}
    assert sum(r.finished is not None for r in sink.records) == 5


def test_requests_in_flight_at_the_end_are_unfinished_not_failed():
    async def stalls(request):
        await request.read()
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(_sse({"choices": [{"index": 0, "text": "x", "finish_reason": None}]}))
        await asyncio.sleep(30)
        return resp

    started = time.monotonic()
    backend, sink, error = _driven(_stand_in(stalls), specs(5, 10.0))
    assert time.monotonic() - started < 15  # ends at the run's duration, not the server's 30 s
    assert error is None and not backend.failures
    assert len(sink.records) == 5
    assert all(
        r.sent is not None and r.first_token is not None and r.finished is None and r.error is None
        for r in sink.records
    )


def test_stop_ends_the_run_and_keeps_every_record():
    async def stalls(request):
        await request.read()
        await asyncio.sleep(30)
        return web.Response(text="late")

    with serving(_stand_in(stalls)) as url:
        n = 20
        driver = HttpDriver(
            url + "/v1/completions",
            np.arange(n) * 0.02,
            [b"{}"] * n,
            np.full(n, 4, dtype=np.int64),
            60.0,
        )
        driver.start(0.0)
        time.sleep(0.2)
        driver.stop()
        assert driver.finished
        records = driver.poll()
    assert 0 < driver.sent == len(records) < n  # sending stopped; each sent request reported
    assert all(r.error is None and r.finished is None for r in records)


def test_driver_refuses_a_bad_schedule():
    one = [b"{}"]
    with pytest.raises(ValueError, match="must not decrease"):
        HttpDriver(
            "http://127.0.0.1:1/v1/completions",
            np.array([0.2, 0.1]),
            one * 2,
            np.ones(2, dtype=np.int64),
            1.0,
        )
    with pytest.raises(ValueError, match="one of each per request"):
        HttpDriver(
            "http://127.0.0.1:1/v1/completions",
            np.array([0.1]),
            one * 2,
            np.ones(1, dtype=np.int64),
            1.0,
        )
    with pytest.raises(ValueError, match="only http://"):
        HttpDriver(
            "https://127.0.0.1:1/v1/completions",
            np.array([0.1]),
            one,
            np.ones(1, dtype=np.int64),
            1.0,
        )


def test_https_is_refused_with_the_reason():
    with pytest.raises(
        KvbenchError,
        match=r"https://engine:8000: kvbench drives engines over "
        r"plain http:// only",
    ):
        ENGINES["vllm"]("https://engine:8000")
