"""Queue statistics (rust/stats.rs) through the Python surface, against hand-computed values
and scipy's reference distributions."""

import numpy as np
import pytest
from scipy import stats as sps

from kvbench import _core


def test_step_mean_max_hand_computed():
    # 0 on [0,1), 2 on [1,3), 5 on [3,4), 1 after; window [0.5, 5): area 10 over 4.5
    mean, mx = _core.step_mean_max(np.array([1.0, 3.0, 4.0]), np.array([2.0, 5.0, 1.0]), 0.5, 5.0)
    assert mean == pytest.approx(10 / 4.5)
    assert mx == 5.0


def test_in_system_steps_counts_enters_and_leaves():
    t, c = _core.in_system_steps(np.array([0.0, 1.0, 1.0]), np.array([2.0, 1.0, np.nan]))
    assert t.tolist() == [0.0, 1.0, 2.0]
    assert c.tolist() == [1.0, 2.0, 1.0]


def test_interval_means_hand_computed():
    m = _core.interval_means(
        np.array([1.0, 3.0, 4.0]), np.array([2.0, 5.0, 1.0]), np.array([0.0, 2.0, 4.0, 6.0])
    )
    assert m.tolist() == [1.0, 3.5, 1.0]


def test_mser5_finds_the_step():
    obs = np.concatenate([np.full(50, 10.0), np.zeros(150)])
    assert _core.mser5(obs) == 50


@pytest.mark.parametrize("dof", [1, 2, 5, 8, 14, 30, 200])
@pytest.mark.parametrize("p", [0.9, 0.975, 0.995])
def test_student_t_quantile_matches_scipy(p, dof):
    assert _core.student_t_quantile(p, dof) == pytest.approx(sps.t.ppf(p, dof), rel=1e-9)


def test_slope_and_rate_on_a_deterministic_ramp():
    # one arrival per second, nobody leaves: N(t) = floor(t) + 1 → slope 1, departure rate 0
    enter = np.arange(0.0, 640.0)
    leave = np.full_like(enter, np.nan)
    a = _core.analyze_queue(enter, leave, 640.0)
    assert a.slope == pytest.approx(1.0, rel=1e-3)
    assert a.departure_rate == 0.0
    assert a.arrival_rate == pytest.approx(1.0)
    assert a.final_in_system == 640


def test_analyze_queue_rejects_bad_arguments():
    with pytest.raises(ValueError):
        _core.analyze_queue(np.zeros(3), np.zeros(2), 10.0)
    with pytest.raises(ValueError):
        _core.analyze_queue(np.zeros(3), np.zeros(3), 10.0, confidence=1.5)
