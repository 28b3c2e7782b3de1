"""The default boundary search: the engine's saturated service rate, measured with a bounded
backlog and estimated from served work (`served_work`), to the asked precision.

One probe keeps K requests sent but not started (`kvbench.backends.backlog`) from t = 0, so the
engine is saturated within its first iterations and no overload transient has to be outwaited.
The search looks at the run every LOOK_SECONDS engine seconds and stops as soon as the batch-means
interval [lo, hi] satisfies hi/lo − 1 ≤ precision; that interval is the bracket. What it
brackets is the rate a never-empty queue of K is served at: the stability boundary λ* of queueing
theory when the engine's service does not depend on how deep its queue is beyond K (on the
simulator, vLLM's rule serves up to 18% more with 1–2 requests waiting, and the same rate as a
deep queue from 8 on). `confirm` adds open-loop verdict probes just below and above the bracket
for the queue-stability evidence itself.

K, by rule, per replica: deep enough that the queue never runs dry, the larger of
- the depth at which the engine's service stops depending on depth, plus what can start during
  the client's top-up delay. On the simulator the top-up is instant and depth stops mattering at
  8 on the paper's workloads (vllm pd-1:1, paper-a100 preset, σ = 0.37, 3 seeds of 4,000 s: K = 2
  serves 2.287 req/s, K = 8, 32 and 256 serve 2.20); over HTTP a top-up lags a round trip and
  engines batch admissions, so 32;
- STARTS_MARGIN times the requests that start per iteration at saturation (μ·b), since a request
  is topped up only when one starts. Short requests in a large cache start several an iteration:
  on s, o ~ U{1..32} with M = 4,096 (about 5 an iteration) K = 8 measured vLLM 24% low and
  SGLang 37% high, K = 12 vLLM 5% low, while K = 16 to 128 agreed with each other and with the
  open-loop boundary (vLLM 333–340 against 323–340 req/s, SGLang 183–188 against 182–191).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from kvbench.backends.base import Backend
from kvbench.benchmark.runner import RunSpec, execute_run
from kvbench.benchmark.search import (
    MAX_LIVES,
    MIN_LIVES,
    BoundaryResult,
    Probe,
    request_life,
    saturated_iteration_time,
    theory_rate,
    timed_profile,
)
from kvbench.benchmark.served_work import (
    ServedRate,
    Started,
    mean_lengths,
    mean_work,
    served_rate,
)
from kvbench.benchmark.stability import DEFAULT_CONFIDENCE, DEFAULT_TOLERANCE, check_settings
from kvbench.errors import KvbenchError
from kvbench.workload import Workload

LABEL = "saturated service rate measured with a bounded backlog"
BACKLOG_MIN = {"simulated": 8, "emulated": 32, "real": 32}
STARTS_MARGIN = 8
LOOK_SECONDS = 5.0


def measure_saturated_rate(
    backend: Backend,
    workload: Workload,
    workload_spec: str,
    *,
    precision: float,
    confidence: float = DEFAULT_CONFIDENCE,
    tolerance: float = DEFAULT_TOLERANCE,
    max_engine_seconds: float,
    seed: int = 0,
    backlog: int | None = None,
    confirm: bool = False,
    confirm_backend: Callable[[int], Backend] | None = None,
    start_rate: float | None = None,
    replicas: int = 1,
    on_look: Callable[[float, ServedRate | None], None] | None = None,
    on_probe: Callable[[Probe], None] | None = None,
) -> BoundaryResult:
    """Bracket the saturated service rate of `backend` (a total over `replicas`). `on_look(t,
    estimate)` hears every look (None before the window holds enough batches); with `confirm`,
    two open-loop probes follow on `confirm_backend(seed)` (default: `backend`), each reported
    to `on_probe`."""
    if not 0.001 <= precision <= 1.0:
        raise KvbenchError(f"--precision must be in [0.001, 1], got {precision}")
    check_settings(confidence, tolerance)
    if not max_engine_seconds > 0:
        raise KvbenchError(f"--max-engine-seconds must be positive, got {max_engine_seconds}")
    timing: dict[str, Any] = {}
    profile, burst_capacity = timed_profile(backend, workload, timing, replicas=replicas, seed=seed)
    mu = (
        start_rate
        if start_rate is not None
        else replicas * theory_rate(profile, workload, seed=seed)
    )
    # near saturation from the burst's capacity when higher, as the open-loop search starts
    life = request_life(profile, workload, max(mu, burst_capacity) / replicas, seed=seed)
    if backlog is None:
        b = saturated_iteration_time(profile, workload, mu / replicas, seed=seed)
        backlog = max(BACKLOG_MIN[backend.kind], math.ceil(STARTS_MARGIN * mu / replicas * b))
    elif backlog < 1:
        raise KvbenchError(f"--backlog must be at least 1, got {backlog}")
    g = mean_work(workload, profile.chunk_size)
    mean_prompt, mean_output = mean_lengths(workload)

    run = backend.bounded_backlog(workload, backlog=backlog, seed=seed)
    work: list[np.ndarray] = []
    finishes: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    start_prompt: list[np.ndarray] = []
    start_output: list[np.ndarray] = []
    backlog_seen: list[np.ndarray] = []
    waiting: list[np.ndarray] = []
    looks: list[dict[str, float]] = []
    est: ServedRate | None = None
    t = 0.0
    stop = "engine-second budget spent"
    try:
        while t < max_engine_seconds:
            t = min(max_engine_seconds, t + LOOK_SECONDS)
            bins = run.advance(t)
            work.append(bins.work)
            finishes.append(bins.finishes)
            starts.append(bins.starts)
            start_prompt.append(bins.start_prompt)
            start_output.append(bins.start_output)
            backlog_seen.append(bins.backlog)
            if bins.waiting is not None:
                waiting.append(bins.waiting)
            est = served_rate(
                np.concatenate(work),
                bins.bin_width,
                g,
                life=life,
                confidence=confidence,
                started=Started(
                    np.concatenate(starts),
                    np.concatenate(start_prompt),
                    np.concatenate(start_output),
                    mean_prompt,
                    mean_output,
                ),
                finishes=np.concatenate(finishes),
            )
            if est is not None:
                looks.append({"time": t, "rate": est.rate, "lo": est.lo, "hi": est.hi})
            if on_look is not None:
                on_look(t, est)
            if est is not None and est.width <= precision:
                stop = "precision reached"
                break
    finally:
        run.close()
    spent = t + timing.get("calibration", {}).get("engine_seconds", 0.0)
    kept = np.concatenate(backlog_seen) if backlog_seen else np.zeros(0, np.int64)
    in_window = slice(int(est.start / bins.bin_width), None) if est is not None else slice(0)
    gauge = np.concatenate(waiting) if waiting else None
    probes: list[Probe] = []
    if confirm and est is not None:
        check = confirm_backend or (lambda _s: backend)
        below, above = est.lo / (1.0 + precision), est.hi * (1.0 + precision)
        for k, (rate, expect) in enumerate(((below, "STABLE"), (above, "UNSTABLE"))):
            p = _verdict_probe(
                check(seed + 1 + k),
                workload,
                workload_spec,
                rate,
                expect=expect,
                life=life,
                seed=seed + 1 + k,
                confidence=confidence,
                tolerance=tolerance,
            )
            spent += p.engine_seconds
            probes.append(p)
            if on_probe is not None:
                on_probe(p)
    reached = est is not None and est.width <= precision
    extras: dict[str, Any] = {
        **timing,
        "method": "backlog",
        "label": LABEL,
        "request_life": life,
        "backlog": backlog,
        "backlog_kept": [int(kept.min()), int(kept.max())] if kept.size else None,
        "waiting_min": (
            int(gauge[in_window].min()) if gauge is not None and gauge[in_window].size else None
        ),
        "mean_work": g,
        "throughput": _tokens_per_request(run, workload, seed),
        "looks": looks,
        "confirmed": [p.verdict for p in probes] if confirm else None,
    }
    if est is not None:
        extras.update(
            warmup=est.start,
            warmup_mser=est.warmup_mser,
            batches=est.batches,
            batch_seconds=est.batch_seconds,
            departure_rate=est.departures,
        )
    return BoundaryResult(
        lower=None if est is None else est.lo,
        upper=None if est is None else est.hi,
        precision=precision,
        reached=reached,
        engine_seconds=spent,
        probes=probes,
        theory_mu=mu,
        capacity_estimate=None if est is None else est.rate,
        capacity_interval=None if est is None else (est.lo, est.hi),
        confidence=confidence,
        stop_reason=stop,
        kind=backend.kind,
        backend=backend.name,
        extras=extras,
    )


def _tokens_per_request(run: Any, workload: Workload, seed: int) -> dict[str, float]:
    """Prompt and output tokens per request served, for tokens/s and cost at the bracket (as a
    run summary's `throughput` gives them): the probe's completed requests where it recorded
    them (over HTTP), else the workload's mean lengths, which a simulated probe draws from."""
    done = [r for r in getattr(run, "records", None) or [] if r.output_tokens]
    if done:
        out = float(np.mean([r.output_tokens for r in done]))
        prompt = float(np.mean([r.prompt_len for r in done]))
    else:
        s, o = workload.draw(20_000, seed)
        out, prompt = float(np.mean(o)), float(np.mean(s))
    return {"mean_output_tokens": out, "mean_prompt_tokens": prompt}


def _verdict_probe(
    backend: Backend,
    workload: Workload,
    workload_spec: str,
    rate: float,
    *,
    expect: str,
    life: float,
    seed: int,
    confidence: float,
    tolerance: float,
) -> Probe:
    """An open-loop run at `rate` of MIN_LIVES request lives, doubled while its verdict is not
    `expect` up to MAX_LIVES (the open-loop search's lengths): just above λ*, vLLM's rule looks
    stable for thousands of seconds until a backlog forms (metastability), so a short STABLE
    there is no evidence either way. The verdict at the last length is the one reported."""
    duration, cost, previous, extensions = MIN_LIVES * life, 0.0, 0.0, 0
    while True:
        spec = RunSpec(
            workload_spec,
            rate,
            duration=duration,
            seed=seed,
            confidence=confidence,
            tolerance=tolerance,
        )
        result = execute_run(backend, workload, spec)
        cost += duration - previous if backend.replays_prefix else duration
        verdict = result.summary["verdict"] or "INCONCLUSIVE"
        if verdict == expect or 2 * duration > MAX_LIVES * life:
            break
        previous, duration, extensions = duration, 2 * duration, extensions + 1
    return Probe(
        rate,
        duration,
        cost,
        verdict,
        extensions,
        result.summary["evidence"] or {},
        result.summary["client_kept_schedule"],
    )
