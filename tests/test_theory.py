"""The paper's model: g against a step-by-step footprint, E[g], the published μ, verdicts,
mixtures and provisioning."""

import math

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.theory import (
    Stability,
    evaluate,
    expected_lifetime_memory,
    lifetime_memory,
    lifetime_memory_closed_form,
    mixture_rate,
    replicas_needed,
    service_rate,
    stability_verdict,
)
from kvbench.workload import load_workload


def footprint_area(s: int, o: int, chunk: int) -> int:
    """Walk one request iteration by iteration and add up the KV tokens it holds."""
    held, area = 0, 0
    while held < s:  # prefill: one chunk per iteration
        held = min(held + chunk, s)
        area += held
    for _ in range(o):  # decode: one token per iteration
        held += 1
        area += held
    return area


@pytest.mark.parametrize("chunk", [1, 7, 512])
def test_exact_g_equals_the_step_by_step_footprint(chunk):
    rng = np.random.default_rng(0)
    s = rng.integers(1, 3000, size=300)
    o = rng.integers(1, 3000, size=300)
    expected = [footprint_area(a, b, chunk) for a, b in zip(s, o, strict=True)]
    assert lifetime_memory(s, o, chunk).tolist() == expected


def test_closed_form_is_exact_when_the_chunk_divides_the_prompt_and_below_otherwise():
    s = np.array([512, 1024, 5120, 1000, 513])
    o = np.array([1, 100, 7, 300, 2])
    exact = lifetime_memory(s, o, 512)
    closed = lifetime_memory_closed_form(s, o, 512)
    assert closed[:3].tolist() == exact[:3].tolist()
    # s = q·ŝ + r: the exact sum is larger by q(ŝ − r) + r(ŝ − r)/(2ŝ)
    q, r = np.divmod(s[3:], 512)
    assert (exact[3:] - closed[3:]).tolist() == pytest.approx(
        (q * (512 - r) + r * (512 - r) / 1024).tolist()
    )


@pytest.mark.parametrize("closed_form", [True, False])
def test_expected_g_over_a_law_is_the_mean_over_its_whole_support(closed_form):
    workload = load_workload("uniform:3-40,1-9")
    s, o = np.meshgrid(np.arange(3, 41), np.arange(1, 10))
    g = lifetime_memory_closed_form if closed_form else lifetime_memory
    brute = float(np.mean(g(s.ravel(), o.ravel(), 8)))
    estimate = expected_lifetime_memory(workload, 8, closed_form=closed_form)
    assert estimate.mean == pytest.approx(brute, rel=1e-12) and estimate.stderr == 0


@pytest.mark.parametrize(
    "workload, batch_time, published, exact",
    [
        ("pd-1:1", 0.0372, "3.263", "3.262"),
        ("pd-2:1", 0.0430, "3.956", "3.954"),
        ("pd-1:2", 0.0337, "2.902", "2.901"),
    ],
)
def test_paper_theory_column_to_the_printed_digits(workload, batch_time, published, exact):
    result = evaluate(
        load_workload(workload), kv_tokens=131_000, chunk_size=512, batch_time=batch_time
    )
    assert f"{result.mu:.3f}" == published
    assert f"{result.mu_other_form:.3f}" == exact
    assert result.mu_stderr == 0


def test_paper_eight_replica_figure():
    """The paper's 8-replica 1:1 theory figure is 25.81 req/s, but 8 × 3.263 = 26.11. The same
    model with b̄ = 0.03763 s (1.2% above the single-GPU 0.0372) gives 25.81, so the 8-GPU row
    appears to use its own measured b̄; the paper's b̄ for that run is not in SPEC §1, so kvbench
    cannot reproduce 25.81 from the single-GPU inputs and does not pretend to."""
    workload = load_workload("pd-1:1")
    single = evaluate(workload, kv_tokens=131_000, chunk_size=512, batch_time=0.0372)
    assert f"{8 * single.mu:.2f}" == "26.11"
    eight = evaluate(workload, kv_tokens=131_000, chunk_size=512, batch_time=0.03763)
    assert f"{8 * eight.mu:.2f}" == "25.81"


def test_trace_mu_has_a_standard_error_from_the_sample():
    workload = load_workload("azure-conv")
    result = evaluate(workload, kv_tokens=131_000, chunk_size=512, batch_time=0.0372)
    s, o = workload.rows()
    g = lifetime_memory_closed_form(s, o, 512)
    assert result.expected_g.mean == pytest.approx(g.mean())
    assert result.expected_g.stderr == pytest.approx(g.std(ddof=1) / math.sqrt(len(g)))
    assert result.mu_stderr == pytest.approx(
        result.mu * result.expected_g.stderr / result.expected_g.mean
    )
    assert 0 < result.mu_stderr < 0.05 * result.mu


def test_verdict_bands():
    mu, d = 3.0, 0.1
    assert stability_verdict(3.1, mu, d).stability is Stability.UNSTABLE
    assert stability_verdict(2.6, mu, d).stability is Stability.STABLE
    verdict = stability_verdict(2.8, mu, d)
    assert verdict.stability is Stability.UNDETERMINED
    assert (verdict.mu_lower, verdict.mu) == pytest.approx((2.7, 3.0))
    # a request larger than memory: nothing is guaranteed stable
    assert stability_verdict(0.01, mu, 1.5).stability is Stability.UNDETERMINED


def test_paper_delta_and_band():
    result = evaluate(load_workload("pd-1:1"), rate=3.2)
    assert result.delta == pytest.approx(3200 / 131_000)
    assert result.mu_lower == pytest.approx(result.mu * (1 - 3200 / 131_000))
    assert result.verdict.stability is Stability.UNDETERMINED


def test_mixture_is_the_harmonic_mean_weighted_by_request_share():
    assert mixture_rate([2.0, 4.0], [0.5, 0.5]) == pytest.approx(1 / (0.25 + 0.125))
    assert mixture_rate([2.0, 4.0], [1, 1]) == pytest.approx(mixture_rate([2.0, 4.0], [0.5, 0.5]))
    # a mix of 1:1 and 1:2 load lies between their rates, nearer the slower one's
    assert 2.902 < mixture_rate([3.263, 2.902], [0.5, 0.5]) < (3.263 + 2.902) / 2


def test_provisioning_rounds_up_to_keep_utilisation_under_target():
    assert replicas_needed(50.0, 3.263) == math.ceil(50 / (0.9 * 3.263)) == 18
    assert replicas_needed(1.8, 1.0, 0.9) == 2
    assert replicas_needed(1.81, 1.0, 0.9) == 3
    assert replicas_needed(26.71, 3.263, 1.0) == 9


@pytest.mark.parametrize(
    "call",
    [
        lambda: service_rate(0, 0.03, 1e6),
        lambda: service_rate(1000, -1, 1e6),
        lambda: replicas_needed(1.0, 1.0, 1.5),
        lambda: replicas_needed(1.0, 0.0),
        lambda: mixture_rate([1.0], [0.5, 0.5]),
        lambda: lifetime_memory(10, 10, 0),
        lambda: stability_verdict(1.0, 1.0, -0.1),
    ],
)
def test_bad_arguments_raise_kvbench_error(call):
    with pytest.raises(KvbenchError):
        call()
