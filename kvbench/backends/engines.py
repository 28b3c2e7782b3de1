"""The HTTP engine backends by name: attach to a running server (`url`), launch one from its
recipe (`model_path`), or launch kvbench's emulator of the engine (`open_emulator`). The backend
registry resolves `vllm`, `sglang`, `trtllm` and `emulate:ENGINE` through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvbench.backends.http import HttpBackend
from kvbench.backends.launch import emulator_recipe, launch
from kvbench.backends.sglang import SglangBackend
from kvbench.backends.trtllm import TrtllmBackend
from kvbench.backends.vllm import VllmBackend
from kvbench.errors import KvbenchError

ENGINES: dict[str, type[HttpBackend]] = {
    "vllm": VllmBackend,
    "sglang": SglangBackend,
    "trtllm": TrtllmBackend,
}


def open_engine(
    engine: str,
    *,
    url: str | None = None,
    model_path: str | None = None,
    engine_python: str | None = None,
    engine_args: list[str] | None = None,
    engine_env: dict[str, str] | None = None,
    engine_nice: int = 0,
    log_dir: Path | None = None,
    served_model: str | None = None,
    scrape_period: float = 0.25,
    request_timeout: float | None = None,
    seed: int = 0,
    headers: dict[str, str] | None = None,
    time_scale: float | None = None,
    wait_for_server: float = 0.0,
) -> HttpBackend:
    """A backend for `engine`: attached to `url`, or launched with the model at `model_path`
    (the backend owns the launched server and stops it on close()). `served_model` names the
    model in requests (default: the first of the server's /v1/models). `headers` go on every
    request; `time_scale` is the user's word for an attached emulator's scale; an attached server
    still starting is waited for up to `wait_for_server` seconds (a launched one is waited for
    by the launcher)."""
    try:
        cls = ENGINES[engine]
    except KeyError:
        raise KvbenchError(
            f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}"
        ) from None
    if (url is None) == (model_path is None):
        raise KvbenchError(
            f"{engine}: give exactly one of --url (attach) or --launch MODEL_PATH (launch)"
        )
    options: dict[str, Any] = dict(
        model=served_model,
        scrape_period=scrape_period,
        request_timeout=request_timeout,
        seed=seed,
        headers=headers,
    )
    if url is not None:
        return cls(
            url,
            settings_source="none",
            time_scale=time_scale,
            wait_for_server=wait_for_server,
            **options,
        )
    assert model_path is not None  # exactly one of the two, checked above
    server = launch(
        engine,
        model_path,
        python=engine_python,
        extra_args=engine_args,
        env=engine_env,
        log_dir=log_dir,
        nice=engine_nice,
    )
    return cls(
        server.url,
        settings=server.settings,
        settings_source="launch command",
        server=server,
        **options,
    )


def open_emulator(
    engine: str,
    *,
    kv_tokens: int | None = None,
    batch_time: float | None = None,
    time_scale: float = 1.0,
    log_dir: Path | None = None,
    seed: int = 0,
    headers: dict[str, str] | None = None,
) -> HttpBackend:
    """A backend for kvbench's emulator of `engine`, started on a free 127.0.0.1 port as a child
    process and reached over HTTP exactly as a real engine is (the backend stops it on close()).
    It answers with the emulated markers, so the backend labels itself emulated, and it runs at
    the time scale asked of it here, so the backend reports times in the emulated engine's
    seconds."""
    if engine not in ENGINES:
        raise KvbenchError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    extra = ["--time-scale", repr(float(time_scale)), "--seed", str(seed)]
    if kv_tokens is not None:
        extra += ["--kv-tokens", str(kv_tokens)]
    if batch_time is not None:
        extra += ["--batch-time", repr(float(batch_time))]
    server = launch(engine, "", recipe=emulator_recipe(engine), extra_args=extra, log_dir=log_dir)
    return ENGINES[engine](
        server.url,
        settings_source="none",
        server=server,
        seed=seed,
        headers=headers,
        time_scale=float(time_scale),
    )
