"""The HTTP side shared by the three emulators: routes, the streamed completion, zero-latency
mode. Each engine's wire format (fields it accepts, chunk shapes, errors, state endpoints) lives
in its own module as an `EngineFormat`."""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any

from aiohttp import web

from kvbench import __version__
from kvbench.backends.http import EMULATED_HEADER, TIME_SCALE_HEADER
from kvbench.emulate.engine import RealTimeEngine
from kvbench.profile import EngineProfile


class BadRequest(Exception):
    """A request the emulated engine would reject with HTTP 400."""


def prometheus_text(labels: str, series: list[tuple[str, str, float]]) -> str:
    """Prometheus text of one sample per (name, kind, value), each with `labels`, as an engine's
    metrics endpoint serves them."""
    lines = []
    for name, kind, value in series:
        lines += [
            f"# HELP {name} {name}",
            f"# TYPE {name} {kind}",
            f"{name}{{{labels}}} {float(value)}",
        ]
    return "\n".join(lines) + "\n"


class EngineFormat(ABC):
    """One engine's API, in its own formats. `engine` is None in zero-latency mode."""

    name: str
    model_id: str = "kvbench-emulated"
    max_model_len: int = 4096
    # what the emulator answers where the engine gives its version: kvbench's, marked as such
    version: str = f"{__version__} (kvbench emulator)"

    def __init__(self, profile: EngineProfile):
        self.profile = profile
        self.engine: RealTimeEngine | None = None

    # ---- requests -------------------------------------------------------------------------

    @abstractmethod
    def validate(self, body: dict) -> None:
        """Raise BadRequest as the engine would."""

    def usage_flags(self, body: dict) -> tuple[bool, bool]:
        """(include_usage, continuous_usage_stats) in effect for this request."""
        opts = body.get("stream_options") or {}
        return bool(opts.get("include_usage")), bool(opts.get("continuous_usage_stats"))

    def error_body(self, message: str, status: int) -> dict:
        return {
            "object": "error",
            "message": message,
            "type": "BadRequestError",
            "param": None,
            "code": status,
        }

    def chunk(self, rid: str, created: int, usage: dict | None, finish: str | None) -> dict:
        c = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": self.model_id,
            "choices": [{"index": 0, "text": " tok", "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            c["usage"] = usage
        return c

    def final_chunk(self, rid: str, created: int, usage: dict) -> dict:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": self.model_id,
            "choices": [],
            "usage": usage,
        }

    def model_card(self) -> dict:
        """The entry of GET /v1/models, as vLLM and SGLang write it (with max_model_len)."""
        return {
            "id": self.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": self.name,
            "root": self.model_id,
            "max_model_len": self.max_model_len,
        }

    # ---- state ----------------------------------------------------------------------------

    def on_iteration(self, state: dict[str, Any]) -> None:  # noqa: B027 (a hook: optional)
        """Called at the end of every simulated iteration."""

    @abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The engine's own state and info endpoints."""


def _usage(prompt: int, done: int) -> dict:
    return {"prompt_tokens": prompt, "total_tokens": prompt + done, "completion_tokens": done}


def _prompt_tokens(prompt) -> int:
    """Prompt length: token ids count exactly; a text prompt counts one token per word, an
    approximation (the emulator has no tokenizer) that only load generators sending text see."""
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, str) and prompt:
        return max(1, len(prompt.split()))
    raise BadRequest("prompt must be a non-empty list of token ids or a string")


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def build_app(
    fmt: EngineFormat, *, time_scale: float = 1.0, zero_latency: bool = False, seed: int = 0
) -> web.Application:
    @web.middleware
    async def mark(request, handler):
        resp = await handler(request)
        resp.headers[EMULATED_HEADER] = fmt.name
        if not zero_latency:
            # clients convert their clocks to the engine's with it (kvbench.backends.http)
            resp.headers[TIME_SCALE_HEADER] = repr(float(time_scale))
        return resp

    app = web.Application(middlewares=[mark])

    async def start(app):
        if not zero_latency:
            fmt.engine = RealTimeEngine(
                fmt.profile, time_scale=time_scale, seed=seed, on_iteration=fmt.on_iteration
            )

    async def stop(app):
        if fmt.engine is not None:
            fmt.engine.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    def error(message: str, status: int = 400) -> web.Response:
        return web.json_response(fmt.error_body(message, status), status=status)

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error("request body is not JSON")
        if not isinstance(body, dict):
            return error("request body must be a JSON object")
        try:
            fmt.validate(body)
            p = _prompt_tokens(body.get("prompt"))
            # The simulated engine has no tokens to stop on: every request generates exactly
            # max_tokens, as a real engine does with ignore_eos.
            output = int(body.get("max_tokens") or 16)
            if p + output > fmt.max_model_len:
                raise BadRequest(
                    f"prompt ({p}) + max_tokens ({output}) exceeds "
                    f"max_model_len={fmt.max_model_len}"
                )
        except BadRequest as err:
            return error(str(err))
        include_usage, continuous = fmt.usage_flags(body)
        rid, created = f"cmpl-{uuid.uuid4().hex[:16]}", int(time.time())
        if not body.get("stream"):
            if fmt.engine is not None:
                try:
                    _, queue = fmt.engine.submit(p, output)
                except ValueError as err:
                    return error(str(err))
                while (await queue.get())[1] != "finished":
                    pass
            return web.json_response(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": fmt.model_id,
                    "choices": [
                        {
                            "index": 0,
                            "text": " tok" * output,
                            "logprobs": None,
                            "finish_reason": "length",
                        }
                    ],
                    "usage": _usage(p, output),
                }
            )
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        if fmt.engine is None:  # zero latency: the whole stream at once
            parts = [
                _sse(
                    fmt.chunk(
                        rid,
                        created,
                        _usage(p, k) if continuous else None,
                        "length" if k == output else None,
                    )
                )
                for k in range(1, output + 1)
            ]
            if include_usage:
                parts.append(_sse(fmt.final_chunk(rid, created, _usage(p, output))))
            parts.append(b"data: [DONE]\n\n")
            try:
                await resp.prepare(request)
                await resp.write(b"".join(parts))
                await resp.write_eof()
            except ConnectionError:  # the client left (a run ending); nothing to answer
                pass
            return resp
        try:
            sim_id, queue = fmt.engine.submit(p, output)
        except ValueError as err:
            return error(str(err))
        try:
            await resp.prepare(request)
            while True:
                _, kind, _, tokens = await queue.get()
                if kind == "token":
                    await resp.write(
                        _sse(
                            fmt.chunk(
                                rid,
                                created,
                                _usage(p, tokens) if continuous else None,
                                "length" if tokens == output else None,
                            )
                        )
                    )
                elif kind == "finished":
                    break
            if include_usage:
                await resp.write(_sse(fmt.final_chunk(rid, created, _usage(p, output))))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client left (a run ending); the engine aborts it
            pass
        finally:
            fmt.engine.abandon(sim_id)
        return resp

    async def health(request):
        return web.Response(text="")

    async def models(request):
        return web.json_response({"object": "list", "data": [fmt.model_card()]})

    app.add_routes(
        [
            web.post("/v1/completions", completions),
            web.get("/health", health),
            web.get("/v1/models", models),
            *fmt.routes(),
        ]
    )
    return app
