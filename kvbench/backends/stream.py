"""Server-sent events of an OpenAI-style streaming completion.

All three engines send `data: {json}` lines, a final chunk with `"choices": []` and the request's
`usage`, then `data: [DONE]`. TensorRT-LLM serialises that final chunk as a chat object, so it is
recognised by empty choices plus usage, never by `object`. One chunk can carry several tokens:
counts come from `usage.completion_tokens`, never from the number of chunks or the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

DONE = object()


def parse_line(line: bytes) -> dict | object | None:
    """One line of the stream: a chunk dict, DONE, or None for blank lines and comments."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return DONE
    chunk = json.loads(payload)
    if not isinstance(chunk, dict):
        raise ValueError(f"chunk is not an object: {payload[:80]!r}")
    return chunk


@dataclass
class StreamResult:
    """What one stream said about its request."""

    chunks: int = 0  # chunks that carried output (non-empty choices)
    completion_tokens: int | None = None  # from the final usage chunk
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    final_usage: bool = False  # the closing chunk (no choices, with usage) arrived
    done: bool = False  # `data: [DONE]` seen

    def feed(self, chunk: dict) -> bool:
        """Take one chunk; True when it carried output (a token event)."""
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if choices:
            self.chunks += 1
            reason = choices[0].get("finish_reason")
            if reason is not None:
                self.finish_reason = reason
            if usage:  # continuous usage: running count; the final chunk confirms it
                self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
            return True
        if usage:
            self.final_usage = True
            self.completion_tokens = usage.get("completion_tokens")
            self.prompt_tokens = usage.get("prompt_tokens")
        return False
