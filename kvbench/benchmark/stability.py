"""The stability verdict of one run: STABLE, UNSTABLE or INCONCLUSIVE at a stated confidence.

Two pieces of evidence, both from `kvbench._core.analyze_queue` over the steady window that
MSER-5 leaves after the warm-up:

- the slope of requests in system, with a batch-means interval (requests/s);
- the departure rate, with its interval, against the offered rate λ.

UNSTABLE needs both to agree: the queue grew (slope interval above 0) and the engine completed
fewer requests than were offered (departure interval below λ, or below the arrival rate of the
window when chance brought fewer arrivals than λ). That departure rate is then an
estimate of the engine's capacity, which the boundary search uses.
STABLE needs growth bounded by a small fraction of λ (slope interval below tolerance·λ) and no
sign of the engine falling behind (departure interval reaching what was offered). Requiring the
departure interval to reach it, not λ(1 − tolerance), is what keeps a rate just above the boundary from
being called stable however long it runs: there the departures settle at the capacity < λ.
Anything else is INCONCLUSIVE: the honest answer for a run too short or too close to the
boundary, which the search answers by running longer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from kvbench import _core
from kvbench.errors import KvbenchError

DEFAULT_CONFIDENCE = 0.95
# Growth below this fraction of λ counts as bounded. It can be this loose because STABLE also needs
# the departures to keep up with λ, which a rate above the boundary fails however small its
# excess once the run is long enough; the tolerance only spares stable runs whose slope interval
# is still wide (measured on the simulator: 0.02 left half of 600 s runs at 0.8·λ* INCONCLUSIVE).
DEFAULT_TOLERANCE = 0.05
# Fewer completions than this in the steady window are too few to judge a rate from.
MIN_DEPARTURES = 30


class Verdict(StrEnum):
    STABLE = "STABLE"
    UNSTABLE = "UNSTABLE"
    INCONCLUSIVE = "INCONCLUSIVE"
    # Too many requests failed to judge the queue (kvbench.benchmark.failures); never decided
    # here, where only completions are seen.
    FAILING = "FAILING"


def carried_rate(probe: Mapping[str, Any]) -> float:
    """The rate a probe judged STABLE showed the engine carrying: its λ, or the rate that arrived
    in its window when fewer came, since the verdict was judged against those (a real vLLM's
    lower-end streams had come 8–13% lighter than their label). `probe` is a probe as the search
    records it (`rate`, `evidence`) or as a report does (`rate`, `arrival_rate`)."""
    arrived = probe.get("arrival_rate") or (probe.get("evidence") or {}).get("arrival_rate")
    return min(float(probe["rate"]), float(arrived)) if arrived else float(probe["rate"])


@dataclass(frozen=True)
class StabilityResult:
    """A verdict with the evidence it rests on (rates in requests/s, times in s)."""

    verdict: Verdict
    reason: str
    rate: float  # offered λ
    confidence: float
    tolerance: float
    warmup_end: float
    rate_window_start: float
    end: float
    slope: float
    slope_lo: float
    slope_hi: float
    departure_rate: float
    departure_lo: float
    departure_hi: float
    arrival_rate: float
    mean_in_system: float
    max_in_system: float
    final_in_system: float
    steady_departures: int

    @property
    def steady_seconds(self) -> float:
        return self.end - self.warmup_end

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["steady_seconds"] = self.steady_seconds
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def check_settings(confidence: float, tolerance: float) -> None:
    if not 0.5 <= confidence < 1.0:
        raise KvbenchError(f"--confidence must be in [0.5, 1), got {confidence}")
    if not 0.0 < tolerance < 0.5:
        raise KvbenchError(f"tolerance must be in (0, 0.5), got {tolerance}")


def stability_verdict(
    enter: np.ndarray,
    leave: np.ndarray,
    *,
    rate: float,
    end: float,
    confidence: float = DEFAULT_CONFIDENCE,
    tolerance: float = DEFAULT_TOLERANCE,
) -> StabilityResult:
    """Judge a run from each request's send time (`enter`) and finish time (`leave`, NaN if it
    had not finished by `end`), offered at `rate` requests/s."""
    check_settings(confidence, tolerance)
    enter = np.ascontiguousarray(enter, dtype=np.float64)
    leave = np.ascontiguousarray(leave, dtype=np.float64)
    a = _core.analyze_queue(enter, leave, float(end), confidence)
    steady_departures = int(np.count_nonzero((leave >= a.rate_window_start) & (leave < end)))
    grows = a.slope_lo > 0.0
    # Against what was actually offered in the window when fewer arrived than λ by chance: a
    # stable engine completes what arrives, not λ.
    offered = min(rate, a.arrival_rate)
    falls_behind = a.departure_hi < offered
    bounded = a.slope_hi < tolerance * rate
    pct = f"{confidence:.0%}"
    if steady_departures < MIN_DEPARTURES:
        verdict, reason = (
            Verdict.INCONCLUSIVE,
            f"only {steady_departures} completions after warm-up (need {MIN_DEPARTURES})",
        )
    elif grows and falls_behind:
        verdict, reason = (
            Verdict.UNSTABLE,
            f"queue grows at {a.slope:.3g}/s ({pct} CI above 0) and departures "
            f"{a.departure_rate:.3g}/s fall short of λ = {rate:.3g}/s",
        )
    elif bounded and not falls_behind:
        verdict, reason = (
            Verdict.STABLE,
            f"growth < {tolerance:.0%} of λ ({pct} CI upper {a.slope_hi:.3g}/s) and departures "
            f"keep up with λ",
        )
    else:
        verdict, reason = Verdict.INCONCLUSIVE, "evidence does not separate from the boundary"
    return StabilityResult(
        verdict=verdict,
        reason=reason,
        rate=rate,
        confidence=confidence,
        tolerance=tolerance,
        warmup_end=a.warmup_end,
        rate_window_start=a.rate_window_start,
        end=a.end,
        slope=a.slope,
        slope_lo=a.slope_lo,
        slope_hi=a.slope_hi,
        departure_rate=a.departure_rate,
        departure_lo=a.departure_lo,
        departure_hi=a.departure_hi,
        arrival_rate=a.arrival_rate,
        mean_in_system=a.mean_in_system,
        max_in_system=a.max_in_system,
        final_in_system=a.final_in_system,
        steady_departures=steady_departures,
    )
