"""The HTTP path end to end, through kvbench's emulators and stand-in servers, as users run it:
`boundary` and `--num-prompts` against HTTP engines, API keys and headers (and no credential
written anywhere), the time-scale header, waiting for a server that is still starting, and
client figures that stay honest when the client cannot keep up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from emulator_helpers import ListSink, emulator_process, serving

from kvbench._core import OUTPUT_SLOT, PROMPT_SLOT, HttpDriver
from kvbench.backends.base import QueueSample, RequestRecord, RequestSpec
from kvbench.backends.engines import ENGINES
from kvbench.backends.http import TIME_SCALE_HEADER, completion_body
from kvbench.backends.launch import free_port
from kvbench.benchmark.runner import summarize
from kvbench.emulate.formats import make_format
from kvbench.emulate.server import build_app
from kvbench.profile import build_profile
from kvbench.redact import redact_url

SECRET = "sk-kvbench-test-7f3a9c"
SECRET2 = "team-secret-51d0"
TINY = "uniform:1-16,1-16"


def _kvbench(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd=None):
    full = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kvbench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
        cwd=cwd,
    )


def _files_holding(root: Path, *needles: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


# ---- 1. boundary against an HTTP engine ----------------------------------------------------


def test_boundary_against_an_emulated_http_engine_brackets_the_boundary():
    """Before: 0 probes, theory μ n/a, exit 0 (the discovered profile's unknown iteration time
    made every planned duration NaN). Now b̄ comes from a saturating burst first."""
    r = _kvbench(
        "boundary",
        "--backend",
        "emulate:trtllm",
        "--method",
        "open-loop",
        "--workload",
        "uniform:1-32,1-32",
        "--kv-tokens",
        "2048",
        # the embedded default's scale: at 2.5 the measured A100 model's emulator can outrun a
        # loaded 2-core client (the search then stops on the client's lag, exit 1)
        "--time-scale",
        "1.25",
        "--precision",
        "0.25",
        "--max-engine-seconds",
        "150",
        "--json",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["emulated"] is True
    assert len(result["probes"]) >= 2
    assert result["theory_mu"] > 0 and np.isfinite(result["theory_mu"])
    bt = result["extras"]["batch_time"]
    # the A100 model's iteration at this scale is tens of ms, never NaN or zero
    assert 0.003 < bt["value"] < 0.2 and bt["samples"] >= 20
    assert result["lower"] is not None and result["upper"] is not None
    assert result["lower"] < result["upper"]
    verdicts = {p["verdict"] for p in result["probes"]}
    assert {"STABLE", "UNSTABLE"} <= verdicts


# ---- 2. --num-prompts over HTTP --------------------------------------------------------------


def test_num_prompts_runs_to_the_last_request_over_http(tmp_path):
    """Before: ValueError: duration inf must be > 0."""
    r = _kvbench(
        "run",
        "--backend",
        "emulate:vllm",
        "--workload",
        TINY,
        "--kv-tokens",
        "2048",
        "--time-scale",
        "2",
        "--request-rate",
        "10",
        "--num-prompts",
        "40",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["requests"] == {
        "scheduled": 40,
        "sent": 40,
        "completed": 40,
        "failed": 0,
        "unfinished": 0,
    }
    assert summary["emulated"] is True and summary["latency"]["e2e"]["n"] == 40


# ---- 3. authentication ------------------------------------------------------------------------


def test_a_key_reaches_completions_discovery_and_scrapes_and_is_never_written(tmp_path):
    with emulator_process("--engine", "vllm", "--kv-tokens", "1024", "--api-key", SECRET) as url:
        out = tmp_path / "run"
        r = _kvbench(
            "run",
            "--backend",
            "vllm",
            "--url",
            url,
            "--workload",
            TINY,
            "--request-rate",
            "8",
            "--duration",
            "3",
            "--header",
            f"X-Team={SECRET2}",
            "--output",
            str(out),
            "--json",
            env={"OPENAI_API_KEY": SECRET},
        )
        assert r.returncode == 0, r.stderr[-2000:]
        summary = json.loads(r.stdout)
        assert summary["requests"]["failed"] == 0 and summary["requests"]["completed"] > 5
        # the scraper sent the key too: /metrics answered, so queue samples carry engine state
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert samples and any(s.get("waiting") is not None for s in samples)
        assert SECRET not in r.stdout + r.stderr and SECRET2 not in r.stdout + r.stderr
        assert not _files_holding(out, SECRET, SECRET2)

        # without the key: one error line that says which flag gives it
        r = _kvbench(
            "run", "--backend", "vllm", "--url", url, "--request-rate", "1", "--duration", "2"
        )
        assert r.returncode != 0
        assert "--api-key" in r.stderr and "401" in r.stderr
        assert "Traceback" not in r.stderr

        # compare: key and header from flags; the command line, the config and every report
        # file keep neither
        reports = tmp_path / "reports"
        r = _kvbench(
            "compare",
            "--backends",
            "vllm",
            "--url",
            f"vllm={url}",
            "--workload",
            TINY,
            "--api-key",
            SECRET,
            "--header",
            f"X-Team={SECRET2}",
            "--max-engine-seconds",
            "20",
            "--precision",
            "0.5",
            "--output-dir",
            str(reports),
            "--no-progress",
            timeout=600,
        )
        assert SECRET not in r.stdout + r.stderr and SECRET2 not in r.stdout + r.stderr
        written = list(reports.rglob("*"))
        assert any(p.name == "compare.json" for p in written), r.stderr[-2000:]
        assert not _files_holding(reports, SECRET, SECRET2)
        engine = json.loads(next(reports.rglob("engine.json")).read_text())
        assert engine.get("calibration") is not None, engine.get("error")
        config = json.loads(next(reports.rglob("compare.json")).read_text())["config"]
        assert config["headers"] == ["Authorization", "X-Team"]


def test_credentials_in_a_url_are_refused_and_never_echoed(tmp_path):
    r = _kvbench(
        "run",
        "--backend",
        "vllm",
        "--url",
        "http://admin:hunter2@127.0.0.1:9/",
        "--request-rate",
        "1",
        "--duration",
        "1",
    )
    assert r.returncode != 0
    assert "hunter2" not in r.stdout + r.stderr and "admin" not in r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: http://***@127.0.0.1:9/")
    assert "--api-key" in lines[0]

    reports = tmp_path / "reports"
    r = _kvbench(
        "compare",
        "--backends",
        "vllm",
        "--url",
        "vllm=http://admin:hunter2@127.0.0.1:9?token=abc123",
        "--output-dir",
        str(reports),
        "--no-progress",
    )
    assert "hunter2" not in r.stdout + r.stderr and "abc123" not in r.stdout + r.stderr
    assert not _files_holding(reports, "hunter2", "abc123")


def test_redact_url():
    assert redact_url("http://u:p@h:1/x?key=s&b=2") == "http://***@h:1/x?key=%2A%2A%2A&b=%2A%2A%2A"
    assert redact_url("http://h:8000") == "http://h:8000"
    assert redact_url("http://[::1") == "http://[::1"


# ---- 4. the time-scale header ------------------------------------------------------------------


def _scaled_stand_in(scale: str, delay: float) -> web.Application:
    """An engine that says it runs at `scale` and answers each request in `delay` real seconds."""

    async def completions(request):
        body = await request.json()
        n = body["max_tokens"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(delay)
        for k in range(1, n + 1):
            chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
            chunk["usage"] = {"completion_tokens": k, "prompt_tokens": 4}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        final = {"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 4}}
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    async def models(request):
        return web.json_response({"data": [{"id": "m"}]})

    async def metrics(request):
        return web.Response(text="")

    @web.middleware
    async def mark(request, handler):
        resp = await handler(request)
        resp.headers[TIME_SCALE_HEADER] = scale
        return resp

    app = web.Application(middlewares=[mark])
    app.add_routes(
        [
            web.post("/v1/completions", completions),
            web.get("/v1/models", models),
            web.get("/metrics", metrics),
            web.get("/health", metrics),
        ]
    )
    return app


@pytest.mark.parametrize("scale", ["1e-9", "0.5"])
def test_a_servers_time_scale_header_is_ignored_and_noted(scale):
    """Before: 1e-9 hung the run forever; 0.5 halved every latency of a run labelled real."""
    with serving(_scaled_stand_in(scale, delay=0.2)) as url:
        backend = ENGINES["vllm"](url)
        sink = ListSink()
        started = time.monotonic()
        specs = [RequestSpec(i, i * 0.1, 4, 2) for i in range(5)]
        backend.execute(specs, sink, duration=3.0)
        assert time.monotonic() - started < 10
        assert backend.time_scale == 1.0 and backend.kind == "real"
        e2e = [r.finished - r.sent for r in sink.records]
        assert len(e2e) == 5 and min(e2e) >= 0.2  # real seconds, not halved
        assert len(backend.notes) == 1 and "ignored X-Kvbench-Time-Scale" in backend.notes[0]
        assert scale in backend.notes[0]


def test_a_time_scale_the_user_gives_is_followed_and_bounded():
    with serving(_scaled_stand_in("2", delay=0.2)) as url:
        backend = ENGINES["vllm"](url, time_scale=2.0)
        sink = ListSink()
        backend.execute([RequestSpec(0, 0.0, 4, 2)], sink, duration=3.0)
        assert backend.time_scale == 2.0 and not backend.notes
        (r,) = sink.records
        assert r.finished - r.sent >= 0.4  # engine seconds: twice the real 0.2 s
    for bad in ("1e-9", "5000", "nan"):
        r = _kvbench("run", "--backend", "vllm", "--url", "http://127.0.0.1:9", "--time-scale",
                     bad, "--request-rate", "1", "--duration", "1")  # fmt: skip
        assert r.returncode != 0 and "--time-scale must be in [0.01, 1000]" in r.stderr


def test_the_note_reaches_the_run_summary(tmp_path):
    """An emulator the user started at 0.5 engine seconds per real second, attached without
    --time-scale: measured in real seconds, and the run says why."""
    with emulator_process("--engine", "vllm", "--kv-tokens", "1024", "--time-scale", "0.5") as url:
        out = tmp_path / "r"
        r = _kvbench("run", "--backend", "vllm", "--url", url, "--request-rate", "5",
                     "--duration", "2", "--workload", "fixed:4,2",
                     "--output", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note:" in r.stdout and "ignored X-Kvbench-Time-Scale: '0.5'" in r.stdout
    header = json.loads((out / "header.json").read_text())
    assert header["time_scale"] == 1.0 and len(header["notes"]) == 1
    assert json.loads((out / "summary.json").read_text())["notes"] == header["notes"]


# ---- 6. waiting for a server that is still starting -------------------------------------------


def test_attaching_waits_for_a_server_that_is_starting():
    """Before: aiohttp's connect error at once. Now it says it waits, and the run goes ahead
    once the server answers (started here only after kvbench said it is waiting)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvbench", "run", "--backend", "vllm", "--url", url,
         "--request-rate", "5", "--duration", "1", "--workload", "fixed:4,2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    said = proc.stderr.readline()
    assert said.startswith(f"waiting up to 60 s for {url}/v1/models to start (cannot connect")
    fmt = make_format("vllm", build_profile("vllm"))
    with serving_on(build_app(fmt, zero_latency=True), port):
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out)["requests"]["completed"] >= 1


def test_attaching_gives_up_after_the_wait_with_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = _kvbench("run", "--backend", "vllm", "--url", url, "--wait-for-server", "1.5",
                 "--request-rate", "1", "--duration", "1")  # fmt: skip
    assert r.returncode != 0 and time.monotonic() - started < 30
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert (
        len(errors) == 1 and f"{url}/v1/models: no engine answered after waiting 1.5 s" in errors[0]
    )
    assert "--wait-for-server" in errors[0] and "Traceback" not in r.stderr


@contextlib.contextmanager
def serving_on(app: web.Application, port: int):
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


# ---- 5. honest client figures ----------------------------------------------------------------


def test_a_client_that_falls_behind_sends_nothing_past_the_window():
    """2,000 requests all due at t = 0 with 20,000-token prompts: rendering each body takes the
    scheduler a fraction of a millisecond, so it cannot send them all in a 50 ms run. Before,
    it went on sending for seconds past the end."""

    async def stalls(request):
        await request.read()
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.add_routes([web.post("/v1/completions", stalls)])
    n, window = 2000, 0.05
    with serving(app) as url:
        driver = HttpDriver(
            url + "/v1/completions",
            np.zeros(n),
            np.full(n, 20_000, dtype=np.int64),
            np.full(n, 2, dtype=np.int64),
            json.dumps(completion_body("m", [PROMPT_SLOT], OUTPUT_SLOT)),
            window,
        )
        driver.start(0.0)
        while not driver.finished:
            time.sleep(0.01)
        records = driver.poll()
    assert 0 < driver.sent == len(records) < n
    assert max(r.sent for r in records) < window


def test_achieved_rate_is_what_was_sent_over_the_span_it_was_sent_in():
    """A 3 s window at 10 req/s whose client sent its 30 requests over 6 s offered 5 req/s;
    completions after the window are not the window's."""
    header = {
        "config": {"request_rate": 10.0, "duration": 3.0, "confidence": 0.95},
        "window_end": 3.0,
        "scheduled_in_window": 30,
        "kind": "real",
        "backend": "vllm",
    }
    records = [
        RequestRecord(
            i,
            i / 10,
            4,
            2,
            sent=i / 5,
            first_token=i / 5 + 0.1,
            finished=i / 5 + 0.25,
            output_tokens=2,
            token_times=[i / 5 + 0.1, i / 5 + 0.25],
        )  # fmt: skip
        for i in range(30)
    ]
    summary = summarize(header, records, [QueueSample(0.0, 0)], status="completed")
    assert summary["achieved_rate"] == pytest.approx(30 / max(3.0, 29 / 5))
    done_in_window = sum(1 for r in records if r.finished <= 3.0)
    assert summary["requests"]["completed"] == done_in_window == 14
    assert summary["latency"]["e2e"]["n"] == 14
    assert summary["client_kept_schedule"] is False


def _peak_rss_of_run(url: str, seconds: float) -> tuple[int, int]:
    """(peak RSS in bytes, requests sent) of a client process running `seconds` of
    2,000-token prompts at 300 req/s against `url`."""
    code = f"""
import resource, json
from kvbench.backends.engines import ENGINES
from kvbench.benchmark.runner import RunSpec, execute_run
from kvbench.workload import load_workload
spec = RunSpec("fixed:2000,1", 300.0, duration={seconds})
r = execute_run(ENGINES["vllm"]({url!r}), load_workload("fixed:2000,1"), spec)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps([peak, r.summary["requests"]["sent"]]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peak, sent = json.loads(out.stdout.splitlines()[-1])
    return peak, sent


def test_memory_stays_flat_as_a_run_grows():
    """A client's peak RSS over 3 s and over 12 s of 2,000-token prompts at 300 req/s against a
    zero-latency emulator: bodies are rendered as they come due, so the longer run costs no
    more memory. Built up front, the 2,700 extra bodies would be ~80 MB more (measured: 260 MB
    peak for 20 s before, 97 MB for 20 s and for 60 s after)."""
    with emulator_process(
        "--engine", "vllm", "--latency", "zero", "--max-model-len", "100000"
    ) as url:
        short, n_short = _peak_rss_of_run(url, 3.0)
        long, n_long = _peak_rss_of_run(url, 12.0)
    assert n_long > n_short + 2000
    assert long - short < 30e6, (short, long)


def _draining_vllm(counts: list[int]) -> tuple[web.Application, list[int]]:
    """vLLM's /metrics whose running + waiting gauges read `counts` in turn (then the last one
    for ever); returns the app and the list of counts served."""
    served: list[int] = []

    async def metrics(request):
        n = counts[min(len(served), len(counts) - 1)]
        served.append(n)
        text = (
            f'vllm:num_requests_running{{engine="0"}} {min(n, 4)}.0\n'
            f'vllm:num_requests_waiting{{engine="0"}} {max(n - 4, 0)}.0\n'
        )
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app, served


@pytest.mark.parametrize(
    "counts, reads",
    [
        ([9, 7, 4, 2, 0], 5),  # drains: the run starts at the first idle reading
        ([6, 6], None),  # other load, or stuck gauges: the count stops falling, start anyway
    ],
)
def test_a_run_after_one_that_left_requests_waits_for_the_engine_to_drain(
    counts, reads, monkeypatch
):
    import kvbench.backends.http as http
    from kvbench.backends.client import ServerClient

    monkeypatch.setattr(http, "DRAIN_STALL", 0.6)
    app, served = _draining_vllm(counts)
    with serving(app) as url:
        backend = ENGINES["vllm"](url, scrape_period=0.05)

        async def wait():
            async with backend._session() as session:
                await backend._wait_until_idle(ServerClient(session, url))

        started = time.monotonic()
        backend._run(wait())
        waited = time.monotonic() - started
    if reads is not None:
        assert len(served) == reads and served[-1] == 0
    else:
        # 0.6 s without a fall, at one reading per 0.05 s
        assert 0.6 <= waited < 3 and set(served) == {6}


def test_only_requests_a_run_left_unfinished_make_the_next_one_wait():
    backend = ENGINES["vllm"]("http://127.0.0.1:9")
    spec = RequestSpec(0, 0.0, 4, 4)

    class Done:  # the fields of the driver's DriverRecord that _deliver reads
        index, sent, first_token, output_tokens, token_times, message = 0, 0.0, 0.1, 4, [], None
        error = None
        finished = 0.5

    class Cut(Done):
        finished = None

    sink = ListSink()
    backend._deliver([Done()], [spec], sink, [])
    assert backend._cut_off == 0
    backend._deliver([Cut(), Cut()], [spec], sink, [])
    assert backend._cut_off == 2
