"""Failure accounting: failed requests are never departures, a run with more than 1% failures is
FAILING, failures are counted by kind with what the server said (trimmed, credentials masked),
and the engine's state (preemptions, waiting queue, KV usage) reaches the summary."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from compare_fixture import make_compare_dir

from kvbench.backends.base import Backend, QueueSample, RequestRecord
from kvbench.backends.registry import resolve_backend
from kvbench.benchmark.failures import (
    FAILING_FRACTION,
    MESSAGE_CHARS,
    failure_summary,
    merge_failures,
    server_message,
)
from kvbench.benchmark.recorder import RunRecorder
from kvbench.benchmark.runner import summarize
from kvbench.benchmark.search import find_boundary
from kvbench.cli import cli
from kvbench.errors import KvbenchError
from kvbench.export.compare_report import write_report
from kvbench.output.run import run_summary_text
from kvbench.redact import redact
from kvbench.report.schema import SCHEMA_VERSION, load_results
from kvbench.workload import load_workload

RATE, WINDOW, SERVICE = 10.0, 120.0, 0.2


def _header() -> dict:
    n = int(RATE * WINDOW)
    return {
        "kind": "real",
        "backend": "vllm",
        "config": {"request_rate": RATE, "confidence": 0.95, "tolerance": 0.05},
        "window_end": WINDOW,
        "scheduled_in_window": n,
    }


def _records(fail_every: int | None = None, error: str = "http_500", message: str | None = None):
    """A deterministic run at RATE: one arrival every 1/RATE s, each served in SERVICE s (the
    queue never holds more than two); every `fail_every`-th request fails at once instead."""
    out = []
    for i in range(int(RATE * WINDOW)):
        t = i / RATE
        r = RequestRecord(i, t, 8, 4, sent=t)
        if fail_every and i % fail_every == 0:
            r.error, r.message = error, message
        else:
            r.first_token, r.finished, r.output_tokens = t + 0.05, t + SERVICE, 4
            r.token_times = [t + 0.05, t + 0.1, t + 0.15, t + SERVICE]
        out.append(r)
    return out


def test_a_healthy_run_is_stable():
    s = summarize(_header(), _records(), [], status="completed")
    assert s["verdict"] == "STABLE"
    assert s["failures"]["count"] == 0 and s["failures"]["fraction"] == 0.0


def test_a_run_whose_engine_died_is_never_stable():
    """`kvbench report` on a run whose engine died printed a green STABLE (95%): what the queue
    did until then stays in the evidence, but no verdict is claimed."""
    s = summarize(_header(), _records(), [], status="failed")
    assert s["verdict"] is None and s["evidence"]["verdict"] == "STABLE"
    assert s["evidence"]["reason"] == "no verdict: the run failed before its planned end"
    text = run_summary_text({**s, "error": "engine stopped answering"})
    assert "STABLE" not in text and "engine stopped answering" in text


def test_every_request_answered_500_is_failing_with_no_departures():
    """The issue's case: a server that answers every completion with HTTP 500 was STABLE (95%)
    with departures of 10 req/s and 0 completions."""
    error = {"message": "Internal Server Error", "type": "InternalServerError", "code": 500}
    body = json.dumps({"error": error})
    s = summarize(_header(), _records(fail_every=1, message=body), [], status="completed")
    assert s["verdict"] == "FAILING"
    assert s["requests"]["completed"] == 0 and s["requests"]["failed"] == 1200
    assert s["evidence"]["reason"] == (
        '100% of requests failed: http_500 ×1,200 ("Internal Server Error")'
    )
    assert s["failures"]["kinds"] == [
        {"kind": "http_500", "count": 1200, "messages": ["Internal Server Error"]}
    ]
    text = run_summary_text(s)
    assert "FAILING" in text and "STABLE" not in text
    assert "departures" not in text  # nothing departed: no departure figure is shown


def test_failures_are_not_departures():
    """Half the requests fail at once: the departure rate is that of the completions (≈ RATE/2),
    not of everything that left."""
    s = summarize(_header(), _records(fail_every=2), [], status="completed")
    assert s["verdict"] == "FAILING"
    assert s["evidence"]["departure_rate"] == pytest.approx(RATE / 2, rel=0.05)
    assert s["evidence"]["queue_verdict"] == "STABLE"  # the completions alone kept up


@pytest.mark.parametrize(
    ("fail_every", "verdict"),
    [(200, "STABLE"), (120, "STABLE"), (50, "FAILING"), (10, "FAILING")],
)
def test_failing_above_one_percent(fail_every, verdict):
    """0.5% and 0.83% of requests failed: judged on the completions; 2% and 10%: FAILING."""
    s = summarize(_header(), _records(fail_every=fail_every), [], status="completed")
    fraction = s["failures"]["fraction"]
    assert fraction == pytest.approx(1 / fail_every, rel=0.01)  # the last two end after the window
    assert (fraction > FAILING_FRACTION) == (verdict == "FAILING")
    assert s["verdict"] == verdict


def test_messages_kept_per_kind_are_the_first_three_distinct():
    failures = [("http_400", f"bad request {i % 5}") for i in range(20)] + [("timeout", None)]
    summary = failure_summary(failures, completed=0)
    kinds = {k["kind"]: k for k in summary["kinds"]}
    assert kinds["http_400"]["messages"] == ["bad request 0", "bad request 1", "bad request 2"]
    assert kinds["http_400"]["count"] == 20 and kinds["timeout"] == {
        "kind": "timeout",
        "count": 1,
        "messages": [],
    }
    assert [k["kind"] for k in summary["kinds"]] == ["http_400", "timeout"]
    assert not summary["load_shedding"]
    assert failure_summary([("http_429", None), ("timeout", None)], 0)["load_shedding"]


def test_auth_failures_name_the_key_flag():
    s = failure_summary([("http_401", '{"error": "Unauthorized"}')] * 3, completed=1)
    assert s["kinds"][0]["hint"] == "engine refused the key: pass --api-key or set OPENAI_API_KEY"
    assert "pass --api-key" in s["reason"] and '"Unauthorized"' in s["reason"]


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        # vLLM ≥ 0.10 (ErrorResponse with ErrorInfo)
        (
            json.dumps(
                {"error": {"message": "max_tokens must be at least 1", "type": "BadRequestError"}}
            ),
            "max_tokens must be at least 1",
        ),
        # vLLM before that, and SGLang
        (
            json.dumps(
                {"object": "error", "message": "The model `x` does not exist.", "code": 404}
            ),
            "The model `x` does not exist.",
        ),
        ('{"error": "Unauthorized"}', "Unauthorized"),  # vLLM's --api-key middleware
        ('{"detail": "Not Found"}', "Not Found"),  # FastAPI
        ("upstream connect error\r\n  or disconnect", "upstream connect error or disconnect"),
        ("bin\x00ary\x1b[31m", "bin ary [31m"),
        ("", None),
        (None, None),
    ],
)
def test_server_message_is_the_message_on_one_line(raw, kept):
    assert server_message(raw) == kept


def test_server_message_is_trimmed_and_never_holds_a_credential():
    long = "x" * 5000
    assert len(server_message(long)) == MESSAGE_CHARS and server_message(long).endswith("…")
    said = server_message(
        '{"error": {"message": "Incorrect API key provided: sk-abcdefghijklmnop1234. '
        'Request to http://admin:hunter2@10.0.0.1/v1 with Authorization: Bearer tok.en-123"}}'
    )
    assert "abcdefghijklmnop" not in said and "hunter2" not in said and "tok.en-123" not in said
    assert "sk-***" in said and "http://***@10.0.0.1/v1" in said and "Bearer ***" in said


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("GET http://user:pw@host:8000/metrics", "GET http://***@host:8000/metrics"),
        ("api_key=abc123&model=x", "api_key=***&model=x"),
        ('{"x-api-key": "abc"}', '{"x-api-key": "***"}'),
        ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic ***"),
        ("hf_abcdefghijklmnop", "hf-***"),
        # not credentials
        ("max_tokens must be <= 2048 tokens", "max_tokens must be <= 2048 tokens"),
        ("prompt token ids out of range", "prompt token ids out of range"),
    ],
)
def test_redact(text, masked):
    assert redact(text) == masked


def test_merge_failures_adds_counts_and_keeps_first_messages():
    a = [{"kind": "http_500", "count": 2, "messages": ["a", "b"]}]
    b = [
        {"kind": "http_500", "count": 5, "messages": ["b", "c", "d"]},
        {"kind": "timeout", "count": 9, "messages": []},
    ]
    assert merge_failures([a, b]) == [
        {"kind": "timeout", "count": 9, "messages": []},
        {"kind": "http_500", "count": 7, "messages": ["a", "b", "c"]},
    ]


def test_engine_state_reaches_the_summary_and_text():
    """vLLM preempted 11 times during the run (its counter stood at 100 before, and an engine
    restart reset it once: 100 → 104 → 0 → 7 is 4 + 7), at up to 97% KV usage."""
    counts = [100, 100, 104, 0, 7, 7]
    samples = [
        QueueSample(time=t, in_flight=1, waiting=w, running=2, kv_usage=kv, preemptions_total=c)
        for t, w, kv, c in zip(
            [-0.05, 20.0, 40.0, 60.0, 80.0, 100.0],
            [0, 2, 4, 2, 0, 0],
            [0.1, 0.5, 0.97, 0.5, 0.2, 0.2],
            counts,
            strict=True,
        )
    ]
    samples.append(
        QueueSample(time=WINDOW + 5, in_flight=0, preemptions_total=50)
    )  # after the window
    s = summarize(_header(), _records(), samples, status="completed")
    assert s["preemptions"] == 11
    assert s["waiting"]["max"] == 4 and s["kv_usage"]["max"] == pytest.approx(0.97)
    text = run_summary_text(s)
    assert "preemptions 11" in text and "KV usage mean" in text and "max 97%" in text
    assert "waiting mean" in text and "max 4" in text


class RateLimitedGateway(Backend):
    """A gateway in front of a simulated engine that admits at most `limit` requests/s (a token
    bucket holding `burst`) and answers the rest at once with `error`, as a rate-limiting proxy
    does; with `every`, it instead fails every `every`-th request that way whatever the rate."""

    def __init__(self, seed, *, limit=None, every=None, error="http_429"):
        self.engine = resolve_backend("sim:vllm", kv_tokens=2048, seed=seed)
        self.name, self.kind = "gateway", "simulated"
        self.limit, self.every, self.error = limit, every, error

    def discover_profile(self):
        return self.engine.discover_profile()

    def execute(self, requests, sink, *, duration):
        admitted, tokens, last = [], 10.0, 0.0
        for r in requests:
            if self.limit is not None:
                tokens = min(10.0, tokens + (r.intended_send - last) * self.limit)
                last = r.intended_send
                shed = tokens < 1.0
                tokens -= 0.0 if shed else 1.0
            else:
                shed = r.request_id % self.every == 0
            if not shed:
                admitted.append(r)
                continue
            said = "Rate limit reached" if self.limit is not None else "Internal Server Error"
            message = json.dumps({"error": {"message": said, "code": int(self.error[5:])}})
            sink.request(
                RequestRecord(
                    r.request_id,
                    r.intended_send,
                    r.prompt_len,
                    r.output_len,
                    sent=r.intended_send,
                    error=self.error,
                    message=message,
                )
            )
        self.engine.execute(admitted, sink, duration=duration)


WORKLOAD = "uniform:1-32,1-32"  # the engine's μ is ≈ 129 req/s at M = 2,048


def test_search_takes_load_shedding_as_the_engines_limit():
    """Behind a gateway that sheds load above 60 req/s (the engine behind it carries ≈ 129), the
    bracket closes below the gateway's limit, where its token bucket stops shedding more than 1%
    of Poisson arrivals: the probes above are FAILING (load shedding) and count as the upper
    end."""
    result = find_boundary(
        lambda s: RateLimitedGateway(s, limit=60.0),
        load_workload(WORKLOAD),
        WORKLOAD,
        precision=0.1,
    )
    failing = [p for p in result.probes if p.verdict == "FAILING"]
    assert failing and all(p.over_limit and p.failures["load_shedding"] for p in failing)
    assert result.reached, result.stop_reason
    assert 30.0 < result.lower < result.upper <= 60.0 * 1.1
    assert result.upper == min(p.rate for p in result.probes if p.over_limit)
    lower = next(
        p for p in result.probes if p.verdict == "STABLE" and p.carried_rate == result.lower
    )
    assert lower.verdict == "STABLE" and lower.failures["fraction"] <= 0.01


def test_search_stops_on_a_fault():
    """HTTP 500 on one request in ten is a fault, not a limit: the search says so and stops."""
    with pytest.raises(KvbenchError, match=r"FAILING, \d+% of requests failed: http_500.*stops"):
        find_boundary(
            lambda s: RateLimitedGateway(s, every=10, error="http_500"),
            load_workload(WORKLOAD),
            WORKLOAD,
            precision=0.1,
        )


def test_compare_report_shows_failing_probes_failures_and_engine_state(tmp_path):
    """A compare whose last probe was shed by the engine (HTTP 429 for every request, the
    engine's preemption counter rising by 11 at 97% KV usage): results.json, summary.md,
    probes.csv, samples.csv and report.html all show it."""
    directory = make_compare_dir(
        tmp_path / "r", labels=("vllm",), capacities=(3.0,), target_rate=None
    )
    edir = directory / "engines" / "0-engine"
    recorder = RunRecorder(
        edir / "probe-04",
        {
            "backend": "vllm",
            "kind": "real",
            "window_end": 60.0,
            "scheduled_in_window": 240,
            "config": {"request_rate": 4.0, "confidence": 0.95, "tolerance": 0.05},
        },
    )
    for k, t in enumerate(np.arange(0.0, 60.0, 0.5)):
        recorder.sample(
            QueueSample(
                float(t),
                in_flight=0,
                waiting=5,
                kv_usage=0.97,
                preemptions_total=100 + k // 60 * 11,
            )
        )
    said = '{"error": {"message": "Too many requests (Bearer sk-leakedkey1234567)", "code": 429}}'
    for i in range(240):
        t = i / 4.0
        recorder.request(
            RequestRecord(i, t, 8, 8, sent=t, error="http_429", message=server_message(said))
        )
    recorder.close(scrape={"scrapes": 118, "errors": {"scrape_error": 2}, "messages": ["boom"]})
    engine = json.loads((edir / "engine.json").read_text())
    engine["search"]["probes"].append(
        {
            "index": 4,
            "rate": 4.0,
            "engine_seconds": 60.0,
            "verdict": "FAILING",
            "over_limit": True,
            "run_dir": "engines/0-engine/probe-04",
        }
    )
    (edir / "engine.json").write_text(json.dumps(engine))
    _, files = write_report(directory)
    results = load_results(directory / "results.json")
    assert results.schema_version == SCHEMA_VERSION
    # the published JSON Schema knows FAILING probes and their failures
    jsonschema.validate(
        json.loads((directory / "results.json").read_text()),
        json.loads(resources.files("kvbench.report").joinpath("results.schema.json").read_text()),
    )
    eng = results.engines[0]
    assert eng.verdict_counts["FAILING"] == 1
    probe = eng.probes[-1]
    assert probe.verdict == "FAILING" and probe.over_limit and probe.failure_fraction == 1.0
    assert probe.failures == [
        {"kind": "http_429", "count": 240, "messages": ["Too many requests (Bearer ***)"]}
    ]
    assert probe.preemptions == 11 and probe.kv_usage_max == pytest.approx(0.97)
    assert probe.waiting_max == 5 and probe.scrape_errors == {"scrape_error": 2}
    assert eng.failures == probe.failures and eng.preemptions == 11
    summary = (directory / "summary.md").read_text()
    assert (
        "2/2/0/1" in summary
        and 'http\\_429 ×240 ("Too many requests (Bearer \\*\\*\\*)")' in summary
    )
    csv = (directory / "probes.csv").read_text().splitlines()
    header = csv[0].split(",")
    last = dict(zip(header, csv[-1].split(","), strict=True))
    assert last["verdict"] == "FAILING" and last["failures"] == "http_429 240"
    assert last["preemptions"] == "11" and float(last["kv_usage_max"]) == pytest.approx(0.97)
    assert "preemptions_total" in (directory / "samples.csv").read_text().splitlines()[0]
    html = (directory / "report.html").read_text()
    assert "Too many requests (Bearer ***)" in html and "FAILING" in html
    written = "".join(p.read_text() for p in files) + "".join(
        p.read_text() for p in (edir / "probe-04").iterdir()
    )
    assert "leakedkey" not in written
    # the compare command's terminal summary says it too
    terminal = CliRunner().invoke(cli, ["report", str(directory)]).stdout
    assert 'failed requests:  http_429 ×240 ("Too many requests (Bearer ***)")' in terminal
    assert "1 probes FAILING" in terminal and "preemptions:      11" in terminal
