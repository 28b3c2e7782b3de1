"""The real-engine backends by name: attach to a running server (`url`) or launch one from its
recipe (`model`). The backend registry resolves `vllm`, `sglang` and `trtllm` through here."""

from __future__ import annotations

from pathlib import Path

from kvbench.backends.http import HttpBackend
from kvbench.backends.launch import launch
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
    model: str | None = None,
    engine_python: str | None = None,
    engine_args: list[str] | None = None,
    engine_env: dict[str, str] | None = None,
    engine_nice: int = 0,
    log_dir: Path | None = None,
    served_model: str | None = None,
    scrape_period: float = 0.25,
    request_timeout: float | None = None,
    seed: int = 0,
) -> HttpBackend:
    """A backend for `engine`: attached to `url`, or launched with the model at `model`
    (the backend owns the launched server and stops it on close())."""
    try:
        cls = ENGINES[engine]
    except KeyError:
        raise KvbenchError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}") from None
    if (url is None) == (model is None):
        raise KvbenchError(f"{engine}: give exactly one of --url (attach) or --model (launch)")
    options = dict(model=served_model, scrape_period=scrape_period,
                   request_timeout=request_timeout, seed=seed)
    if url is not None:
        return cls(url, settings_source="none", **options)
    server = launch(engine, model, python=engine_python, extra_args=engine_args, env=engine_env,
                    log_dir=log_dir, nice=engine_nice)
    return cls(server.url, settings=server.settings, settings_source="launch command",
               server=server, **options)
