"""How well the paper's μ and the engine-aware μ predict a simulated engine's boundary.

One case is an engine rule, a workload and a KV capacity. Its measured boundary comes from a long
saturated run (`saturation.saturated_run`); the predictions come from the theory alone:

- the paper's μ = M / (b̄·E[g]) with b̄ the median iteration time of that saturated run, as the
  paper measured it;
- the engine-aware μ a priori, from the engine profile and the workload only;
- the engine-aware μ calibrated: the same, with the preemption/retraction waste measured in a
  short overloaded run of its own seed (vLLM and SGLang only; the others never recompute).

Gaps are prediction / measured − 1. Results are SIMULATED.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvbench import theory
from kvbench.benchmark.saturation import SaturatedRun, saturated_run
from kvbench.engine_theory import EngineAwarePrediction, LengthLaw, engine_aware_mu
from kvbench.profile import build_profile
from kvbench.workload import load_workload

RECOMPUTING_RULES = ("vllm", "sglang")


@dataclass(frozen=True)
class AccuracyCase:
    engine: str
    workload: str
    kv_tokens: int
    measured: SaturatedRun
    mu_paper: float
    apriori: EngineAwarePrediction
    calibrated: EngineAwarePrediction
    calibration: SaturatedRun | None

    @property
    def gap_paper(self) -> float:
        return self.mu_paper / self.measured.rate - 1.0

    @property
    def gap_apriori(self) -> float:
        return self.apriori.mu / self.measured.rate - 1.0

    @property
    def gap_engine_aware(self) -> float:
        return self.calibrated.mu / self.measured.rate - 1.0

    def to_json(self) -> dict:
        return {
            "engine": self.engine,
            "workload": self.workload,
            "kv_tokens": self.kv_tokens,
            "measured": self.measured.rate,
            "measured_stderr": self.measured.rate_stderr,
            "median_iteration_time": self.measured.median_iteration_time,
            "mu_paper": self.mu_paper,
            "mu_engine_aware_apriori": self.apriori.mu,
            "mu_engine_aware": self.calibrated.mu,
            "binding": self.calibrated.binding,
            "preemption_waste": None
            if self.calibration is None
            else self.calibration.preemption_waste,
            "gap_paper": self.gap_paper,
            "gap_engine_aware_apriori": self.gap_apriori,
            "gap_engine_aware": self.gap_engine_aware,
            "simulated": True,
        }


def evaluate_case(
    engine: str,
    workload_spec: str,
    kv_tokens: int,
    *,
    num_prompts: int = 20_000,
    calibration_prompts: int = 3_000,
    seed: int = 0,
) -> AccuracyCase:
    profile = build_profile(engine, kv_tokens=kv_tokens)
    workload = load_workload(workload_spec)
    measured = saturated_run(profile, workload, num_prompts=num_prompts, seed=seed)
    paper = theory.evaluate(
        workload,
        kv_tokens=kv_tokens,
        chunk_size=profile.chunk_size,
        batch_time=measured.median_iteration_time,
    )
    law = LengthLaw.from_workload(workload)
    apriori = engine_aware_mu(profile, law)
    calibration = None
    calibrated = apriori
    if engine in RECOMPUTING_RULES:
        calibration = saturated_run(
            profile, workload, num_prompts=calibration_prompts, seed=seed + 1
        )
        calibrated = engine_aware_mu(profile, law, preemption_waste=calibration.preemption_waste)
    return AccuracyCase(
        engine=engine,
        workload=workload.name,
        kv_tokens=kv_tokens,
        measured=measured,
        mu_paper=paper.mu,
        apriori=apriori,
        calibrated=calibrated,
        calibration=calibration,
    )
