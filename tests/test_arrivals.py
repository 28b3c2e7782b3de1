"""Arrival schedules: statistical properties with fixed seeds, reproducibility, validation."""

import math

import numpy as np
import pytest
from scipy import stats

from kvbench import _core
from kvbench.arrivals import arrival_times, constant_arrival_times, replay_arrival_times
from kvbench.errors import KvbenchError


def test_poisson_mean_rate_of_a_million_arrivals_is_within_one_percent():
    times = arrival_times(5.0, 1_000_000, seed=1)
    assert times.dtype == np.float64 and times.shape == (1_000_000,)
    assert np.all(np.diff(times) >= 0)
    assert len(times) / times[-1] == pytest.approx(5.0, rel=0.01)


def test_poisson_gaps_pass_a_ks_test_against_the_exponential():
    gaps = np.diff(arrival_times(2.0, 100_000, seed=3), prepend=0.0)
    result = stats.kstest(gaps, stats.expon(scale=0.5).cdf)
    assert result.pvalue > 0.01
    # and the test has power: gamma gaps with the same mean are rejected
    bursty = np.diff(arrival_times(2.0, 100_000, burstiness=0.5, seed=3), prepend=0.0)
    assert stats.kstest(bursty, stats.expon(scale=0.5).cdf).pvalue < 1e-6


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 8.0])
def test_gamma_keeps_the_rate_and_has_cv_one_over_root_burstiness(burstiness):
    gaps = np.diff(arrival_times(10.0, 400_000, burstiness=burstiness, seed=11), prepend=0.0)
    assert gaps.mean() == pytest.approx(0.1, rel=0.01)
    assert gaps.std(ddof=1) / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.02)
    # the shape is the requested one, not just the first two moments
    law = stats.gamma(a=burstiness, scale=1 / (10.0 * burstiness))
    assert stats.kstest(gaps[:50_000], law.cdf).pvalue > 0.01


def test_same_seed_same_schedule_and_seeds_differ():
    a = arrival_times(3.0, 1000, seed=42)
    assert np.array_equal(a, arrival_times(3.0, 1000, seed=42))
    assert not np.array_equal(a, arrival_times(3.0, 1000, seed=43))
    assert np.array_equal(a, _core.poisson_arrivals(3.0, 1000, 42))
    g = arrival_times(3.0, 1000, burstiness=0.3, seed=7)
    assert np.array_equal(g, _core.gamma_arrivals(3.0, 0.3, 1000, 7))


def test_first_arrival_comes_one_gap_after_zero():
    assert arrival_times(1.0, 1, seed=0)[0] > 0
    assert list(constant_arrival_times(4.0, 4)) == [0.25, 0.5, 0.75, 1.0]


def test_infinite_rate_sends_everything_at_once():
    assert list(arrival_times(math.inf, 3)) == [0.0, 0.0, 0.0]


def test_replay_shifts_to_zero_and_time_scale_above_one_compresses():
    stamps = np.array([100.0, 101.0, 103.0, 103.0])
    assert list(replay_arrival_times(stamps)) == [0.0, 1.0, 3.0, 3.0]
    assert list(replay_arrival_times(stamps, time_scale=2.0)) == [0.0, 0.5, 1.5, 1.5]
    assert len(replay_arrival_times(np.array([]))) == 0
    # a strided view is accepted
    assert list(replay_arrival_times(np.array([[1.0, 9.0], [2.0, 9.0]])[:, 0])) == [0.0, 1.0]


@pytest.mark.parametrize(
    "call",
    [
        lambda: arrival_times(0.0, 10),
        lambda: arrival_times(-1.0, 10),
        lambda: arrival_times(float("nan"), 10),
        lambda: arrival_times(1.0, -1),
        lambda: arrival_times(1.0, 2.5),
        lambda: arrival_times(1.0, 10, burstiness=0.0),
        lambda: arrival_times(1.0, 10, burstiness=math.inf),
        lambda: arrival_times(1.0, 10, seed=-1),
        lambda: arrival_times(1.0, 10, seed=2**64),
        lambda: constant_arrival_times(0.0, 3),
        lambda: replay_arrival_times(np.array([2.0, 1.0])),
        lambda: replay_arrival_times(np.array([1.0, np.nan])),
        lambda: replay_arrival_times(np.array([1.0]), time_scale=0.0),
        lambda: replay_arrival_times(np.zeros((2, 2))),
        lambda: replay_arrival_times(["a", "b"]),
    ],
)
def test_bad_arguments_raise_kvbench_error(call):
    with pytest.raises(KvbenchError):
        call()
