"""Flags that pick and shape a backend, shared by `run` and `boundary`."""

from __future__ import annotations

import click

from kvbench.cli import options


def backend_options(f):
    for decorator in reversed(
        [
            click.option(
                "--backend",
                required=True,
                metavar="NAME",
                help="sim:vllm, sim:sglang, sim:trtllm, sim:ideal (simulated), emulate:vllm, "
                "emulate:sglang, emulate:trtllm (kvbench's HTTP emulator, started and stopped "
                "by kvbench), or vllm, sglang, trtllm with --url or --model.",
            ),
            click.option(
                "--url",
                default=None,
                metavar="URL",
                help="Base URL of a running engine (real backends).",
            ),
            click.option(
                "--model",
                default=None,
                metavar="PATH",
                help="Launch the engine (real backends) with this model, from its recipe in "
                "backends/<engine>/; kvbench stops it at the end.",
            ),
            options.engine_launch(),
            options.profile_preset(),
            options.kv_tokens("sim:* and emulate:* only; default: the profile's"),
            options.chunk_size("sim:* only; default: the profile's"),
            options.batch_time(
                "sim:* and emulate:* only; a constant iteration time; default: the profile's model"
            ),
            click.option(
                "--seed",
                type=int,
                default=0,
                show_default=True,
                help="Seeds arrivals, lengths and the simulator.",
            ),
            click.option(
                "--confidence",
                type=float,
                default=0.95,
                show_default=True,
                help="Confidence of every verdict.",
            ),
        ]
    ):
        f = decorator(f)
    return f
