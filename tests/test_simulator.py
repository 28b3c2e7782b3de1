"""The engine simulator's invariants, through its Python fronts: conservation, KV within M,
exact output lengths, FCFS admission, Little's law, reproducibility, dispatch, bad input."""

import numpy as np
import pytest

from kvbench import _core
from kvbench.arrivals import arrival_times
from kvbench.errors import KvbenchError
from kvbench.profile import POLICIES, IterationTimeModel, build_profile
from kvbench.simulator import simulate
from kvbench.workload import load_workload

# Rates (req/s) each rule sustains comfortably on pd-1:1 with the paper calibration.
COMFORTABLE = {"ideal": 2.6, "vllm": 2.0, "sglang": 1.5, "trtllm": 1.6}


def _run(policy: str, n: int = 20_000, seed: int = 1, **kw):
    s, o = load_workload("pd-1:1").draw(n, seed=seed)
    t = arrival_times(COMFORTABLE[policy], n, seed=seed)
    noisy = build_profile(policy).iteration_time
    profile = build_profile(
        policy, iteration_time=IterationTimeModel(noisy.c0, noisy.c1, noisy.c2, 0.2)
    )
    return simulate(profile, s, o, t, seed=seed, **kw)


@pytest.mark.parametrize("policy", POLICIES)
def test_conservation_memory_and_fcfs(policy):
    res = _run(policy)
    rec, ts = res.records, res.timeseries
    # Drained: every arrival was admitted, got its first token and finished, in that order.
    assert res.summary["completed"] == len(rec)
    assert (rec["arrival"] <= rec["admitted"]).all()
    assert (rec["admitted"] < rec["first_token"]).all()
    assert (rec["first_token"] <= rec["finished"]).all()
    # KV never above M (allocation per iteration, in whole pages).
    assert ts["kv_used"].max() <= res.profile.kv_tokens
    assert res.summary["peak_kv_tokens"] == ts["kv_used"].max()
    # First admissions in arrival order: nobody overtakes in the queue.
    assert (np.diff(rec["admitted"].to_numpy()) >= 0).all()
    # The iteration log adds up to the busy time.
    assert ts["iteration_time"].sum() == pytest.approx(res.summary["busy_time"], rel=1e-9)
    assert res.simulated and res.summary["simulated"]


def test_until_leaves_the_overloaded_rest_in_the_system():
    s, o = load_workload("pd-1:1").draw(20_000, seed=2)
    t = arrival_times(6.0, 20_000, seed=2)
    res = simulate(build_profile("vllm"), s, o, t, until=1000.0)
    rec = res.records
    arrived = rec["arrival"] <= 1000.0
    done = rec["finished"].notna()
    assert done.sum() == res.summary["completed"] and (rec.loc[done, "finished"] <= 1000.0).all()
    # Every arrival has finished or is still in the system; nothing after `until` was dispatched.
    assert res.summary["dispatched"] == arrived.sum()
    assert (rec.loc[~arrived, "replica"] == -1).all()
    last = res.timeseries.iloc[-1]
    in_system = int(last["waiting"] + last["running"])
    assert arrived.sum() - done.sum() >= in_system > 1000


@pytest.mark.parametrize("policy", ["ideal", "vllm", "sglang", "trtllm"])
def test_stepping_api_emits_exactly_o_tokens(policy):
    profile = build_profile(policy, kv_tokens=6_000)
    sim = _core.EngineSim(profile, seed=3)
    rng = np.random.default_rng(3)
    lengths = {i: (int(rng.integers(1, 1500)), int(rng.integers(1, 1500))) for i in range(150)}
    tokens: dict[int, list[int]] = {i: [] for i in lengths}
    finished = {}
    now = 0.0
    for i, (s, o) in lengths.items():
        now += float(rng.exponential(0.5))
        for rid, kind, when, n in sim.advance(now):
            assert when <= now
            if kind == "token":
                tokens[rid].append(n)
            elif kind == "finished":
                finished[rid] = n
        sim.add_request(i, s, o, now)
    while (t := sim.next_event_time()) is not None:
        for rid, kind, _, n in sim.advance(t):
            if kind == "token":
                tokens[rid].append(n)
            elif kind == "finished":
                finished[rid] = n
    for i, (_, o) in lengths.items():
        assert finished[i] == o
        assert tokens[i] == list(range(1, o + 1))
    state = sim.state()
    assert state["running"] == state["waiting"] == state["kv_used_tokens"] == 0
    assert (
        state["completed_total"] == len(lengths) and state["kv_total"] == profile.usable_kv_tokens
    )
    if policy in ("vllm", "ideal"):
        assert state["preemptions_total"] > 0  # 6,000 tokens is tight for these lengths
    if policy == "trtllm":
        assert state["preemptions_total"] == 0


def test_littles_law_within_a_batch_means_interval():
    # The engine's own waiting + running counts, sampled every second, against λ·W from the
    # per-request times, over the steady window.
    n = 60_000
    s, o = load_workload("pd-1:1").draw(n, seed=5)
    t = arrival_times(COMFORTABLE["vllm"], n, seed=5)
    res = simulate(build_profile("vllm"), s, o, t, sample_interval=1.0)
    ts, rec = res.timeseries, res.records
    lo, hi = 2000.0, float(t[-1])
    window = ts[(ts["time"] >= lo) & (ts["time"] < hi)]
    L_series = (window["waiting"] + window["running"]).to_numpy(dtype=float)
    batches = np.array_split(L_series, 30)
    means = np.array([b.mean() for b in batches])
    L = L_series.mean()
    half_width = 2.05 * means.std(ddof=1) / np.sqrt(len(means))
    inside = rec[(rec["arrival"] >= lo) & (rec["arrival"] < hi)]
    lam = len(inside) / (hi - lo)
    W = inside["e2e"].mean()
    assert abs(L - lam * W) <= half_width + 0.01 * L
    assert half_width < 0.1 * L  # the interval is informative


def test_seeded_runs_reproduce_and_seeds_differ():
    a = _run("vllm", n=5_000, seed=4)
    b = _run("vllm", n=5_000, seed=4)
    assert a.records.equals(b.records) and a.timeseries.equals(b.timeseries)
    s, o = load_workload("pd-1:1").draw(5_000, seed=4)
    t = arrival_times(COMFORTABLE["vllm"], 5_000, seed=4)
    c = simulate(a.profile, s, o, t, seed=5)
    assert not np.array_equal(a.records["finished"], c.records["finished"])


def test_shortest_queue_dispatch_beats_round_robin_under_load():
    n = 40_000
    s, o = load_workload("pd-1:1").draw(n, seed=6)
    t = arrival_times(4 * 2.9, n, seed=6)
    profile = build_profile("vllm", iteration_time=IterationTimeModel.constant(0.0372))
    rr = simulate(profile, s, o, t, replicas=4, dispatch="round_robin")
    jsq = simulate(profile, s, o, t, replicas=4, dispatch="jsq")
    assert rr.summary["completed"] == jsq.summary["completed"] == n
    assert set(rr.records["replica"]) == {0, 1, 2, 3}
    assert jsq.records["queueing_delay"].mean() < 0.8 * rr.records["queueing_delay"].mean()
    assert (np.diff(jsq.timeseries["time"]) >= 0).all()


def test_bad_input_is_one_line_kvbench_error():
    profile = build_profile("vllm", kv_tokens=1_000)
    with pytest.raises(KvbenchError, match="request 1: needs 1200 KV tokens"):
        simulate(profile, np.array([10, 600]), np.array([10, 600]), np.array([0.0, 1.0]))
    with pytest.raises(KvbenchError, match="arrivals must be sorted"):
        simulate(profile, np.array([10, 10]), np.array([10, 10]), np.array([1.0, 0.0]))
    with pytest.raises(KvbenchError, match="unknown dispatch"):
        simulate(profile, np.array([10]), np.array([10]), np.array([0.0]), dispatch="random")
    with pytest.raises(ValueError, match="unknown engine rule"):
        _core.EngineSim(profile.replace(policy="tgi"))
