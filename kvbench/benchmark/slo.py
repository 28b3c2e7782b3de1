"""Latency targets beside stability: parsing an SLO, judging a run against it, and bracketing the
highest rate that meets it from the probes a stability search already ran.

Two spellings of one SLO:
- kvbench's `--slo ttft:2s,tpot:100ms,e2e:30s@p99` (units s or ms; percentile default p99);
- vLLM's `--goodput ttft:2000 tpot:100 e2el:30000` (vllm/benchmarks/serve.py: space-separated
  KEY:VALUE pairs, keys ttft, tpot, e2el, values in milliseconds), at the default p99.

A run meets the SLO when, over its completed requests, the given percentile of every targeted
metric is within its target. Attainment is the fraction of completed requests within every target
at once, and goodput those requests per second (vLLM's definition, DistServe's request goodput).

The SLO rate is bracketed from the search's own probes, without running more: its lower end is the
fastest probe judged STABLE that met the SLO, its upper end the slowest probe above that which
missed it, or λ*'s upper end when that is lower (above λ* the queue grows without bound, so every
latency target is eventually missed). The bracket is as tight as the probes happen to make it: a
search spends its probes near λ*, so an SLO met only well below λ* has no lower end ("below X").
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kvbench.benchmark.stability import carried_rate
from kvbench.errors import KvbenchError

METRICS = ("ttft", "tpot", "e2e")
# vLLM's name for each metric, and the metrics its --goodput takes
VLLM_NAMES = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2e"}
DEFAULT_PERCENTILE = 99.0
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
_UNITS = {"s": 1.0, "ms": 1e-3}
_TARGET = re.compile(r"^\s*([a-z0-9]+)\s*:\s*([0-9.eE+-]+)\s*(ms|s)?\s*$")


def percentile_key(p: float) -> str:
    """p50, p99, p99.9: the name of a percentile in summaries and results."""
    return f"p{p:g}"


def _percentile(text: str, flag: str) -> float:
    body = text.strip().lower().removeprefix("p")
    try:
        p = float(body)
    except ValueError:
        raise KvbenchError(
            f"{flag} {text!r}: a percentile is a number in (0, 100], e.g. p99"
        ) from None
    if not (0 < p <= 100):
        raise KvbenchError(f"{flag} {text!r}: a percentile is a number in (0, 100], e.g. p99")
    return p


def parse_percentiles(text: str, flag: str = "--percentiles") -> tuple[float, ...]:
    """`50,90,99` (vLLM's --metric-percentiles spelling too): sorted, each in (0, 100]."""
    parts = [t for t in text.split(",") if t.strip()]
    if not parts:
        raise KvbenchError(f"{flag} {text!r}: give comma-separated percentiles, e.g. 50,90,99")
    return tuple(sorted({_percentile(t, flag) for t in parts}))


@dataclass(frozen=True)
class Slo:
    """Targets in seconds by metric (ttft, tpot, e2e), judged at one percentile."""

    targets: dict[str, float] = field(default_factory=dict)
    percentile: float = DEFAULT_PERCENTILE

    def describe(self) -> str:
        def value(seconds: float) -> str:
            return f"{seconds * 1e3:g} ms" if seconds < 1 else f"{seconds:g} s"

        targets = ", ".join(f"{m.upper()} ≤ {value(v)}" for m, v in self.targets.items())
        return f"{targets} at {percentile_key(self.percentile)}"

    def to_dict(self) -> dict[str, Any]:
        return {"targets": dict(self.targets), "percentile": self.percentile}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Slo | None:
        if not data:
            return None
        return cls(
            {str(k): float(v) for k, v in data["targets"].items()}, float(data["percentile"])
        )


def _add(targets: dict[str, float], metric: str, seconds: float, given: str, flag: str) -> None:
    if metric in targets:
        raise KvbenchError(f"{flag} {given!r}: {metric} is given twice")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise KvbenchError(f"{flag} {given!r}: a target is a positive time")
    targets[metric] = seconds


def parse_slo(text: str) -> Slo:
    """`ttft:2s,tpot:100ms,e2e:30s[@p99]` (e2el accepted for e2e)."""
    flag = "--slo"
    body, at, pct = text.partition("@")
    percentile = _percentile(pct, flag) if at else DEFAULT_PERCENTILE
    targets: dict[str, float] = {}
    for item in (t for t in body.split(",") if t.strip()):
        m = _TARGET.match(item.lower())
        if m is None:
            raise KvbenchError(
                f"{flag} {text!r}: expected METRIC:VALUE with a unit, e.g. ttft:2s,tpot:100ms"
            )
        name, number, unit = m.groups()
        metric = VLLM_NAMES.get(name, name)
        if metric not in METRICS:
            raise KvbenchError(
                f"{flag} {text!r}: unknown metric {name!r}; choose from ttft, tpot, e2e"
            )
        if unit is None:
            raise KvbenchError(f"{flag} {text!r}: {item.strip()!r} needs a unit (s or ms)")
        try:
            seconds = float(number) * _UNITS[unit]
        except ValueError:
            raise KvbenchError(f"{flag} {text!r}: {item.strip()!r} is not a number") from None
        _add(targets, metric, seconds, text, flag)
    if not targets:
        raise KvbenchError(f"{flag} {text!r}: give at least one target, e.g. ttft:2s")
    return Slo(targets, percentile)


def parse_goodput(values: list[str] | tuple[str, ...]) -> Slo:
    """vLLM's `--goodput ttft:2000 tpot:100 e2el:30000`: milliseconds, keys ttft, tpot, e2el."""
    flag = "--goodput"
    pairs = [p for v in values for p in v.split()]
    targets: dict[str, float] = {}
    for pair in pairs:
        name, sep, number = pair.partition(":")
        metric = VLLM_NAMES.get(name.lower())
        if not sep or metric is None:
            raise KvbenchError(
                f"{flag} {pair!r}: expected KEY:VALUE in milliseconds, KEY one of ttft, tpot, e2el"
            )
        try:
            ms = float(number)
        except ValueError:
            raise KvbenchError(f"{flag} {pair!r}: {number!r} is not a number of ms") from None
        _add(targets, metric, ms * 1e-3, pair, flag)
    if not targets:
        raise KvbenchError(f"{flag}: give at least one KEY:VALUE, e.g. ttft:2000")
    return Slo(targets)


def slo_from_options(slo: str | None, goodput: tuple[str, ...] | list[str] | None) -> Slo | None:
    """The SLO the user gave in either spelling (not both)."""
    if slo and goodput:
        raise KvbenchError("give the SLO once: --slo or --goodput, not both")
    if slo:
        return parse_slo(slo)
    if goodput:
        return parse_goodput(goodput)
    return None


def request_latencies(
    sent: np.ndarray, first: np.ndarray, fin: np.ndarray, n_out: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT and E2E in seconds (NaN where not measured). TPOT is (finish − first
    token)/(output tokens − 1); a one-token answer has none, and meets any TPOT target."""
    decode = n_out - 1
    decode[decode <= 0] = np.nan
    return {"ttft": first - sent, "tpot": (fin - first) / decode, "e2e": fin - sent}


def attainment(
    latencies: dict[str, np.ndarray], completed: np.ndarray, slo: Slo, span: float
) -> dict[str, Any]:
    """How the completed requests fared against `slo`: attained (within every target), the
    fraction of completed, goodput (attained per second of `span`), each target's metric at the
    SLO's percentile, and whether the run met the SLO (each of those within its target)."""
    good = completed.copy()
    at: dict[str, float | None] = {}
    for metric, target in slo.targets.items():
        values = latencies[metric]
        # a completed request without the metric (TPOT of a one-token answer) is within it
        good &= ~(values > target)
        measured = values[completed & np.isfinite(values)]
        at[metric] = float(np.percentile(measured, slo.percentile)) if measured.size else None
    n_done, n_good = int(completed.sum()), int(good.sum())
    # no completion: nothing to judge the run by (None), never a met SLO
    met = all(v is None or v <= slo.targets[m] for m, v in at.items()) if n_done else None
    return {
        **slo.to_dict(),
        "completed": n_done,
        "attained": n_good,
        "attainment": n_good / n_done if n_done else None,
        "goodput": n_good / span if span > 0 else None,
        "at_percentile": at,
        "met": met,
    }


@dataclass(frozen=True)
class SloBracket:
    lower: float | None  # fastest probe judged STABLE that met the SLO
    upper: float | None  # slowest rate above it known to miss it
    lower_probe: int | None  # that probe's index
    note: str


def _met(probe: dict[str, Any]) -> bool | None:
    return None if probe.get("slo") is None else probe["slo"]["met"]


def slo_bracket(probes: list[dict[str, Any]], stability_upper: float | None) -> SloBracket:
    """The SLO rate's bracket from probes given as {index, rate, verdict, over_limit, slo} (slo:
    the run summary's, None without one). A probe counts as meeting the SLO only when judged
    STABLE too: a rate the engine cannot sustain meets no latency target for long."""
    meeting = [p for p in probes if p["verdict"] == "STABLE" and _met(p)]
    best = max(meeting, key=carried_rate, default=None)
    lower = None if best is None else carried_rate(best)
    missed = [
        float(p["rate"])
        for p in probes
        if (_met(p) is False or p.get("over_limit")) and p["rate"] > (lower or 0.0)
    ]
    if stability_upper is not None and stability_upper > (lower or 0.0):
        missed.append(float(stability_upper))
    upper = min(missed, default=None)
    if lower is None and upper is None:
        note = "no probe was judged against the SLO"
    elif lower is None:
        note = "no probe met the SLO: the SLO rate is below the slowest probe that missed it"
    elif upper is None:
        note = "every probe met the SLO and none was judged above it"
    else:
        note = "between the probes either side (no probe was run for the SLO alone)"
    return SloBracket(lower, upper, None if best is None else int(best["index"]), note)


def slo_boundary(
    slo: Slo, probes: list[dict[str, Any]], stability_upper: float | None
) -> dict[str, Any]:
    """The SLO and its rate's bracket, as results record them."""
    return {
        **slo.to_dict(),
        "describe": slo.describe(),
        **asdict(slo_bracket(probes, stability_upper)),
    }
