"""Credentials for an engine behind authentication, and the rule that none is ever written.

`--api-key` (default: $OPENAI_API_KEY, as `vllm bench serve` takes it) becomes
`Authorization: Bearer KEY`, the header vLLM's, SGLang's and TensorRT-LLM's `--api-key` check;
`--header KEY=VALUE` adds any other (a gateway's key, a routing header). Both go on every request
kvbench makes to the engine: completions, discovery and state scrapes.

Credentials in a URL (`http://user:password@host`) are refused, not used: the completions and
the state endpoints would have to agree on turning them into a header, and a URL is the thing
kvbench writes everywhere (run headers, compare reports, error messages). `redact_url` is what
every URL kvbench records or prints goes through, so a URL that slipped past the check still
writes `***` for its userinfo and its query values (`kvbench.redact.redact_url`); header values are never recorded, only
their names.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from kvbench.errors import KvbenchError
from kvbench.redact import redact_url

API_KEY_ENV = "OPENAI_API_KEY"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def refuse_userinfo(url: str) -> None:
    """Refuse credentials inside a URL, naming the URL without them."""
    try:
        has_userinfo = urlsplit(url).username is not None
    except ValueError:
        has_userinfo = "@" in url
    if has_userinfo:
        raise KvbenchError(
            f"{redact_url(url)}: credentials in the URL are not sent; give the key with "
            f"--api-key (or ${API_KEY_ENV}) or --header NAME=VALUE"
        )


def parse_headers(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--header KEY=VALUE` flags as a dict; errors never echo a value."""
    headers: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _HEADER_NAME.match(name):
            raise KvbenchError(f"--header {name or '?'}=…: expected NAME=VALUE with a header name")
        if any(c in value for c in "\r\n\0"):
            raise KvbenchError(f"--header {name}=…: a value cannot hold line breaks")
        headers[name] = value
    return headers


def auth_headers(api_key: str | None, headers: dict[str, str] | None = None) -> dict[str, str]:
    """The headers every request to the engine carries: `Authorization: Bearer api_key` (unless
    --header sets Authorization itself) and the --header ones."""
    out: dict[str, str] = {}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    for name, value in (headers or {}).items():
        out = {k: v for k, v in out.items() if k.lower() != name.lower()}
        out[name] = value
    return out


def env_api_key() -> str | None:
    return os.environ.get(API_KEY_ENV) or None
