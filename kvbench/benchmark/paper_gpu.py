"""The paper's real GPU column (Llama-3-8B, vLLM v1, one A100, M = 131,000, ŝ = 512): what
kvbench's simulated vLLM and its engine-aware μ give against the measured saturated throughput.

The simulator runs the `vllm` rule (prefix caching on, vLLM's default; first-chunk admission, as
vLLM admitted requests when the paper was written) with the default preset,
whose iteration-time model is fitted to Vidur's kernel timings alone: nothing here is fitted to
the figures below. Simulated figures are labelled so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kvbench import theory
from kvbench.benchmark.saturation import WINDOW, saturated_run
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.profile import EngineProfile, build_profile
from kvbench.simulator import simulate
from kvbench.workload import load_workload


@dataclass(frozen=True)
class PaperFigure:
    """One row of the paper's table: workload, replicas behind round-robin, its b̄ (None where
    it gave none), its μ from the formula and the throughput it measured on the GPU."""

    workload: str
    replicas: int
    b_bar: float | None
    mu_formula: float
    mu_gpu: float

    @property
    def formula_gap(self) -> float:
        return self.mu_formula / self.mu_gpu - 1.0


PAPER_GPU = (
    PaperFigure("pd-1:1", 1, 0.0372, 3.263, 3.387),
    PaperFigure("pd-2:1", 1, 0.0430, 3.956, 3.650),
    PaperFigure("pd-1:2", 1, 0.0337, 2.902, 2.969),
    PaperFigure("pd-1:1", 8, None, 25.81, 26.71),
)


@dataclass(frozen=True)
class Reproduction:
    """kvbench against one paper row. sim_rate: the simulated saturated departure rate (all
    replicas); engine_aware: replicas × the engine-aware μ a priori (no run), calibrated: the
    same with the recompute waste measured in a short run of another seed; median_iteration:
    the simulated b̄ as the paper measured it (median near saturation), mean_iteration: the mean
    that sets the rate; waste: recomputed tokens per completed request."""

    paper: PaperFigure
    sim_rate: float
    sim_stderr: float
    median_iteration: float
    mean_iteration: float
    waste: float
    engine_aware: float
    calibrated: float
    mu_paper_at_sim_b: float
    simulated: bool = True

    @property
    def sim_gap(self) -> float:
        return self.sim_rate / self.paper.mu_gpu - 1.0

    @property
    def engine_aware_gap(self) -> float:
        return self.engine_aware / self.paper.mu_gpu - 1.0

    @property
    def calibrated_gap(self) -> float:
        return self.calibrated / self.paper.mu_gpu - 1.0


def paper_vllm_profile() -> EngineProfile:
    """vLLM as the paper ran it: the `vllm` rule's defaults, but a request admitted when its
    first chunk fits. Full-sequence admission (--scheduler-reserve-full-isl, now vLLM's default)
    came with PR #37307 on 2026-03-17, after the ICML 2026 submission deadline (January 2026);
    the PR's description calls first-chunk admission vLLM's default behaviour until then."""
    return build_profile("vllm", full_sequence_admission=False)


def _replicated_rate(
    profile: EngineProfile, spec: str, replicas: int, num_prompts: int, seed: int
) -> tuple[float, float]:
    """Departure rate of `replicas` engines behind round-robin with every request queued at
    t = 0, over the middle of the completions (as `saturated_run`), and its batch-means error."""
    n = num_prompts * replicas
    prompt, output = load_workload(spec).draw(n, seed)
    result = simulate(profile, prompt, output, np.zeros(n), replicas=replicas, seed=seed)
    times = np.sort(result.records["finished"].to_numpy())
    k1, k2 = (int(f * n) for f in WINDOW)
    span = times[k2] - times[k1]
    batches = 20
    counts, _ = np.histogram(times[k1:k2], bins=batches, range=(times[k1], times[k2]))
    se = float(np.std(counts / (span / batches), ddof=1) / math.sqrt(batches))
    return float((k2 - k1) / span), se


def reproduce(
    figure: PaperFigure,
    *,
    num_prompts: int = 50_000,
    calibration_prompts: int = 3_000,
    seed: int = 0,
    profile: EngineProfile | None = None,
) -> Reproduction:
    """Runs one paper row: `num_prompts` requests per replica, all queued at t = 0."""
    profile = profile or paper_vllm_profile()
    workload = load_workload(figure.workload)
    single = saturated_run(profile, workload, num_prompts=num_prompts, seed=seed)
    if figure.replicas == 1:
        rate, se = single.rate, single.rate_stderr
    else:
        rate, se = _replicated_rate(profile, figure.workload, figure.replicas, num_prompts, seed)
    law = LengthLaw.from_workload(workload)
    apriori = engine_aware_mu(profile, law)
    waste = saturated_run(profile, workload, num_prompts=calibration_prompts, seed=seed + 1)
    calibrated = engine_aware_mu(profile, law, preemption_waste=waste.preemption_waste)
    paper_mu = theory.evaluate(
        workload,
        kv_tokens=profile.kv_tokens,
        chunk_size=profile.chunk_size,
        batch_time=single.median_iteration_time,
    ).mu
    return Reproduction(
        paper=figure,
        sim_rate=rate,
        sim_stderr=se,
        median_iteration=single.median_iteration_time,
        mean_iteration=single.mean_iteration_time,
        waste=single.preemption_waste,
        engine_aware=figure.replicas * apriori.mu,
        calibrated=figure.replicas * calibrated.mu,
        mu_paper_at_sim_b=figure.replicas * paper_mu,
    )
