"""The emulated engine formats by name."""

from __future__ import annotations

from kvbench.emulate.server import EngineFormat
from kvbench.emulate.sglang import SglangFormat
from kvbench.emulate.trtllm import TrtllmFormat
from kvbench.emulate.vllm import VllmFormat
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile

FORMATS: dict[str, type[EngineFormat]] = {
    "vllm": VllmFormat,
    "sglang": SglangFormat,
    "trtllm": TrtllmFormat,
}


def make_format(engine: str, profile: EngineProfile, *, max_model_len: int = 4096) -> EngineFormat:
    try:
        fmt = FORMATS[engine](profile)
    except KeyError:
        raise KvbenchError(
            f"unknown engine {engine!r}; choose one of {', '.join(FORMATS)}"
        ) from None
    fmt.max_model_len = max_model_len
    return fmt
