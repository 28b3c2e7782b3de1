"""Plain-text figures for the SLO rate, tokens per second and cost, shared by the terminal views
of `boundary` and `compare` and by the report tables (no styling, no escaping)."""

from __future__ import annotations

from typing import Any

DASH = "—"


def _rate(x: float | None) -> str:
    return DASH if x is None else f"{x:.3f}"


def slo_bracket(slo: dict[str, Any] | None) -> str:
    """'1.234 – 1.456 req/s', 'below 1.456 req/s', or '—'."""
    if not slo:
        return DASH
    lo, hi = slo.get("lower"), slo.get("upper")
    if lo is None and hi is None:
        return DASH
    if lo is None:
        return f"below {_rate(hi)} req/s"
    if hi is None:
        return f"at least {_rate(lo)} req/s"
    return f"{_rate(lo)} – {_rate(hi)} req/s"


def tokens(at: dict[str, Any] | None) -> str:
    """'336.6 output tok/s (336.6 per GPU), 672.9 total'."""
    if not at or at.get("output_tokens_per_s") is None:
        return DASH
    return (
        f"{at['output_tokens_per_s']:,.1f} output tok/s "
        f"({at['output_tokens_per_s_per_gpu']:,.1f} per GPU), "
        f"{at['total_tokens_per_s']:,.1f} total"
    )


def dollars(at: dict[str, Any] | None) -> str:
    """'$2.50/hour, $0.034 per M requests, $2.06 per M output tokens'."""
    if not at or at.get("usd_per_hour") is None:
        return DASH

    def usd(x: float | None) -> str:
        return DASH if x is None else f"${x:,.4g}"

    return (
        f"{usd(at['usd_per_hour'])}/hour, {usd(at['usd_per_million_requests'])} per M requests, "
        f"{usd(at['usd_per_million_output_tokens'])} per M output tokens"
    )


def rows(slo: dict[str, Any] | None, econ: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """label, value, note rows: the SLO rate, then tokens and dollars at λ* and at the SLO rate,
    then the assumptions; none unless an SLO or a GPU price was given (tokens/s at λ* are in the
    report's summary table whatever was given)."""
    out: list[tuple[str, ...]] = []
    if slo:
        out.append(("SLO rate", slo_bracket(slo), f"{slo['describe']}; {slo['note']}"))
    if not econ or (not slo and econ.get("gpu_price") is None):
        return out
    for key, where in (("at_lambda", "at λ*"), ("at_slo", "at SLO rate")):
        at = econ.get(key)
        if at is None:
            continue
        out.append((f"tokens {where}", tokens(at), f"λ = {_rate(at['rate'])} req/s"))
        if at.get("usd_per_hour") is not None:
            out.append((f"cost {where}", dollars(at)))
    out.append(("assumptions", econ["assumptions"]))
    return out
