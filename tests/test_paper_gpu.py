"""kvbench against the paper's real GPU column (docs/accuracy.md, "Against real GPU
measurements"), at a reduced run length. The study (benchmarks/accuracy_study.py) runs 50,000
requests per replica; here 8,000, and the bound is 3 points looser than the study's worst gap."""

from __future__ import annotations

import pytest

from kvbench.benchmark.paper_gpu import PAPER_GPU, paper_vllm_profile, reproduce

# The study's worst |gap| is 6.4% (engine-aware, pd-2:1); see docs/accuracy.md for why.
BOUND = 0.095


@pytest.mark.parametrize("figure", PAPER_GPU, ids=lambda f: f"{f.workload}x{f.replicas}")
def test_simulated_vllm_and_engine_aware_mu_against_the_gpu(figure):
    r = reproduce(figure, num_prompts=8_000)
    assert abs(r.sim_gap) < BOUND, r
    assert abs(r.calibrated_gap) < BOUND, r
    # The engine-aware μ predicts the simulated engine much more closely than either the GPU.
    assert r.calibrated == pytest.approx(r.sim_rate, rel=0.03)
    # The paper's formula at the simulated median b̄ (a decode-only iteration) is far off.
    assert r.mu_paper_at_sim_b > 1.2 * r.sim_rate


def test_prefix_caching_is_what_brings_vllm_near_the_gpu():
    pd11 = PAPER_GPU[0]
    off = reproduce(
        pd11, num_prompts=8_000, profile=paper_vllm_profile().replace(prefix_caching=False)
    )
    on = reproduce(pd11, num_prompts=8_000)
    assert on.waste < 0.5 * off.waste
    assert off.sim_gap < -0.15 < on.sim_gap
