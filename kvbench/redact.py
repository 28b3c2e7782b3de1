"""Credentials out of any text kvbench keeps or shows: a server's error message, a scrape error,
a URL. Whatever an engine or a proxy echoes back (a request's headers, a URL with userinfo, a
key in a query string) passes through `redact` before it is written or printed.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # userinfo in a URL: scheme://user:password@host
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@\"'<>]+@"), rf"\1{MASK}@"),
    # an Authorization header's credentials (scheme kept), and a bare "Bearer <token>"
    (
        re.compile(r"(?i)\b(authorization\"?\s*[:=]\s*\"?)(?:(bearer|basic)\s+)?[^\s\"'&,;}]+"),
        lambda m: m[1] + (f"{m[2]} " if m[2] else "") + MASK,
    ),
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{4,}"), rf"\1\2{MASK}"),
    # key=value / "key": "value" pairs whose name says they hold a secret
    (
        re.compile(
            r"(?i)\b((?:x-)?api[_-]?key|access[_-]?token|auth[_-]?token|secret|password|passwd"
            r"|key|token)(\"?\s*[:=]\s*\"?)(?!\s)([^\s\"'&,;}]+)"
        ),
        rf"\1\2{MASK}",
    ),
    # key formats that are secrets wherever they appear (OpenAI/vLLM-style, HF tokens)
    (re.compile(r"\b(sk|hf)[-_][A-Za-z0-9_-]{8,}"), rf"\1-{MASK}"),
)


def redact(text: str) -> str:
    """`text` with anything that looks like a credential replaced by ***."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
