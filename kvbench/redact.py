"""Credentials out of anything kvbench keeps or shows. Whatever an engine or a proxy echoes back
(a request's headers, a URL with userinfo, a key in a query string) passes through `redact`
before it is written or printed; an engine's command line and environment, as launched or as
typed, pass through `redact_argv` and `redact_env`, which hide the value of every flag or
variable whose name says it holds a credential.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"  # a credential found inside free text (a message, a URL)

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


def redact_url(url: str) -> str:
    """`url` with any userinfo and every query value replaced by `***`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = MASK + "@" + netloc.rpartition("@")[2]
        query = parts.query
        if query:
            query = urlencode([(k, MASK) for k, _ in parse_qsl(query, keep_blank_values=True)])
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:  # not even a URL: keep nothing after a possible userinfo marker
        return url.rpartition("@")[2] if "@" in url else url


# the whole value of a slot known to hold a credential (a flag, a variable)
REDACTED = "<redacted>"
# Words that mark a flag or an environment variable as holding a credential.
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential"}


def is_secret_name(name: str) -> bool:
    """Whether a flag (`--api-key`) or variable (`HF_TOKEN`) names a credential. Whole words
    only, so `--max-num-batched-tokens` and `--tokenizer` stay readable."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    return any(w in _SECRET_WORDS or w.endswith(("key", "token", "secret")) for w in words if w)


def is_secret_variable(name: str) -> bool:
    """Whether an environment variable may hold a credential: any of the words anywhere in its
    name (`HF_TOKEN`, `OPENAI_API_KEY`, `MYSECRET`); hiding a harmless value costs nothing."""
    return any(w.upper() in name.upper() for w in _SECRET_WORDS if w != "apikey")


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: REDACTED if is_secret_variable(k) else v for k, v in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    """`argv` with the value of every credential flag (`--api-key X`, `--api-key=X`) hidden."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        secret = arg.startswith("-") and is_secret_name(flag)
        if secret and eq:
            out.append(f"{flag}={REDACTED}")
        else:
            out.append(arg)
            hide_next = secret
    return out
