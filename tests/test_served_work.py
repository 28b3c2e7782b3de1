"""The served-work estimator and the bounded-backlog probe: G on hand-built request histories
(requests at a window's edges count by the part of their work done inside it), E[g] exact, the
batch-means interval, the backlog kept at K on the simulator, and coverage of the reference λ*
(tests/data/saturated_reference.json, SIMULATED) on a reduced grid of rules, workloads and seeds."""

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from kvbench import _core
from kvbench.backends.backlog import SimBacklogRun
from kvbench.backends.sim import SimBackend
from kvbench.benchmark.saturated_rate import measure_saturated_rate
from kvbench.benchmark.search import find_boundary
from kvbench.benchmark.served_work import Started, mean_lengths, mean_work, served_rate
from kvbench.engine_theory import paged_lifetime_memory
from kvbench.profile import POLICIES, build_profile
from kvbench.workload import load_workload

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from saturated_reference import noisy_profile  # noqa: E402

REFS = {
    (r["policy"], r["workload"]): r["capacity"]
    for r in json.loads((Path(__file__).parent / "data" / "saturated_reference.json").read_text())[
        "references"
    ]
}


def _work(prompt, events, *, chunk, bin_width, bins):
    request, time, tokens = (np.array(c) for c in zip(*events, strict=True))
    return _core.served_work(
        np.array(prompt, dtype=np.int64),
        chunk,
        request.astype(np.int64),
        time.astype(np.float64),
        tokens.astype(np.int64),
        bin_width=bin_width,
        bins=bins,
    )


def test_served_work_of_a_hand_built_history():
    # ŝ = 4. A: s = 6, prefill chunks hold 4 then 6 → G(6,1) = 10, G(6,2) = 10+6+1 = 17,
    # G(6,3) = 17+6+2 = 25. B: s = 4 → G(4,1) = 4, G(4,3) = 4+(4+1)+(4+2) = 15, G(4,4) = 22.
    events = [
        (0, 0.5, 1),  # A starts in bin 0
        (0, 1.2, 2),
        (1, 1.5, 1),  # B starts in bin 1
        (1, 2.1, 3),  # a chunk of two tokens: +G(4,3) − G(4,1) = 11
        (0, 2.7, 3),
        (1, 3.4, 4),  # after the last bin: not counted
    ]
    work = _work([6, 4], events, chunk=4, bin_width=1.0, bins=3)
    assert work.tolist() == [10.0, 7.0 + 4.0, 11.0 + 8.0]
    # the window [1, 3) holds A's second and third tokens and B's first three, not A's prefill
    # (before the window) nor B's last token (after): P(3) − P(1) = 30
    assert work[1:].sum() == 30.0


def test_a_whole_request_is_served_its_lifetime_memory():
    rng = np.random.default_rng(3)
    s = rng.integers(1, 3000, 50)
    o = rng.integers(1, 400, 50)
    events = [(i, 0.001 * k, k) for i in range(50) for k in range(1, int(o[i]) + 1)]
    events.sort(key=lambda e: e[1])
    work = _work(s, events, chunk=512, bin_width=1.0, bins=1)
    # G(s, o) is the paper's g with o − 1 decode steps (the simulator's convention)
    assert work[0] == paged_lifetime_memory(s, o - 1, 512, 1).sum()


def test_tokens_going_back_is_an_error():
    with pytest.raises(ValueError, match="went back"):
        _work([5], [(0, 0.1, 2), (0, 0.2, 1)], chunk=4, bin_width=1.0, bins=1)


def test_mean_work_is_exact():
    # fixed:6,3 with ŝ = 4: G(6,3) = 25 (above)
    assert mean_work(load_workload("fixed:6,3"), 4) == 25.0
    # s ∈ {4,5,6}, o ∈ {1,2,3}: G(4,·) = 4, 9, 15; G(5,·) = 9, 15, 22 (chunks 4, 5); G(6,·) =
    # 10, 17, 25; mean 126/9
    assert mean_work(load_workload("uniform:4-6,1-3"), 4) == pytest.approx(14.0)
    assert mean_lengths(load_workload("uniform:4-6,1-3")) == (5.0, 2.0)


def test_the_interval_waits_for_warmup_and_24_quarter_life_batches():
    g, bw, life = 1000.0, 0.25, 4.0  # warm-up 2 lives = 32 bins, batches ≥ 4 bins
    steady = np.full(32 + 24 * 4 - 1, 2.5 * g * bw)
    assert served_rate(steady, bw, g, life=life, confidence=0.95) is None
    est = served_rate(np.append(steady, 2.5 * g * bw), bw, g, life=life, confidence=0.95)
    assert est.batches == 24 and est.start == 8.0 and est.batch_seconds == 1.0
    assert est.rate == est.lo == est.hi == pytest.approx(2.5)


def test_mser_cuts_a_ramp_longer_than_two_lives():
    g, bw, life = 1000.0, 0.25, 4.0
    t = np.arange(800) * bw
    work = 3.0 * g * bw * np.minimum(1.0, t / 20.0)  # cache filling for 20 s ≫ 2 lives
    est = served_rate(work, bw, g, life=life, confidence=0.95)
    assert est.warmup_mser >= 20.0 and est.start >= 20.0
    assert est.rate == pytest.approx(3.0)


def test_each_look_covers_at_half_the_stated_miss_rate():
    # independent batches, no controls: the look's interval is at 1 − 0.05/2 = 97.5%
    rng = np.random.default_rng(0)
    g, bw, life = 1.0, 0.25, 4.0
    hits = 0
    for _ in range(1000):
        work = rng.normal(2.0, 0.5, 400) * bw
        est = served_rate(work, bw, g, life=life, confidence=0.95)
        hits += est.lo <= 2.0 <= est.hi
    assert 0.96 <= hits / 1000 <= 0.99


def _mix_driven(rng, bins=1600, bw=0.25, rate=2.0, mean_s=100.0, mean_o=50.0):
    """A served-work series whose rate falls with the prompt tokens that start and rises with
    the output tokens (as prefill costs time), plus noise: the Azure trace's effect, by hand."""
    count = rng.poisson(rate * bw, bins)
    prompt = np.array([rng.exponential(mean_s, k).sum() for k in count])
    output = np.array([rng.exponential(mean_o, k).sum() for k in count])
    ds = np.convolve(prompt - mean_s * count, np.ones(40) / 40, "same") / bw / mean_s
    do = np.convolve(output - mean_o * count, np.ones(40) / 40, "same") / bw / mean_o
    served = rate - 0.3 * ds + 0.2 * do + rng.normal(0, 0.3, bins)
    return served * bw, Started(count, prompt, output, mean_s, mean_o)


def test_control_variates_narrow_the_interval_and_keep_coverage():
    rng = np.random.default_rng(3)
    plain_hits = cv_hits = 0
    plain_width, cv_width = [], []
    for _ in range(300):
        work, started = _mix_driven(rng)
        plain = served_rate(work, 0.25, 1.0, life=4.0, confidence=0.95)
        cv = served_rate(work, 0.25, 1.0, life=4.0, confidence=0.95, started=started)
        plain_hits += plain.lo <= 2.0 <= plain.hi
        cv_hits += cv.lo <= 2.0 <= cv.hi
        plain_width.append(plain.hi - plain.lo)
        cv_width.append(cv.hi - cv.lo)
    assert cv_hits / 300 >= 0.95
    assert np.median(cv_width) < 0.7 * np.median(plain_width)


def test_controls_that_move_together_count_once():
    # every request's output as long as its prompt: the two token controls are one
    rng = np.random.default_rng(2)
    count = rng.poisson(0.5, 800)
    tokens = np.array([rng.integers(1, 100, k).sum() for k in count])
    started = Started(count, tokens, tokens, 50.0, 50.0)
    work = rng.normal(2.0, 0.2, 800) * 0.25
    est = served_rate(work, 0.25, 1.0, life=4.0, confidence=0.95, started=started)
    assert est.lo < 2.0 < est.hi and est.width < 0.05


def test_a_control_that_never_varies_is_left_out():
    # fixed lengths: every started request is at the mean, so two of the three controls are 0
    rng = np.random.default_rng(1)
    count = rng.poisson(0.5, 800)
    started = Started(count, 6 * count, 3 * count, 6.0, 3.0)
    work = rng.normal(2.0, 0.2, 800) * 0.25
    est = served_rate(work, 0.25, 1.0, life=4.0, confidence=0.95, started=started)
    assert est.lo < 2.0 < est.hi and est.width < 0.05


@pytest.mark.parametrize("policy", POLICIES)
def test_the_backlog_stays_at_k(policy):
    run = SimBacklogRun(build_profile(policy), load_workload("pd-1:1"), backlog=8, seed=1)
    bins = run.advance(300.0)
    assert bins.work.size == 1200 and bins.starts.sum() > 0
    assert np.all(np.abs(bins.backlog - 8) <= 1)
    # the started requests' tokens: the stream's own, so their means are the workload's
    mean_s, mean_o = mean_lengths(load_workload("pd-1:1"))
    assert bins.start_prompt.sum() / bins.starts.sum() == pytest.approx(mean_s, rel=0.08)
    assert bins.start_output.sum() / bins.starts.sum() == pytest.approx(mean_o, rel=0.08)
    # the engine's own waiting gauge: never more than K plus what it preempted back into it
    assert bins.waiting.max() <= 8 + 64


def test_two_replicas_keep_k_each_and_advancing_in_steps_changes_nothing():
    w = load_workload("pd-2:1")
    p = build_profile("sglang")
    whole = SimBacklogRun(p, w, backlog=8, replicas=2, seed=4).advance(120.0)
    run = SimBacklogRun(p, w, backlog=8, replicas=2, seed=4)
    parts = [run.advance(t) for t in (7.3, 50.0, 120.0)]
    assert np.all(whole.backlog == 16)
    for key in ("work", "starts", "start_prompt", "start_output", "finishes", "backlog", "waiting"):
        assert np.array_equal(getattr(whole, key), np.concatenate([getattr(x, key) for x in parts]))


def test_served_rate_agrees_with_the_long_run_departure_rate():
    w = load_workload("pd-1:1")
    p = noisy_profile("vllm")
    bins = SimBacklogRun(p, w, backlog=8, seed=7).advance(3000.0)
    est = served_rate(
        bins.work,
        bins.bin_width,
        mean_work(w, p.chunk_size),
        life=30.0,
        confidence=0.95,
        finishes=bins.finishes,
    )
    assert est.rate == pytest.approx(REFS[("vllm", "pd-1:1")], rel=0.02)
    assert est.departures == pytest.approx(est.rate, rel=0.03)
    assert est.width < 0.02


def test_coverage_and_cost_on_a_reduced_grid():
    """4 rules × 4 workloads × 4 seeds (seeds 100…, disjoint from the benchmark's), σ = 0.37:
    issue 13's targets (median ≤ 240 engine-seconds, p90 ≤ 480) and at most 5% of brackets
    missing the reference λ* (seeded, so the same searches every run; 1 misses today)."""
    costs, misses = [], []
    for (policy, workload), ref in REFS.items():
        for seed in range(100, 104):
            r = measure_saturated_rate(
                SimBackend(noisy_profile(policy), seed=seed),
                load_workload(workload),
                workload,
                precision=0.05,
                max_engine_seconds=3000.0,
                seed=seed,
            )
            assert r.reached and r.upper / r.lower - 1 <= 0.05
            costs.append(r.engine_seconds)
            if not r.lower <= ref <= r.upper:
                misses.append((policy, workload, seed, r.lower, r.upper, ref))
    assert len(misses) <= 3, misses
    assert statistics.median(costs) <= 240
    assert float(np.percentile(costs, 90)) <= 480


@pytest.mark.parametrize("policy", ["vllm", "sglang"])
def test_the_default_backlog_never_runs_dry_on_short_requests(policy):
    # s, o ~ U{1..32} in M = 4,096: about 5 requests start an iteration. K = 8 kept the queue
    # dry (vLLM measured 24% low, SGLang 37% high); the rule's K brackets the rate the open-loop
    # search brackets (SIMULATED, seeded; the two are 2–5% wide, so they must overlap).
    w = load_workload("uniform:1-32,1-32")
    profile = build_profile(policy, kv_tokens=4096)
    backlog = measure_saturated_rate(
        SimBackend(profile, seed=0),
        w,
        "uniform:1-32,1-32",
        precision=0.03,
        max_engine_seconds=600.0,
    )
    assert backlog.extras["backlog"] >= 16
    open_loop = find_boundary(lambda s: SimBackend(profile, seed=s), w, "uniform:1-32,1-32")
    assert open_loop.reached
    assert backlog.lower <= open_loop.upper and open_loop.lower <= backlog.upper
