"""The verdict rules on queues whose truth is known exactly (M/M/∞ is always stable; a single
deterministic server fed above its rate is not)."""

import numpy as np
import pytest

from kvbench.benchmark.stability import Verdict, stability_verdict
from kvbench.errors import KvbenchError


def _mm_inf(rate, stay, horizon, seed):
    rng = np.random.default_rng(seed)
    enter = np.cumsum(rng.exponential(1 / rate, int(rate * horizon * 1.3)))
    enter = enter[enter < horizon]
    leave = enter + rng.exponential(stay, enter.size)
    leave[leave >= horizon] = np.nan
    return enter, leave


def _single_server(rate, service, horizon, seed):
    rng = np.random.default_rng(seed)
    enter = np.cumsum(rng.exponential(1 / rate, int(rate * horizon * 1.3)))
    enter = enter[enter < horizon]
    leave = np.empty_like(enter)
    free = 0.0
    for i, t in enumerate(enter):
        free = max(free, t) + service
        leave[i] = free
    leave[leave >= horizon] = np.nan
    return enter, leave


def test_stable_queue_is_judged_stable_in_nearly_every_seed():
    verdicts = [
        stability_verdict(*_mm_inf(3.0, 10.0, 600.0, s), rate=3.0, end=600.0).verdict
        for s in range(100)
    ]
    assert verdicts.count(Verdict.UNSTABLE) <= 2
    assert verdicts.count(Verdict.STABLE) >= 90


def test_overloaded_queue_is_unstable_and_departures_estimate_capacity():
    # capacity 2.5/s, offered 3/s: growth 0.5/s. Measured over 200 seeds: the departure interval
    # covers 2.5 in 198 at 300 s, the slope interval covers 0.5 in 163 (the random-walk fallback
    # is approximate), every run at 1000 s is UNSTABLE.
    verdicts, dep_cover, slope_cover = [], 0, 0
    for seed in range(40):
        r = stability_verdict(*_single_server(3.0, 0.4, 1000.0, seed), rate=3.0, end=1000.0)
        verdicts.append(r.verdict)
        dep_cover += r.departure_lo <= 2.5 <= r.departure_hi + 1e-9
        slope_cover += r.slope_lo < 0.5 < r.slope_hi
    assert verdicts.count(Verdict.UNSTABLE) == 40
    assert dep_cover >= 37 and slope_cover >= 28


def test_too_short_a_run_is_inconclusive():
    r = stability_verdict(*_mm_inf(3.0, 10.0, 15.0, 1), rate=3.0, end=15.0)
    assert r.verdict is Verdict.INCONCLUSIVE
    assert "completions" in r.reason


def test_evidence_serialises_without_nan():
    d = stability_verdict(np.array([]), np.array([]), rate=1.0, end=10.0).to_dict()
    assert d["verdict"] == "INCONCLUSIVE"
    assert all(not (isinstance(v, float) and np.isnan(v)) for v in d.values())


@pytest.mark.parametrize("kw", [dict(confidence=1.0), dict(confidence=0.2), dict(tolerance=0.0)])
def test_bad_settings_are_one_line_errors(kw):
    with pytest.raises(KvbenchError):
        stability_verdict(np.array([0.0]), np.array([1.0]), rate=1.0, end=2.0, **kw)
