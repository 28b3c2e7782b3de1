"""Failed requests: counted by kind, with the first few distinct things the server said, and the
FAILING verdict for a run where too many requests failed.

A failed request (HTTP error, timeout, reset, malformed or truncated stream, missing usage, too
few or too many tokens, engine gone) is not a departure: the stability verdict judges the engine
on the requests it completed, and this module judges the rest.

Why FAILING_FRACTION is 1%: the queue evidence leaves failed requests out, so a failure rate f
hides f·λ of the offered load from it. The verdict already tolerates queue growth up to
DEFAULT_TOLERANCE (5%) of λ; hiding more than a fifth of that would let the failures, not the
engine's scheduling, decide what STABLE means. 1% is also where a user stops calling a service
healthy: one request in a hundred answered with an error is an incident, not noise.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from kvbench.redact import redact

FAILING_FRACTION = 0.01
# Distinct server messages kept per failure kind, and how much of each.
MESSAGES_PER_KIND = 3
MESSAGE_CHARS = 200
# Kinds named in a one-line reason.
TOP_KINDS = 3
# Failures an engine (or the proxy in front of it) answers with when it sheds load it cannot
# take — rate limit (429), queue full or overloaded (503), upstream gone or slow behind a proxy
# (502, 504) — or that overload itself causes: timeouts, and connections reset by a server whose
# accept queue overflowed. A FAILING probe of only these marks the engine's limit, not a fault.
LOAD_SHEDDING = frozenset(
    {"http_429", "http_502", "http_503", "http_504", "timeout", "connection_reset"}
)
AUTH_HINT = "engine refused the key: pass --api-key or set OPENAI_API_KEY"
HINTS = {"http_401": AUTH_HINT, "http_403": AUTH_HINT}

_SPACE = re.compile(r"\s+")


def _json_message(text: str) -> str | None:
    """The message of an engine's JSON error body: vLLM's and OpenAI's {"error": {"message":
    …}}, vLLM's older {"object": "error", "message": …}, vLLM's auth middleware's {"error":
    "Unauthorized"}, FastAPI's {"detail": …}."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    for value in (error, body.get("message"), body.get("detail")):
        if isinstance(value, str):
            return value
    if "detail" in body:
        return json.dumps(body["detail"])
    return None


def server_message(raw: str | None) -> str | None:
    """What a failure said, fit to keep and show: the message of a JSON error body (else the
    text), on one line, printable, trimmed to MESSAGE_CHARS, credentials masked."""
    if not raw:
        return None
    text = _json_message(raw.strip()) or raw
    text = "".join(c if c.isprintable() else " " for c in text)
    text = _SPACE.sub(" ", redact(text)).strip()
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 1].rstrip() + "…"
    return text or None


def count_failures(failures: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
    """(kind, message) pairs as [{"kind", "count", "messages", "hint"?}], most frequent kind
    first; `messages` are the first MESSAGES_PER_KIND distinct ones, in the order seen."""
    counts = Counter(kind for kind, _ in failures)
    messages: dict[str, list[str]] = {kind: [] for kind in counts}
    for kind, raw in failures:
        kept = messages[kind]
        message = server_message(raw)
        if message and message not in kept and len(kept) < MESSAGES_PER_KIND:
            kept.append(message)
    out = []
    for kind, count in sorted(counts.items(), key=lambda kc: (-kc[1], kc[0])):
        entry: dict[str, Any] = {"kind": kind, "count": count, "messages": messages[kind]}
        if kind in HINTS:
            entry["hint"] = HINTS[kind]
        out.append(entry)
    return out


def merge_failures(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several runs' `count_failures` lists as one: counts added, messages the first distinct
    ones in run order."""
    merged: dict[str, dict[str, Any]] = {}
    for kinds in runs:
        for k in kinds:
            into = merged.setdefault(k["kind"], {**k, "count": 0, "messages": []})
            into["count"] += k["count"]
            for m in k["messages"]:
                if m not in into["messages"] and len(into["messages"]) < MESSAGES_PER_KIND:
                    into["messages"].append(m)
    return sorted(merged.values(), key=lambda k: (-k["count"], k["kind"]))


def describe(kinds: list[dict[str, Any]], limit: int = TOP_KINDS) -> str:
    """`http_500 ×1,204 ("Internal Server Error"), timeout ×3` for the most frequent kinds."""
    parts = []
    for k in kinds[:limit]:
        part = f"{k['kind']} ×{k['count']:,}"
        if k["messages"]:
            part += f' ("{k["messages"][0]}")'
        if k.get("hint"):
            part += f" — {k['hint']}"
        parts.append(part)
    if len(kinds) > limit:
        parts.append(f"{len(kinds) - limit} more kinds")
    return ", ".join(parts)


def percent(fraction: float) -> str:
    """1.4% or 97%: a tenth of a percent where it matters near the limit."""
    return f"{fraction:.1%}" if fraction < 0.1 else f"{fraction:.0%}"


def failure_summary(failures: list[tuple[str, str | None]], completed: int) -> dict[str, Any]:
    """The run's failure record from the failures that ended in the verdict's window and the
    completions there: counts by kind, fraction of requests ended, and whether it is FAILING."""
    kinds = count_failures(failures)
    ended = completed + len(failures)
    fraction = len(failures) / ended if ended else None
    failing = fraction is not None and fraction > FAILING_FRACTION
    reason = None
    if fraction is not None and failing:
        reason = f"{percent(fraction)} of requests failed: {describe(kinds)}"
    return {
        "count": len(failures),
        "ended": ended,
        "fraction": fraction,
        "limit": FAILING_FRACTION,
        "failing": failing,
        "load_shedding": bool(kinds) and all(k["kind"] in LOAD_SHEDDING for k in kinds),
        "kinds": kinds,
        "reason": reason,
    }
