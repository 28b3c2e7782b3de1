"""Backends by name: `sim:ENGINE` (the simulator, in-process), `emulate:ENGINE` (kvbench's HTTP
emulator of the engine, started as a child process and driven over HTTP) and the HTTP engines
`vllm`, `sglang`, `trtllm` (attached with --url, or launched from backends/<engine>/recipe.toml
with --launch). One place maps a name and its options to a `Backend`,
so the CLI commands and the search share it and new kinds plug in here."""

from __future__ import annotations

import math
from pathlib import Path

from kvbench import validate
from kvbench.backends.base import Backend
from kvbench.backends.launch import LaunchOptions
from kvbench.errors import KvbenchError
from kvbench.profile import DEFAULT_HARDWARE, POLICIES, IterationTimeModel, build_profile

SIM_PREFIX = "sim:"
EMULATE_PREFIX = "emulate:"
# The time scales a client follows: beyond these an emulator's engine would run too fast for its
# own process to keep up, or a run would last a thousand times longer than its figures say.
TIME_SCALE_RANGE = (0.01, 1000.0)


def check_time_scale(scale: float) -> None:
    lo, hi = TIME_SCALE_RANGE
    if not lo <= scale <= hi:
        raise KvbenchError(
            f"--time-scale must be in [{lo:g}, {hi:g}] engine seconds per real second, got {scale}"
        )


def backend_names() -> list[str]:
    from kvbench.backends.engines import ENGINES

    return (
        [SIM_PREFIX + p for p in POLICIES] + [EMULATE_PREFIX + e for e in ENGINES] + list(ENGINES)
    )


def _check_shape(
    kv_tokens: int | None, chunk_size: int | None, batch_time: float | None, replicas: int
) -> None:
    """The flags that shape a simulated or emulated engine, each checked once for both."""
    validate.positive_int(replicas, "--replicas")
    for flag, value in (("--kv-tokens", kv_tokens), ("--chunk-size", chunk_size)):
        if value is not None:
            validate.token_count(value, flag)
    if batch_time is not None:
        validate.positive_number(batch_time, "--batch-time")


def resolve_backend(
    name: str,
    *,
    url: str | None = None,
    launch_path: str | None = None,
    served_model: str | None = None,
    profile: str | None = None,
    kv_tokens: int | None = None,
    chunk_size: int | None = None,
    batch_time: float | None = None,
    replicas: int = 1,
    time_scale: float | None = None,
    log_dir: Path | None = None,
    seed: int = 0,
    headers: dict[str, str] | None = None,
    wait_for_server: float = 0.0,
    launch: LaunchOptions | None = None,
) -> Backend:
    """The backend called `name`. Profile flags (profile, kv_tokens, chunk_size, batch_time)
    shape a simulated engine (kv_tokens and batch_time an emulated one too, with time_scale); a
    real engine reports its own profile, so they are refused there. An emulated engine with
    replicas > 1 is that many emulator processes behind round-robin dispatch; `log_dir` keeps
    their logs. `launch` (--engine-python, --engine-arg, --engine-env) applies only where
    kvbench launches a real engine (--launch MODEL_PATH); `served_model` (--model) names the
    model in requests to a real engine (default: the first of its /v1/models). `headers` (API key, --header) go on every request
    to an HTTP engine; `time_scale` with --url states the scale of an emulator the user started;
    an attached server still starting is waited for up to `wait_for_server` seconds."""
    if launch and launch_path is None:
        raise KvbenchError(
            f"{name}: --engine-python, --engine-arg and --engine-env apply when kvbench launches "
            "the engine (a real backend with --launch)"
        )
    if time_scale is not None:
        check_time_scale(time_scale)
    if url is not None:
        validate.url(url)
    if time_scale is not None and not (name.startswith(EMULATE_PREFIX) or url is not None):
        raise KvbenchError(
            f"{name}: --time-scale applies to emulate:* backends and to an emulator attached "
            "with --url"
        )
    if not (wait_for_server >= 0 and math.isfinite(wait_for_server)):
        raise KvbenchError(
            f"--wait-for-server must be a number of seconds ≥ 0, got {wait_for_server}"
        )
    if name.startswith(SIM_PREFIX):
        from kvbench.backends.sim import SimBackend

        policy = name[len(SIM_PREFIX) :]
        if policy not in POLICIES:
            raise KvbenchError(
                f"unknown backend {name!r}; choose one of {', '.join(backend_names())}"
            )
        if url is not None or launch_path is not None or served_model is not None:
            raise KvbenchError(
                f"{name} is simulated in-process and takes no --url, --launch or --model"
            )
        _check_shape(kv_tokens, chunk_size, batch_time, replicas)
        overrides = dict(
            kv_tokens=kv_tokens,
            chunk_size=chunk_size,
            iteration_time=None if batch_time is None else IterationTimeModel.constant(batch_time),
        )
        built = build_profile(policy, profile or DEFAULT_HARDWARE.name, **overrides)
        sources = {
            field: "flag" if value is not None else "preset" for field, value in overrides.items()
        }
        sources.update(
            policy="backend name", block_size="preset", token_budget="preset", max_running="preset"
        )
        return SimBackend(built, name=name, replicas=replicas, seed=seed, sources=sources)
    from kvbench.backends.engines import ENGINES, open_emulator, open_engine

    if name.startswith(EMULATE_PREFIX):
        engine = name[len(EMULATE_PREFIX) :]
        if engine not in ENGINES:
            raise KvbenchError(
                f"unknown backend {name!r}; choose one of {', '.join(backend_names())}"
            )
        if url is not None or launch_path is not None or served_model is not None:
            raise KvbenchError(
                f"{name} starts its own emulator and takes no --url, --launch or --model"
            )
        given = [
            f for f, v in (("--profile", profile), ("--chunk-size", chunk_size)) if v is not None
        ]
        if given:
            raise KvbenchError(f"{name}: {', '.join(given)} apply to sim:* backends")
        _check_shape(kv_tokens, None, batch_time, replicas)
        started: list[Backend] = []
        try:
            for i in range(replicas):
                started.append(
                    open_emulator(
                        engine,
                        kv_tokens=kv_tokens,
                        batch_time=batch_time,
                        time_scale=1.0 if time_scale is None else time_scale,
                        log_dir=None if log_dir is None else log_dir / f"replica-{i}",
                        seed=seed + i,
                        headers=headers,
                    )
                )
        except BaseException:
            for b in started:
                b.close()
            raise
        if replicas == 1:
            return started[0]
        from kvbench.backends.replicas import RoundRobinBackend

        return RoundRobinBackend(started)
    if name not in ENGINES:
        raise KvbenchError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    given = [
        f
        for f, v in (
            ("--profile", profile),
            ("--kv-tokens", kv_tokens),
            ("--chunk-size", chunk_size),
            ("--batch-time", batch_time),
        )
        if v is not None
    ]
    if given:
        raise KvbenchError(
            f"{name}: {', '.join(given)} apply to sim:* backends; a real engine reports its own profile"
        )
    if url is None and launch_path is None:
        raise KvbenchError(
            f"{name}: give --url of a running server, or --launch MODEL_PATH to launch one"
        )
    launch = launch or LaunchOptions()
    return open_engine(
        name,
        url=url,
        model_path=launch_path,
        served_model=served_model,
        seed=seed,
        headers=headers,
        time_scale=time_scale,
        wait_for_server=wait_for_server,
        engine_python=launch.python,
        engine_args=list(launch.args),
        engine_env=launch.env,
        log_dir=log_dir,
    )
