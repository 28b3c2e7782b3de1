"""Flags that pick and shape a backend, shared by `run` and `boundary`: declared once here, and
handed to the command as one `BackendArgs` (with --seed and --confidence, which the command uses
itself, passed on as they are)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import click

from kvbench.backends.base import Backend
from kvbench.backends.launch import LaunchOptions
from kvbench.cli import options
from kvbench.credentials import API_KEY_ENV, auth_headers, parse_headers


@dataclass(frozen=True)
class BackendArgs:
    """What the backend flags asked for; `open(seed)` resolves it."""

    name: str  # --backend
    url: str | None
    served_model: str | None
    launch_model: str | None
    launch: LaunchOptions
    profile: str | None
    kv_tokens: int | None
    chunk_size: int | None
    batch_time: float | None
    time_scale: float | None
    headers: dict[str, str]
    wait_for_server: float

    def open(self, seed: int) -> Backend:
        from kvbench.backends.registry import resolve_backend

        return resolve_backend(
            self.name,
            url=self.url,
            launch_path=self.launch_model,
            served_model=self.served_model,
            profile=self.profile,
            kv_tokens=self.kv_tokens,
            chunk_size=self.chunk_size,
            batch_time=self.batch_time,
            time_scale=self.time_scale,
            headers=self.headers,
            wait_for_server=self.wait_for_server,
            seed=seed,
            launch=self.launch,
        )


def _collect(f):
    """The command gets `backend: BackendArgs` in place of the flags that make it up."""

    @functools.wraps(f)
    def command(*args: Any, **kw: Any) -> Any:
        kw["backend"] = BackendArgs(
            name=kw.pop("backend"),
            url=kw.pop("url"),
            served_model=kw.pop("served_model"),
            launch_model=kw.pop("launch_model"),
            launch=LaunchOptions.parse(
                kw.pop("engine_python"), kw.pop("engine_args"), kw.pop("engine_env")
            ),
            profile=kw.pop("profile_name"),
            kv_tokens=kw.pop("kv_tokens"),
            chunk_size=kw.pop("chunk_size"),
            batch_time=kw.pop("batch_time"),
            time_scale=kw.pop("time_scale"),
            headers=request_headers(kw.pop("api_key"), kw.pop("headers")),
            wait_for_server=kw.pop("wait_for_server"),
        )
        return f(*args, **kw)

    return command


def backend_options(f):
    f = _collect(f)
    for decorator in reversed(
        [
            click.option(
                "--backend",
                required=True,
                metavar="NAME",
                help="sim:vllm, sim:sglang, sim:trtllm, sim:ideal (simulated), emulate:vllm, "
                "emulate:sglang, emulate:trtllm (kvbench's HTTP emulator, started and stopped "
                "by kvbench), or vllm, sglang, trtllm with --url or --launch.",
            ),
            click.option(
                "--url",
                default=None,
                metavar="URL",
                help="Base URL of a running engine (real backends).",
            ),
            options.served_model(),
            options.launch_model(),
            options.engine_launch(),
            options.profile_preset(),
            options.kv_tokens("sim:* and emulate:* only; default: the profile's"),
            options.chunk_size("sim:* only; default: the profile's"),
            options.batch_time(
                "sim:* and emulate:* only; a constant iteration time; default: the profile's model"
            ),
            click.option(
                "--time-scale",
                type=float,
                default=None,
                metavar="X",
                help="Engine seconds per real second of an emulator: emulate:* runs its "
                "emulator at X (default 1); with --url, the scale of an emulator you started "
                "(kvbench emulate --time-scale X). Without it the client follows no server's "
                "time-scale header.",
            ),
            *auth_options(),
            click.option(
                "--wait-for-server",
                type=float,
                default=60.0,
                show_default=True,
                metavar="SECONDS",
                help="With --url: how long to wait for a server that is still starting "
                "(refusing connections, or 503).",
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


def auth_options() -> list:
    """--api-key and --header, shared with `compare`."""
    return [
        click.option(
            "--api-key",
            envvar=API_KEY_ENV,
            show_envvar=True,
            default=None,
            metavar="KEY",
            help="Sent as 'Authorization: Bearer KEY' on every request to an HTTP engine "
            "(completions, discovery, metrics); never written anywhere.",
        ),
        click.option(
            "--header",
            "headers",
            multiple=True,
            metavar="NAME=VALUE",
            help="An extra header on every request to an HTTP engine (repeatable); only its "
            "name is recorded.",
        ),
    ]


def request_headers(api_key: str | None, headers: tuple[str, ...]) -> dict[str, str]:
    """The headers the --api-key and --header flags ask for."""
    return auth_headers(api_key, parse_headers(headers))
