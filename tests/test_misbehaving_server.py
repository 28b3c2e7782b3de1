"""`kvbench run --backend vllm --url …` against a server that fails the way engines and the
proxies in front of them do: HTTP errors with vLLM's and OpenAI's error bodies, resets before
and during the stream, malformed and binary event streams, missing usage, too few and too many
tokens, an unbounded line. Every such run is FAILING (never STABLE), exits 1, counts its
failures by kind with what the server said, and writes no credential.

The server is a small HTTP/1.1 server on raw asyncio sockets (not kvbench's emulator), so it can
do what a well-behaved framework would not: drop a connection mid-chunk or send bytes that are
not an event stream. Its healthy answers have vLLM's shapes: /v1/models, /metrics with vLLM's
metric names (cache_config_info, the waiting/running gauges, KV usage, the preemption counter),
and a completion stream of text_completion chunks with continuous usage, a finish_reason
"length" chunk, the final `choices: []` usage chunk and `data: [DONE]`
(tests/fixtures/vllm/completion_stream.sse is a real vLLM's).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvbench.cli import cli

MODEL = "tiny-misbehaving"
SECRET = "sk-kvbenchtestsecret0123456789"
KV_TOKENS = 4096
BLOCK = 16


def _error(status: int, message: str, err_type: str) -> bytes:
    """vLLM's current error body (ErrorResponse with ErrorInfo, `code` the HTTP status)."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return json.dumps(body).encode()


# status, body, as the engine (or the gateway in front of it) sends them
HTTP_ERRORS = {
    "http_500": (
        500,
        _error(
            500, "EngineCore encountered an issue. See stack trace (above).", "InternalServerError"
        ),
    ),
    # vLLM before its ErrorInfo envelope: {"object": "error", "message": …}
    "http_400": (
        400,
        json.dumps(
            {
                "object": "error",
                "message": "This model's maximum context length is 2048 tokens. However, you "
                "requested 4100 tokens (4096 in the messages, 4 in the completion).",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        ).encode(),
    ),
    # vLLM's --api-key middleware
    "http_401": (401, json.dumps({"error": "Unauthorized"}).encode()),
    # a gateway that echoes the key it refused, as OpenAI's API does (partially masked there)
    "http_403": (
        403,
        _error(403, f"Incorrect API key provided: {SECRET}.", "invalid_request_error"),
    ),
    "http_429": (429, _error(429, "Rate limit reached: 10 requests per second.", "RateLimitError")),
    "http_503": (
        503,
        _error(503, "The scheduler's waiting queue is full.", "ServiceUnavailableError"),
    ),
}


class MisbehavingServer:
    """Serves vLLM's API on 127.0.0.1 from a thread; every `every`-th completion misbehaves as
    `mode` says (the others are answered properly). `metrics_fail_after`: /metrics answers 500
    after that many reads. The preemption counter stands at 100 until 2 completions have been
    asked for, then at 111: a run that starts after the engine preempted 100 times and sees 11."""

    def __init__(self, mode: str, every: int = 1, metrics_fail_after: int | None = None):
        self.mode, self.every, self.metrics_fail_after = mode, every, metrics_fail_after
        self.completions = 0
        self.models_asked: set[str] = set()
        self.metrics_reads = 0
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> MisbehavingServer:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.serve, "127.0.0.1", 0), self.loop
        )
        self.server = started.result(timeout=10)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            assert self.server is not None
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    # ---- HTTP/1.1, one request per connection ------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (x.partition(":") for x in lines[1:] if x)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/v1/models":
                await self.answer(writer, 200, self.models())
            elif method == "GET" and path == "/health":
                await self.answer(writer, 200, b"")
            elif method == "GET" and path == "/metrics":
                self.metrics_reads += 1
                if (
                    self.metrics_fail_after is not None
                    and self.metrics_reads > self.metrics_fail_after
                ):
                    await self.answer(
                        writer, 500, b"Internal Server Error: metrics exporter crashed"
                    )
                else:
                    await self.answer(writer, 200, self.metrics().encode(), "text/plain")
            elif method == "POST" and path == "/v1/completions":
                await self.complete(writer, json.loads(body))
            else:
                await self.answer(writer, 404, _error(404, f"Not Found: {path}", "NotFoundError"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, writer, status: int, body: bytes, ctype: str = "application/json"):
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    @staticmethod
    def models() -> bytes:
        card = {
            "id": MODEL,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "max_model_len": 2048,
        }
        return json.dumps({"object": "list", "data": [card]}).encode()

    def metrics(self) -> str:
        labels = f'engine="0",model_name="{MODEL}"'
        info = (
            f'block_size="{BLOCK}",enable_prefix_caching="False",engine="0",'
            f'kv_cache_size_tokens="{KV_TOKENS}",num_gpu_blocks="{KV_TOKENS // BLOCK}"'
        )
        preempted = 111 if self.completions >= 2 else 100
        return (
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} 2.0\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} 3.0\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} 0.97\n"
            "# TYPE vllm:num_preemptions_total counter\n"
            f"vllm:num_preemptions_total{{{labels}}} {float(preempted)}\n"
            "# TYPE vllm:cache_config_info gauge\n"
            f"vllm:cache_config_info{{{info}}} 1.0\n"
        )

    # ---- completions ----------------------------------------------------------------------

    async def complete(self, writer, request: dict) -> None:
        self.completions += 1
        self.models_asked.add(request["model"])
        mode = self.mode if self.completions % self.every == 0 else "ok"
        wanted = int(request["max_tokens"])
        prompt = len(request["prompt"])
        if mode in HTTP_ERRORS:
            status, body = HTTP_ERRORS[mode]
            await self.answer(writer, status, body)
            return
        if mode == "reset_before":
            writer.transport.abort()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )

        async def send(data: bytes) -> None:
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        def event(payload: dict) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        def chunk(n: int, finish: str | None) -> dict:
            usage = {"prompt_tokens": prompt, "total_tokens": prompt + n, "completion_tokens": n}
            choice = {
                "index": 0,
                "text": " x",
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
            return {
                "id": "cmpl-0",
                "object": "text_completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
            }

        if mode in ("binary", "malformed", "unbounded_line"):
            if mode == "binary":
                await send(b"data: " + bytes(range(256)) * 4 + b"\n\n")
            elif mode == "malformed":
                await send(b'data: {"id": "cmpl-0", "choices": [{"text": " x"\n\n')
            else:
                # one line that never ends: the client must give up on it, not buffer it all
                await send(b"data: ")
                for _ in range(24):
                    await send(b"x" * 65536)
                await asyncio.sleep(30)
            await send(b"")
            return
        produced = {"short_output": wanted - 1, "long_output": wanted + 1}.get(mode, wanted)
        for n in range(1, produced + 1):
            await send(event(chunk(n, "length" if n == produced else None)))
            if mode == "reset_during" and n == 2:
                writer.transport.abort()
                return
            await asyncio.sleep(0.002)
        if mode != "missing_usage":
            usage = {
                "prompt_tokens": prompt,
                "total_tokens": prompt + produced,
                "completion_tokens": produced,
            }
            final = {
                "id": "cmpl-0",
                "object": "text_completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [],
                "usage": usage,
            }
            await send(event(final))
        await send(b"data: [DONE]\n\n")
        await send(b"")  # the chunked body's end


def _args(server: MisbehavingServer, out: Path) -> list[str]:
    return [
        "--backend",
        "vllm",
        "--url",
        server.url,
        "--workload",
        "uniform:4-8,4-8",
        "--request-rate",
        "20",
        "--duration",
        "2",
        "--output",
        str(out),
    ]


def _run(server: MisbehavingServer, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["run", *_args(server, out), *extra])


# mode → (failure kind, a piece of what the failure said)
CASES = {
    "http_500": ("http_500", "EngineCore encountered an issue"),
    "http_400": ("http_400", "maximum context length is 2048 tokens"),
    "http_401": ("http_401", "Unauthorized"),
    "http_403": ("http_403", "Incorrect API key provided: sk-***"),
    "http_429": ("http_429", "Rate limit reached"),
    "http_503": ("http_503", "waiting queue is full"),
    "reset_before": ("connection_reset", ""),
    "reset_during": ("connection_reset", ""),
    "malformed": ("bad_stream", "EOF while parsing"),
    "binary": ("bad_stream", "chunk is not an object"),
    "missing_usage": ("missing_usage", "no final usage chunk"),
    "short_output": ("short_output", "finish_reason length"),
    "long_output": ("long_output", "tokens"),
    "unbounded_line": ("bad_stream", "line longer than"),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_every_request_failing_is_failing_never_stable(mode, tmp_path):
    kind, said = CASES[mode]
    out = tmp_path / "run"
    with MisbehavingServer(mode) as server:
        r = _run(server, out, "--json")
    assert r.exit_code == 1, r.output
    summary = json.loads(r.stdout)
    assert summary["verdict"] == "FAILING"
    assert summary["requests"]["completed"] == 0
    failures = summary["failures"]
    assert failures["failing"] and failures["fraction"] == 1.0
    assert [k["kind"] for k in failures["kinds"]] == [kind]
    assert failures["kinds"][0]["count"] == failures["count"] == summary["requests"]["failed"] > 0
    if said:
        assert any(said in m for m in failures["kinds"][0]["messages"]), failures
    assert summary["evidence"]["reason"].startswith("100% of requests failed: " + kind)
    # the run directory holds what the summary says, and `kvbench report` rebuilds it
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["verdict"] == "FAILING" and on_disk["failures"] == failures
    rebuilt = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert json.loads(rebuilt.stdout)["failures"] == failures
    # no credential anywhere kvbench wrote or printed
    written = r.output + "".join(p.read_text(errors="replace") for p in out.iterdir())
    assert SECRET not in written and "kvbenchtestsecret" not in written


def test_text_names_the_failures_and_the_key_flag(tmp_path):
    with MisbehavingServer("http_401") as server:
        r = _run(server, tmp_path / "run")
    assert r.exit_code == 1
    verdict = next(line for line in r.stdout.splitlines() if line.strip().startswith("verdict:"))
    assert "FAILING" in verdict and "STABLE" not in verdict
    assert "100% of requests failed: http_401" in verdict
    assert "pass --api-key or set OPENAI_API_KEY" in r.stdout
    assert '"Unauthorized"' in r.stdout


def test_a_few_failures_in_a_hundred_are_failing(tmp_path):
    """Every 20th request answered 500 (5% > the 1% limit): FAILING, with the completions'
    own figures still measured."""
    with MisbehavingServer("http_500", every=20) as server:
        r = _run(server, tmp_path / "run", "--json")
    summary = json.loads(r.stdout)
    assert r.exit_code == 1 and summary["verdict"] == "FAILING"
    failed, done = summary["requests"]["failed"], summary["requests"]["completed"]
    assert failed == summary["failures"]["count"] and done > 10 * failed > 0
    assert summary["failures"]["fraction"] == pytest.approx(failed / (failed + done))
    assert summary["latency"]["e2e"]["n"] == done
    assert summary["evidence"]["queue_verdict"] in ("STABLE", "INCONCLUSIVE", "UNSTABLE")


def test_engine_state_and_scrape_errors_are_reported(tmp_path):
    """A healthy server whose /metrics breaks after a few reads, preempting 11 times at 97% KV
    usage with 3 requests waiting: every figure reaches the summary and the text."""
    out = tmp_path / "run"
    with MisbehavingServer("ok", metrics_fail_after=6) as server:
        r = _run(server, out, "--json")
        text = CliRunner().invoke(cli, ["report", str(out)]).stdout
    summary = json.loads(r.stdout)
    assert r.exit_code == 0, r.output
    assert summary["verdict"] != "FAILING" and summary["failures"]["count"] == 0
    assert summary["preemptions"] == 11
    assert summary["waiting"]["max"] == 3 and summary["kv_usage"]["max"] == pytest.approx(0.97)
    scrape = summary["scrape"]
    assert scrape["errors"]["scrape_error"] >= 2
    assert any("metrics exporter crashed" in m for m in scrape["messages"])
    assert "preemptions 11" in text and "max 97%" in text and "waiting mean 3.0 max 3" in text
    assert "scrape errors" in text and "metrics exporter crashed" in text


def test_the_installed_command_exits_1_and_prints_one_json_object(tmp_path):
    """As a script runs it: `python -m kvbench run … --json` in its own process."""
    with MisbehavingServer("http_500") as server:
        p = subprocess.run(
            [sys.executable, "-m", "kvbench", "run", *_args(server, tmp_path / "run"), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 1, p.stderr
    summary = json.loads(p.stdout)
    assert summary["verdict"] == "FAILING" and summary["failures"]["kinds"][0]["kind"] == "http_500"


@pytest.mark.parametrize(
    "given, sent", [((), MODEL), (("--model", "my-served-name"), "my-served-name")]
)
def test_model_names_the_served_model_as_in_vllm_bench_serve(given, sent, tmp_path):
    """--model is the served model's name (default: the first of /v1/models), not a path to
    launch (that is --launch)."""
    with MisbehavingServer("ok") as server:
        r = _run(server, tmp_path / "run", *given)
    assert r.exit_code == 0, r.output
    assert server.models_asked == {sent}
