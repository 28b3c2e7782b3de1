"""The theory beside one measured engine: the paper's μ at its measured b̄, and the
engine-aware μ with each batch priced from what the engine itself exposed (its reported
iterations, its separate prefill and decode batches, its own iteration count), as compare
records it in engine.json. Measurement (kvbench.benchmark.compare) hands in the figures; this
module only turns them into the theory."""

from __future__ import annotations

from kvbench import theory
from kvbench.backends.base import Backend, RequestRecord
from kvbench.benchmark.batch_time import (
    MIN_TIMINGS,
    PROBE_SOURCE,
    BatchTimeEstimate,
    estimate_batch_time,
    saturated_decode_times,
)
from kvbench.benchmark.saturation import saturated_run
from kvbench.benchmark.separate_batches import SeparateBatchTimes
from kvbench.calibration import IterationTimeFit, fit_iteration_time
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile, IterationTimeModel
from kvbench.workload import Workload

# Fewer reported iterations than this fit nothing worth using.
MIN_REPORTED_ITERATIONS = 200
# The replay that measures vLLM's recompute: as many requests as the accuracy study's (its
# "waste measured" column), from a seed of its own.
REPLAY_PROMPTS = 3_000
REPLAY_SEED = 1


def theory_beside(
    workload: Workload,
    profile: EngineProfile,
    batch_time: float,
    replicas: int,
    separate: SeparateBatchTimes | None = None,
    fit: IterationTimeFit | None = None,
    engine_iteration: float | None = None,
) -> dict:
    """The paper's μ at the measured b̄, and the engine-aware μ.

    The engine-aware μ evaluates each bound's iteration time at its own operating point when the
    engine's iteration-time model is known (a simulated engine's profile carries it; a real
    engine's discovered profile does not), or fitted to the iterations the engine reported
    (`fit`: TensorRT-LLM's per-iteration stats). Otherwise, for an engine that runs prefill and decode
    as separate batches (SGLang), it takes the decode and prefill batch times measured apart in
    the run nearest saturation (`separate`): the measured b̄ is the client's time per output
    token, which holds the interleaved prefill batches that the engine-aware model counts itself,
    so pricing every batch at it counted them twice (−80% on the embedded default). An engine
    that counts its own iterations (vLLM) gives its mean iteration time in the saturated probe
    (`engine_iteration`), the time the model's completions per iteration are paid at, read
    from the engine rather than from the client's streams: on the real CPU vLLM the client's b̄
    came out 5–14% above it in eight runs and priced the engine-aware μ 12–14% low in the first
    two (within 2% of every bracket with the engine's count; on kvbench's own emulator the two
    agree within 1%). For mixed batches
    otherwise, and before any such run, the measured b̄ stands for every iteration. vLLM's
    recompute after preemptions comes from a replay of its rule (`replayed_recompute`)."""
    paper = theory.evaluate(
        workload, kv_tokens=profile.kv_tokens, chunk_size=profile.chunk_size, batch_time=batch_time
    )
    law = LengthLaw.from_workload(workload)
    waste = replayed_recompute(profile, workload, batch_time)
    if profile.iteration_time.known:
        aware = engine_aware_mu(profile, law, preemption_waste=waste)
        source = "engine profile"
    elif fit is not None:
        aware = engine_aware_mu(profile, law, iteration_fit=fit, preemption_waste=waste)
        source = f"fitted to {fit.n_iterations:,} iterations the engine reported"
    elif separate is not None and profile.separate_prefill_decode:
        times = (separate.decode, separate.prefill)
        aware = engine_aware_mu(profile, law, batch_times=times, preemption_waste=waste)
        source = "measured decode and prefill batch times"
    elif engine_iteration is not None:
        constant = IterationTimeModel.constant(engine_iteration)
        aware = engine_aware_mu(profile, law, iteration_model=constant, preemption_waste=waste)
        source = "the engine's mean iteration time (its own iteration count)"
    else:
        constant = IterationTimeModel.constant(batch_time)
        aware = engine_aware_mu(profile, law, iteration_model=constant, preemption_waste=waste)
        source = "measured b̄ (constant)"
    return {
        "mean_g": paper.expected_g.mean,
        "delta": paper.delta,
        "mu_replica": paper.mu,
        "mu": replicas * paper.mu,
        "mu_lower": replicas * paper.mu_lower,
        "mu_engine_aware": replicas * aware.mu,
        "binding": aware.binding,
        "iteration_model": source,
        "preemption_waste": waste,
    }


def replayed_recompute(
    profile: EngineProfile, workload: Workload, batch_time: float
) -> float | None:
    """The tokens per request vLLM recomputes after preemptions, from the vllm rule replayed on
    the engine's settings (REPLAY_PROMPTS requests queued at once; SIMULATED scheduling), or
    None for the other rules (the theory's a-priori term).

    vLLM exports no count of what it recomputes (vllm:iteration_tokens_total counts a request's
    prompt once, at its first token), and the a-priori term, E[o − 1] tokens a request, is an
    upper bound under full-sequence admission (the real CPU vLLM at M = 1,024: 72 tokens, not
    127, and the engine-aware μ 5% low with it). What vLLM schedules depends on token counts and
    pages only, and the rule schedules every step as vLLM 0.32 does (docs/accuracy.md), so the
    replay counts what the engine recomputes (with every request queued at once, how long a step
    takes changes nothing that is scheduled)."""
    if profile.policy != "vllm":
        return None
    if not profile.iteration_time.known:
        profile = profile.replace(iteration_time=IterationTimeModel.constant(batch_time))
    run = saturated_run(profile, workload, num_prompts=REPLAY_PROMPTS, seed=REPLAY_SEED)
    return run.preemption_waste


def reported_iterations_fit(backend: Backend) -> IterationTimeFit | None:
    """The iteration-time model fitted to every iteration the engine itself reported during the
    calibration burst and the probes (TensorRT-LLM's iteration stats: latency, context tokens,
    generation requests, KV blocks), when it reports them and they pin c0 down; else None."""
    windows = backend.iteration_windows()
    if windows is None or len(windows) < MIN_REPORTED_ITERATIONS:
        return None
    try:
        fit = fit_iteration_time(windows)
    except KvbenchError:
        return None
    return fit if fit.c0 > 0 else None


def warmup_end(run) -> float:
    """Where the run's steady part begins, as its verdict found it (0 when it found none)."""
    from kvbench.benchmark.runner import summarize

    evidence = summarize(run.header, run.records, run.samples, status=run.status)["evidence"]
    return float((evidence or {}).get("warmup_end", 0.0))


def saturated_batch_time(
    records: list[RequestRecord], after: float, where: str, trim: float
) -> BatchTimeEstimate | None:
    """b̄ as the paper measured it: in a run of the engine saturated (after its warm-up) rather
    than in the calibration burst, whose all-at-once arrivals make it more prefill-heavy than
    steady saturation. None when the run has too few timings."""
    timings = saturated_decode_times(records, after=after)
    if timings.size < MIN_TIMINGS:
        return None
    return estimate_batch_time(timings, source=PROBE_SOURCE.format(where=where), trim=trim)
