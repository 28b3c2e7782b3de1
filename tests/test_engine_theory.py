"""The engine-aware bounds, pinned to hand-computed cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvbench.engine_theory import (
    LengthLaw,
    admission_group,
    engine_aware_mu,
    head_of_line_gap,
    paged,
    paged_lifetime_memory,
)
from kvbench.errors import KvbenchError
from kvbench.profile import UNLIMITED, IterationTimeModel, build_profile


def _brute_g(s: int, o: int, chunk: int, page: int) -> int:
    """Step by step: each prefill iteration adds a chunk, each decode iteration one token; the
    request holds its tokens rounded up to pages in every iteration."""
    held, area = 0, 0
    while held < s:
        held = min(held + chunk, s)
        area += math.ceil(held / page) * page
    for _ in range(o):
        held += 1
        area += math.ceil(held / page) * page
    return area


def test_paged_lifetime_memory_by_hand():
    # s=5, o=3, ŝ=4, pages of 4: prefill holds 4 → 4, then 5 → 8; decode 6, 7, 8 → 8 each.
    assert paged_lifetime_memory(np.array([5]), np.array([3]), 4, 4)[0] == 4 + 8 + 3 * 8
    # Token-exact: 4 + 5, then 6 + 7 + 8.
    assert paged_lifetime_memory(np.array([5]), np.array([3]), 4, 1)[0] == 9 + 21
    # The paper's closed form when ŝ divides s: [(1 + s/ŝ)·s + 2·o·s + (1+o)·o] / 2 = 31.
    assert paged_lifetime_memory(np.array([8]), np.array([2]), 4, 1)[0] == 31


@settings(max_examples=200, deadline=None)
@given(
    s=st.integers(1, 3000),
    o=st.integers(1, 400),
    chunk=st.sampled_from([1, 7, 64, 512]),
    page=st.sampled_from([1, 16, 32]),
)
def test_paged_lifetime_memory_matches_brute_force(s, o, chunk, page):
    assert paged_lifetime_memory(np.array([s]), np.array([o]), chunk, page)[0] == _brute_g(
        s, o, chunk, page
    )


def test_paged_rounds_up_to_pages():
    assert list(paged(np.array([1, 16, 17, 32, 33]), 16)) == [16, 16, 32, 32, 48]


def test_head_of_line_gap():
    law = LengthLaw.fixed(100, 10)
    assert head_of_line_gap(np.array([300]), law) == 150.0  # fixed need c: c/2
    # Needs 1 and 3 equally likely: E[c²]/(2E[c]) = 5 / 4.
    two = LengthLaw.sample([1, 3], [1, 1])
    assert head_of_line_gap(np.array([1, 3]), two) == pytest.approx(1.25)


def _const(b: float) -> IterationTimeModel:
    return IterationTimeModel.constant(b)


def test_trtllm_reservation_bound_by_hand():
    # s=100, o=50, ŝ=64, pages of 32: reserves page(150) = 160 tokens for its life of 2 prefill
    # chunks + 49 decode steps = 51 iterations; the head-of-line gap of a fixed 160-token need is 80.
    prof = build_profile(
        "trtllm", kv_tokens=16_000, chunk_size=64, block_size=32, iteration_time=_const(0.02)
    )
    pred = engine_aware_mu(prof, LengthLaw.fixed(100, 50))
    per_it = (16_000 - 80) / (160 * 51)
    assert pred.binding == "reservation"
    assert pred.mu == pytest.approx(per_it / 0.02, rel=1e-12)
    # A max_tokens cap of 200 reserves page(300) = 320 tokens instead (gap 160).
    capped = engine_aware_mu(prof.replace(max_tokens_cap=200), LengthLaw.fixed(100, 50))
    assert capped.mu == pytest.approx((16_000 - 160) / (320 * 51) / 0.02, rel=1e-12)


def test_vllm_memory_bound_with_pages_by_hand():
    # s=5, o=3, ŝ=4, pages of 4: prefill holds 4 → 4 then 5 → 8, and the last chunk samples the
    # first token; 2 decode steps hold 6 and 7 → 8 each: g = 28. First need page(4) = 4, gap 2.
    # vLLM's null block takes one of the 250 pages: M = 996 usable.
    prof = build_profile(
        "vllm",
        kv_tokens=1_000,
        chunk_size=4,
        block_size=4,
        iteration_time=_const(0.01),
        token_budget=UNLIMITED,
        max_running=UNLIMITED,
    )
    law = LengthLaw.fixed(5, 3)
    pred = engine_aware_mu(prof, law, preemption_waste=0.0)
    assert pred.binding == "memory"
    assert pred.mu == pytest.approx((996 - 2) / 28 / 0.01, rel=1e-12)
    # A measured waste of 4 recomputed tokens per request costs 4 more token·iterations each.
    wasted = engine_aware_mu(prof, law, preemption_waste=4.0)
    assert wasted.mu == pytest.approx((996 - 2) / 32 / 0.01, rel=1e-12)
    # A priori, half a first chunk (4/2 = 2 tokens) is held every iteration by a request that
    # will be preempted. Without prefix caching it is recomputed: 2 batch tokens per iteration.
    churn = engine_aware_mu(prof.replace(prefix_caching=False), law)
    assert churn.mu == pytest.approx((996 - 2 - 2) / 28 / 0.01, rel=1e-12)
    assert churn.binding_bound.batch_tokens == pytest.approx(
        churn.binding_bound.per_iteration * 7 + 2
    )
    # With prefix caching (vLLM's default) only what the decoders' growth evicted from the freed
    # pages is recomputed: E[o − 1] = 2 tokens per completed request.
    cached = engine_aware_mu(prof, law)
    assert cached.mu == pytest.approx(churn.mu, rel=1e-12)
    assert cached.binding_bound.batch_tokens == pytest.approx(
        cached.binding_bound.per_iteration * (7 + 2)
    )


def test_token_budget_bound_and_its_fixed_point():
    # Long prompts: s = 4000, o = 10 use 4000 + 9 batch tokens. vLLM's budget of 2048 tokens per
    # iteration binds: λ_it = 2048 / 4009, and the iteration attends λ_it·g KV tokens (unpaged).
    model = IterationTimeModel(c0=0.01, c1=2e-5, c2=1e-7)
    prof = build_profile("vllm", kv_tokens=131_000, chunk_size=512, iteration_time=model)
    law = LengthLaw.fixed(4000, 10)
    pred = engine_aware_mu(prof, law)
    assert pred.binding == "token budget"
    per_it = 2048 / 4009
    g = paged_lifetime_memory(np.array([4000]), np.array([9]), 512, 1)[0]
    b = 0.01 + 2e-5 * 2048 + 1e-7 * per_it * g
    assert pred.mu == pytest.approx(per_it / b, rel=1e-12)
    # The fixed point: b is the model's time at the batch the rate μ itself implies.
    bb = pred.binding_bound
    assert bb.iteration_time == pytest.approx(
        model.mean_time(pred.mu * bb.iteration_time * 4009, pred.mu * bb.iteration_time * g)
    )


def test_running_cap_bound_by_hand():
    # Short prompts, long outputs, 4 running slots: a request runs ⌈16/512⌉ + 99 = 100 iterations.
    prof = build_profile(
        "vllm", kv_tokens=131_000, chunk_size=512, max_running=4, iteration_time=_const(0.03)
    )
    pred = engine_aware_mu(prof, LengthLaw.fixed(16, 100))
    assert pred.binding == "running cap"
    assert pred.mu == pytest.approx(4 / 100 / 0.03, rel=1e-12)
    assert {b.name for b in pred.bounds} == {"memory", "token budget", "running cap"}


def test_ideal_rule_is_the_paper_bound_less_the_head_of_line_gap():
    # pd-1:1 with the paper's b̄: the paper's μ is 3.263 req/s (SPEC §1); the ideal rule has no
    # budget, cap or pages, so only the gap E[c²]/(2E[c]) of first chunks c = min(s, 512) and the
    # o − 1 (not o) decode steps differ.
    law = LengthLaw.uniform(10, 1600, 10, 1600)
    prof = build_profile("ideal", iteration_time=_const(0.0372))
    pred = engine_aware_mu(prof, law)
    g = law.mean(paged_lifetime_memory(law.prompt, law.output - 1, 512, 1).astype(float))
    c = np.minimum(law.prompt, 512).astype(float)
    gap = law.mean(c**2) / (2 * law.mean(c))
    assert pred.binding == "memory" and len(pred.bounds) == 1
    assert pred.mu == pytest.approx((131_000 - gap) / (0.0372 * g), rel=1e-12)
    g_paper = law.mean(paged_lifetime_memory(law.prompt, law.output, 512, 1).astype(float))
    assert 131_000 / (0.0372 * g_paper) == pytest.approx(3.263, abs=1e-3)  # exact g: 4th digit


def test_trace_law_carries_a_standard_error():
    rng = np.random.default_rng(0)
    law = LengthLaw.sample(rng.integers(10, 2000, 500), rng.integers(10, 500, 500))
    pred = engine_aware_mu(build_profile("vllm"), law)
    g = paged_lifetime_memory(law.prompt, law.output - 1, 512, 16).astype(float)
    assert pred.binding == "memory"
    assert pred.mu_stderr / pred.mu == pytest.approx(
        np.std(g, ddof=1) / np.sqrt(500) / g.mean(), rel=1e-9
    )


def test_a_request_larger_than_memory_is_an_error():
    with pytest.raises(KvbenchError, match="does not fit"):
        engine_aware_mu(build_profile("vllm", kv_tokens=1_000), LengthLaw.fixed(900, 200))


def test_sglang_separate_batches_by_hand():
    # s=100, o=11, ŝ=64, token-exact pages, M=10,000, b = 0.01 s, and a reserve ratio of 1 (no
    # admission cascade: a request is charged its whole output before and after admission).
    # Decode area Σ_{j=1..10} (100+j) = 1,055; remaining-output area Σ (11−j) = 55; the head
    # wants s + o = 111, gap 55.5: d = (1,055 + 55) / (10,000 − 55.5) decode batches per
    # request. A decode batch finishes Poisson(λ = 1/d) requests and frees 111 each, exactly what
    # as many waiting requests are charged, so the batches that finish any admit them as one
    # group: E[F | F ≥ 1] = λ/(1 − e^−λ) requests. They prefill side by side (2,048/64 = 32
    # chunks fit a batch), which takes the 2 batches of one request: p = 2 / group.
    prof = build_profile(
        "sglang",
        kv_tokens=10_000,
        chunk_size=64,
        max_running=UNLIMITED,
        iteration_time=_const(0.01),
        sglang_min_ratio=1.0,
    )
    pred = engine_aware_mu(prof, LengthLaw.fixed(100, 11))
    d = (1_055 + 55) / (10_000 - 55.5)
    lam = 1 / d
    p = 2 / (lam / (1 - math.exp(-lam)))
    assert pred.binding == "memory"
    # the group is the mean of a seeded Monte Carlo of 100,000 admissions
    assert pred.mu == pytest.approx(1 / ((d + p) * 0.01), rel=0.005)
    # A running cap of 2 forces d ≥ E[o−1]/B = 5 decode batches per request; groups are then
    # pairs (k = max(2, 1 + 1/5)), p = 2 / 2.
    capped = engine_aware_mu(prof.replace(max_running=2), LengthLaw.fixed(100, 11))
    assert capped.binding == "running cap"
    assert capped.mu == pytest.approx(1 / ((5 + 1) * 0.01), rel=1e-12)


def test_sglang_admission_cascade_on_short_outputs():
    # Below its reserve ratio of 1, SGLang charges a new request its whole output but only r of
    # it from the next iteration on, so (1 − r)·o returns to the slack and another prefill batch
    # can follow at once: groups shrink. Compare's embedded default (s, o ~ U{1..32}, M = 2,048)
    # simulated 2.5 requests per prefill batch at d ≈ 0.25 (docs/accuracy.md); r = 1 gives the
    # no-cascade E[F | F ≥ 1] of the test above.
    law = LengthLaw.uniform(1, 32, 1, 32)
    cascade = admission_group(law, 0.55, 0.25)
    assert 2.2 < cascade < 2.8
    lam = 4.0
    assert admission_group(law, 1.0, 0.25) > cascade
    assert admission_group(LengthLaw.fixed(10, 10), 1.0, 0.25) == pytest.approx(
        lam / (1 - math.exp(-lam)), rel=0.01
    )


def test_law_from_workload():
    from kvbench.workload import load_workload

    law = LengthLaw.from_workload(load_workload("uniform:10-12,5-6"))
    assert law.exact and law.prompt.size == 6 and law.mean(law.prompt.astype(float)) == 11.0
    trace = LengthLaw.from_workload(load_workload("azure-conv"))
    assert not trace.exact and trace.prompt.size > 19_000
