"""b̄ from an engine's own timings: which requests count, median and trimmed mean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kvbench.backends.base import RequestRecord
from kvbench.benchmark.batch_time import (
    CLIENT_SOURCE,
    estimate_batch_time,
    saturated_decode_times,
)
from kvbench.errors import KvbenchError


def _rec(i, first, finished, out, error=None):
    return RequestRecord(
        i,
        0.0,
        100,
        out,
        sent=0.0,
        first_token=first,
        finished=finished,
        output_tokens=out,
        error=error,
    )


def test_only_requests_decoding_while_others_waited_count():
    records = [
        _rec(0, 0.1, 2.1, 51),  # 2.0 s / 50 tokens = 0.04, done before the last admission
        _rec(1, 0.1, 3.1, 101),  # 0.03
        _rec(2, 0.2, 9.0, 11),  # finished after the last admission at 5.0: not saturated
        _rec(3, 5.0, 6.0, 11),  # the last admission itself finishes later
        _rec(4, 0.3, 1.0, 1),  # one output token: no decode step to time
        _rec(5, 0.3, 1.0, 8, error="http_500"),
    ]
    assert saturated_decode_times(records) == pytest.approx([0.04, 0.03])


def test_median_and_trimmed_mean_match_hand_and_scipy():
    rng = np.random.default_rng(3)
    timings = np.concatenate([rng.normal(0.037, 0.002, 200), [0.5, 0.9, 1.2]])  # a heavy tail
    median = estimate_batch_time(timings, source=CLIENT_SOURCE)
    assert median.value == pytest.approx(float(np.median(timings)))
    assert median.method == "median" and median.samples == 203
    trimmed = estimate_batch_time(timings, source=CLIENT_SOURCE, trim=0.1)
    assert trimmed.value == pytest.approx(stats.trim_mean(timings, 0.1))
    assert trimmed.method == "trimmed-mean"
    assert abs(trimmed.value - 0.037) < 0.001  # the tail is cut


def test_too_few_timings_is_a_one_line_error():
    with pytest.raises(KvbenchError, match="only 3 iteration timings"):
        estimate_batch_time(np.array([0.1, 0.2, 0.3]), source=CLIENT_SOURCE)
    with pytest.raises(KvbenchError, match="--trim"):
        estimate_batch_time(np.full(50, 0.1), source=CLIENT_SOURCE, trim=0.6)


def test_requests_admitted_during_warm_up_do_not_count():
    records = [
        _rec(0, 0.1, 2.1, 51),  # first token before the warm-up ended at 1.0
        _rec(1, 1.5, 4.5, 101),  # 0.03
        _rec(2, 6.0, 9.0, 11),  # the last admission
    ]
    assert saturated_decode_times(records, after=1.0) == pytest.approx([0.03])
