"""`kvbench emulate`: serve an engine's HTTP API from the simulator, in real time."""

from __future__ import annotations

import click

from kvbench import validate
from kvbench.cli import options
from kvbench.errors import KvbenchError

ENGINES = ("vllm", "sglang", "trtllm")


@click.command(
    epilog="Example:\n\n\b\n  kvbench emulate --engine trtllm --port 8000 --kv-tokens 20000\n"
    "  kvbench run --backend trtllm --url http://127.0.0.1:8000 ...   # results labelled emulated"
)
@click.option("--engine", type=click.Choice(ENGINES), required=True, help="Engine API to speak.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to bind.")
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Simulated seconds per real second (2 runs the engine twice as fast).",
)
@click.option(
    "--latency",
    type=click.Choice(["sim", "zero"]),
    default="sim",
    show_default=True,
    help="sim: the simulated engine's timing; zero: answer every request at once "
    "(for load-generator benchmarks).",
)
@options.kv_tokens("the engine preset's")
@click.option("--max-running", type=int, default=None, help="Running-request cap (preset's).")
@options.batch_time("the preset's")
@click.option(
    "--max-model-len",
    type=int,
    default=4096,
    show_default=True,
    help="Longest prompt + output accepted (longer: HTTP 400).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="Answer 401 unless a request carries 'Authorization: Bearer KEY' (as the engines' own "
    "--api-key); /health stays open.",
)
def emulate(
    engine,
    host,
    port,
    time_scale,
    latency,
    kv_tokens,
    max_running,
    batch_time,
    max_model_len,
    seed,
    api_key,
) -> None:
    """Serve ENGINE's completions, health, model-list, metrics and info endpoints, in its own
    formats and quirks, backed by the Rust engine simulator in real time. Every response is
    marked X-Kvbench-Emulated, so kvbench labels results measured against it as emulated."""
    from aiohttp import web

    from kvbench.emulate.formats import make_format
    from kvbench.emulate.server import build_app
    from kvbench.profile import IterationTimeModel, build_profile

    validate.port(port)
    validate.positive_number(time_scale, "--time-scale")
    validate.seed(seed, "--seed")
    validate.token_count(max_model_len, "--max-model-len")
    if kv_tokens is not None:
        validate.token_count(kv_tokens, "--kv-tokens")
    if max_running is not None:
        validate.positive_int(max_running, "--max-running", maximum=validate.MAX_TOKENS)
    if batch_time is not None:
        validate.positive_number(batch_time, "--batch-time")
    overrides = dict(kv_tokens=kv_tokens, max_running=max_running)
    if batch_time is not None:
        overrides["iteration_time"] = IterationTimeModel.constant(batch_time)
    profile = build_profile(engine, **overrides)
    fmt = make_format(engine, profile, max_model_len=max_model_len)
    app = build_app(
        fmt, time_scale=time_scale, zero_latency=latency == "zero", seed=seed, api_key=api_key
    )
    mode = "zero latency" if latency == "zero" else f"simulated engine, time scale {time_scale:g}"
    click.echo(
        f"emulating {engine} ({mode}; M = {profile.kv_tokens:,} tokens) "
        f"on http://{host}:{port}  [emulated, not a real engine]",
        err=True,
    )
    try:
        # a client that disconnects cancels its handler, which aborts its request in the engine;
        # SIGTERM is kvbench's to handle (as Ctrl-C, exit 143), not aiohttp's (exit 0). On the way
        # out, requests still streaming are cut after a second, as an engine's shutdown aborts
        # them: aiohttp's default waits 60 s for them, past the stop timeouts of every launcher
        web.run_app(
            app,
            host=host,
            port=port,
            print=None,
            access_log=None,
            handler_cancellation=True,
            handle_signals=False,
            shutdown_timeout=1.0,
        )
    except OSError as err:
        raise KvbenchError(f"cannot bind {host}:{port}: {err.strerror or err}") from None
