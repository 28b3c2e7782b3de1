"""A small JSON/text GET client bound to one server, for state scrapers and profile discovery.

Errors name the endpoint; a missing endpoint (404) is an answer, not an error, because engines
differ in which endpoints they serve (SGLang's /metrics needs --enable-metrics, /server_info is
newer than /get_server_info).
"""

from __future__ import annotations

import json
from typing import Literal, overload

import aiohttp

from kvbench.errors import KvbenchError


class ServerClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout: float = 5.0):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def url(self, path: str) -> str:
        return self.base_url + path

    @overload
    async def get_text(self, path: str, *, missing_ok: Literal[False] = False) -> str: ...
    @overload
    async def get_text(self, path: str, *, missing_ok: bool) -> str | None: ...
    async def get_text(self, path: str, *, missing_ok: bool = False) -> str | None:
        """The body of GET `path`; None on 404 when `missing_ok`."""
        url = self.url(path)
        try:
            async with self.session.get(url, timeout=self.timeout) as resp:
                if resp.status == 404 and missing_ok:
                    return None
                body = await resp.text()
                if resp.status != 200:
                    raise KvbenchError(f"{url}: HTTP {resp.status}: {body[:200].strip()}")
                return body
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise KvbenchError(f"{url}: {type(err).__name__}: {err}".rstrip(": ")) from None

    async def get_json(self, path: str, *, missing_ok: bool = False):
        text = await self.get_text(path, missing_ok=missing_ok)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise KvbenchError(f"{self.url(path)}: not JSON ({err})") from None

    async def post_json(self, path: str, body: dict) -> dict:
        url = self.url(path)
        try:
            async with self.session.post(url, json=body, timeout=self.timeout) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise KvbenchError(f"{url}: HTTP {resp.status}: {text[:200].strip()}")
                return json.loads(text)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:
            raise KvbenchError(f"{url}: {type(err).__name__}: {err}".rstrip(": ")) from None

    async def first_json(self, *paths: str):
        """(path, body) of the first of `paths` that exists; (None, None) when none does."""
        for path in paths:
            body = await self.get_json(path, missing_ok=True)
            if body is not None:
                return path, body
        return None, None
