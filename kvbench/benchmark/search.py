"""The boundary search: bracket λ* between the largest rate judged STABLE and the smallest judged
UNSTABLE, to a relative width `precision`, spending as few engine-seconds as it can.

What it uses to spend little:
- it starts from the theory's rate (the engine-aware μ of the backend's profile), overloaded by a
  margin, because an overloaded run is the cheapest to judge and its departure rate estimates the
  capacity directly;
- every later probe is placed around the latest capacity estimate so that one STABLE and one
  UNSTABLE answer close the bracket;
- run lengths scale with the system's time constant (a request's expected life) and grow as the
  rate approaches the capacity estimate (the evidence shrinks with the distance);
- an INCONCLUSIVE probe is extended (doubled), not guessed; on a backend that replays a prefix
  exactly (the simulator) the extension costs only the added seconds, as continuing a live run
  would.
Every probe is recorded with its rate, duration, verdict, evidence and cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kvbench.backends.base import Backend, EventSink
from kvbench.benchmark.runner import RunSpec, execute_run
from kvbench.benchmark.stability import DEFAULT_CONFIDENCE, DEFAULT_TOLERANCE
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile
from kvbench.workload import SyntheticWorkload, Workload

DEFAULT_PRECISION = 0.05
DEFAULT_MAX_ENGINE_SECONDS = 7200.0
# The first probe's overload over the theory's rate: enough that a theory 20% too optimistic
# still yields an overloaded (fast, informative) first run.
FIRST_OVERLOAD = 1.25
# Run lengths in units of a request's expected life: the shortest probe, and the longest a probe
# may be extended to.
MIN_LIVES = 6.0
MAX_LIVES = 256.0
MAX_PROBES = 40


@dataclass
class Probe:
    rate: float
    duration: float  # seconds of load of the final (possibly extended) run
    engine_seconds: float  # what this probe cost, extensions included
    verdict: str  # STABLE / UNSTABLE / INCONCLUSIVE (after all extensions)
    extensions: int
    evidence: dict[str, Any]
    client_kept_schedule: bool
    run_dir: str | None = None  # the judged run's directory, when the search writes them


@dataclass
class BoundaryResult:
    lower: float | None  # largest rate judged STABLE
    upper: float | None  # smallest rate judged UNSTABLE (above lower)
    precision: float  # requested relative width
    reached: bool  # upper / lower − 1 ≤ precision
    engine_seconds: float
    probes: list[Probe]
    theory_mu: float
    capacity_estimate: float | None  # departure rate of the nearest UNSTABLE probe
    confidence: float
    stop_reason: str
    kind: str
    backend: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> float | None:
        if self.lower is None or self.upper is None:
            return None
        return self.upper / self.lower - 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["width"] = self.width
        d["simulated"] = self.kind == "simulated"
        d["emulated"] = self.kind == "emulated"
        return d


def theory_rate(profile: EngineProfile, workload: Workload, *, seed: int = 0) -> float:
    """The engine-aware μ of one replica of `profile` on the workload (the search's start)."""
    if isinstance(workload, SyntheticWorkload):
        law = workload.law
        ll = LengthLaw.uniform(law.prompt_min, law.prompt_max, law.output_min, law.output_max, name=workload.name)
    else:
        s, o = workload.draw(20_000, seed)
        ll = LengthLaw.sample(s, o, name=workload.name)
    return engine_aware_mu(profile, ll).mu


def request_life(profile: EngineProfile, workload: Workload, mu: float, *, seed: int = 0) -> float:
    """Expected seconds a request spends in an engine near saturation: its iterations (prefill
    chunks plus decode steps) times the iteration time at that load — the queue's time constant."""
    s, o = workload.draw(20_000, seed)
    iterations = float(np.mean(np.ceil(s / profile.chunk_size) + o))
    # Little's law near saturation: tokens in a batch ≈ μ·E[s+o]·b, KV held ≈ the whole cache.
    it = profile.iteration_time
    b = it.c0 / max(1e-9, 1.0 - it.c1 * mu * float(np.mean(s + o))) + it.c2 * profile.kv_tokens
    return iterations * b


def find_boundary(
    backend_for_seed: Callable[[int], Backend],
    workload: Workload,
    workload_spec: str,
    *,
    precision: float = DEFAULT_PRECISION,
    confidence: float = DEFAULT_CONFIDENCE,
    tolerance: float = DEFAULT_TOLERANCE,
    max_engine_seconds: float = DEFAULT_MAX_ENGINE_SECONDS,
    seed: int = 0,
    burstiness: float = 1.0,
    start_rate: float | None = None,
    on_probe: Callable[[Probe], None] | None = None,
    on_probe_start: Callable[[float, float], None] | None = None,
    output: Path | None = None,
    progress: EventSink | None = None,
) -> BoundaryResult:
    """Bracket the backend's stability boundary. `backend_for_seed(seed)` gives the backend for
    one probe (probe k uses seed + k, so probes are independent and the search reproducible).
    With `output`, every run is written to its own directory under it (probe-KK, and
    probe-KK-xN for the N-th extension); `progress` sees every run's events as they happen and
    `on_probe_start(rate, duration)` each run's start."""
    if not 0.001 <= precision <= 1.0:
        raise KvbenchError(f"--precision must be in [0.001, 1], got {precision}")
    if not max_engine_seconds > 0:
        raise KvbenchError(f"--max-engine-seconds must be positive, got {max_engine_seconds}")
    first = backend_for_seed(seed)
    profile = first.discover_profile().profile
    mu = start_rate if start_rate is not None else theory_rate(profile, workload, seed=seed)
    life = request_life(profile, workload, mu, seed=seed)
    min_duration, max_duration = MIN_LIVES * life, MAX_LIVES * life

    probes: list[Probe] = []
    spent = 0.0
    lo: float | None = None
    hi: float | None = None
    capacity: float | None = None
    capacity_at: float | None = None  # the rate of the probe that gave the estimate

    def duration_for(rate: float) -> float:
        ref = capacity if capacity is not None else mu
        distance = abs(math.log(rate / ref))
        # Evidence grows like (distance · duration); 0.25 overload needs MIN_LIVES lives.
        lives = MIN_LIVES * (0.25 / max(distance, precision / 4)) ** 1.0
        return float(np.clip(lives * life, min_duration, max_duration))

    def probe(rate: float) -> Probe:
        nonlocal spent
        k = len(probes)
        backend = first if k == 0 else backend_for_seed(seed + k)
        duration = duration_for(rate)
        cost = 0.0
        extensions = 0
        previous = 0.0
        while True:
            duration = min(duration, max_duration)
            spec = RunSpec(workload_spec, rate, burstiness, duration=duration, seed=seed + k,
                           confidence=confidence, tolerance=tolerance)
            run_dir = None
            if output is not None:
                run_dir = output / (f"probe-{k:02d}" + (f"-x{extensions}" if extensions else ""))
            if on_probe_start is not None:
                on_probe_start(rate, duration)
            result = execute_run(backend, workload, spec, output=run_dir, progress=progress)
            step = duration - previous if backend.replays_prefix else duration
            cost += step
            spent += step
            verdict = result.summary["verdict"] or "INCONCLUSIVE"
            if verdict != "INCONCLUSIVE" or duration >= max_duration or spent + duration > max_engine_seconds:
                break
            previous = duration
            duration *= 2.0
            extensions += 1
        p = Probe(rate, duration, cost, verdict, extensions, result.summary["evidence"] or {},
                  result.summary["client_kept_schedule"],
                  None if run_dir is None else str(run_dir))
        probes.append(p)
        if on_probe is not None:
            on_probe(p)
        return p

    tried: set[float] = set()
    stop = "precision reached"
    rate = mu * FIRST_OVERLOAD
    while True:
        if lo is not None and hi is not None and hi / lo - 1.0 <= precision * (1 + 1e-9):
            break
        if len(probes) >= MAX_PROBES:
            stop = f"stopped after {MAX_PROBES} probes"
            break
        if spent + min_duration > max_engine_seconds:
            stop = "engine-second budget spent"
            break
        p = probe(rate)
        tried.add(round(rate, 12))
        if p.verdict == "UNSTABLE":
            if hi is None or rate < hi:
                hi = rate
            dep = p.evidence.get("departure_rate")
            if dep and (capacity_at is None or rate <= capacity_at):
                capacity, capacity_at = float(dep), rate
        elif p.verdict == "STABLE":
            if lo is None or rate > lo:
                lo = rate
        rate = _next_rate(lo, hi, capacity if capacity is not None else mu, precision, p, tried)
        if rate is None:
            stop = "no rate left to probe inside the bracket"
            break

    return BoundaryResult(
        lower=lo, upper=hi, precision=precision,
        reached=lo is not None and hi is not None and hi / lo - 1.0 <= precision * (1 + 1e-9),
        engine_seconds=spent, probes=probes, theory_mu=mu, capacity_estimate=capacity,
        confidence=confidence, stop_reason=stop, kind=first.kind, backend=first.name,
        extras={"request_life": life},
    )


def _next_rate(lo: float | None, hi: float | None, estimate: float, precision: float, last: Probe,
               tried: set[float]) -> float | None:
    """Where to probe next: the pair of rates around the capacity estimate that one STABLE and
    one UNSTABLE answer would close to the requested width, clipped into the open bracket."""
    half = math.sqrt(1.0 + precision)
    # Keep the estimate inside what is known: a STABLE λ has capacity above it, an UNSTABLE below.
    if lo is not None:
        estimate = max(estimate, lo * half)
    if hi is not None:
        estimate = min(estimate, hi / half)
    below, above = estimate / half, estimate * half
    candidates: list[float] = []
    if lo is None:
        candidates.append(below if hi is None or below < hi else hi / (1.0 + precision))
    elif hi is None:
        candidates.append(max(above, lo * (1.0 + precision)) if last.verdict != "STABLE" else max(above, lo * 1.5))
    else:
        candidates += [below, above, math.sqrt(lo * hi)]
    for c in candidates:
        inside = (lo is None or c > lo * (1 + 1e-9)) and (hi is None or c < hi * (1 - 1e-9))
        if inside and round(c, 12) not in tried:
            return c
    if lo is not None and hi is not None:
        mid = math.sqrt(lo * hi)
        if round(mid, 12) not in tried:
            return mid
    return None
