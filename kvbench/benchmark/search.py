"""The boundary search: bracket λ* between the highest arrival rate judged STABLE and the lowest
rate the engine could not carry, to a relative width `precision`.

How it spends little engine time, and why each step is sound:
1. Saturate. It starts from the theory's rate (the engine-aware μ of the backend's profile) times
   FIRST_OVERLOAD, raising the rate ×1.5 while runs come back STABLE (×1.25 when INCONCLUSIVE:
   such a run is near the boundary, and a higher rate settles faster than extending it). An overloaded run is the
   cheapest to judge, and its departure rate is the engine's capacity: with a backlog that never
   empties the engine serves at its saturated rate c whatever λ is. The run is extended until the
   capacity interval [c_lo, c_hi] is narrower than CAPACITY_WIDTH·precision (or the budget says stop).
2. Upper end. Any λ above c_hi is UNSTABLE at the stated confidence, because a backlog forms
   sooner or later at any λ and is then served at c < λ. This matters: on the simulator, vLLM's
   rule serves ~10% above its saturated rate while no backlog has formed (fewer preemptions), so a
   run at 1.05·c can look stable for thousands of seconds before it tips over. The smallest rate
   judged UNSTABLE is therefore min(c_hi, the smallest rate a run judged UNSTABLE).
3. Lower end. It probes λ = upper/(1 + precision). STABLE closes the bracket, at the rate that
   actually arrived in the probe's window when that is below λ: a STABLE verdict is judged
   against the arrivals that came (kvbench.benchmark.stability), and against a real vLLM the
   lower end's stream had come 8–13% lighter than its label. UNSTABLE lowers the
   upper end (and its departure rate refines c); INCONCLUSIVE runs are extended (doubled) first,
   never guessed, and one still INCONCLUSIVE at the longest length is stepped below.
A probe judged FAILING (more than 1% of its requests failed: kvbench.benchmark.failures) whose
failures are all load shedding or overload (HTTP 429/502/503/504, timeouts, reset connections:
failures.LOAD_SHEDDING) marks the engine's limit: it counts as the bracket's upper end, as an
UNSTABLE run would, but gives no capacity estimate (its departures are what the engine chose to
serve). Any other failure (another HTTP 4xx or 5xx, a malformed or truncated stream, missing
usage, a wrong token count) is a fault of the engine or its configuration, not a rate it cannot
carry: the search stops there with an error naming it.
Run lengths are in units of a request's expected life in the engine (the queue's time constant)
and start longer the closer λ is to the capacity estimate. An engine over HTTP reports no
iteration time, so before the first probe the search measures b̄ in a short saturating burst
(kvbench.benchmark.burst, as `compare` does) and evaluates the theory's μ and the lives at it,
starting from the burst's capacity when that is higher. On a backend that replays a prefix
exactly (the simulator) an extension costs only the added seconds, as continuing a live run
would. Every probe is recorded with its rate, duration, verdict, evidence and cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kvbench import validate
from kvbench.backends.base import Backend, EventSink
from kvbench.benchmark.burst import run_burst, warm_up
from kvbench.benchmark.runner import RunSpec, execute_run
from kvbench.benchmark.slo import Slo, slo_boundary
from kvbench.benchmark.stability import (
    DEFAULT_CONFIDENCE,
    DEFAULT_TOLERANCE,
    carried_rate,
    check_settings,
)
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.errors import ClientLagError, EngineError, KvbenchError
from kvbench.profile import EngineProfile, IterationTimeModel
from kvbench.workload import Workload

DEFAULT_PRECISION = 0.05
DEFAULT_MAX_ENGINE_SECONDS = 43200.0
# The first probe's overload over the theory's rate: enough that a theory 20% too optimistic
# still yields an overloaded (fast, informative) first run.
FIRST_OVERLOAD = 1.25
# Run lengths in units of a request's expected life: the shortest probe, and the longest a probe
# may be extended to. The minimum is set by metastability, not noise: on the simulator, vLLM's
# rule at 1.2·λ* looks stable for several hundred seconds (about ten lives) before preemptions
# pile up, so runs shorter than ~20 lives call overloaded rates STABLE (measured: 3 of 100 at
# 600 s, 0 of 100 at 1200 s on pd-1:1).
MIN_LIVES = 20.0
MAX_LIVES = 320.0
# Lives a probe starts with at a relative distance d from the capacity estimate: LIVES_AT_UNIT / d
# (never fewer than MIN_LIVES), so 40 lives at d = 0.025; INCONCLUSIVE doubles it from there.
LIVES_AT_UNIT = 1.0
MAX_PROBES = 40
# The saturated run is extended until its capacity interval is this many precisions wide: wider
# makes the saturation run cheaper but puts the lower probe closer to the boundary (slower).
CAPACITY_WIDTH = 1.0


@dataclass
class Probe:
    rate: float
    duration: float  # seconds of load of the final (possibly extended) run
    engine_seconds: float  # what this probe cost, extensions included
    verdict: str  # STABLE / UNSTABLE / INCONCLUSIVE / FAILING (after all extensions)
    extensions: int
    evidence: dict[str, Any]
    client_kept_schedule: bool
    run_dir: str | None = None  # the judged run's directory, when the search writes them
    failures: dict[str, Any] = field(default_factory=dict)  # the run summary's `failures`
    throughput: dict[str, Any] = field(default_factory=dict)  # the run summary's `throughput`
    slo: dict[str, Any] | None = None  # the run summary's `slo` (with --slo)
    latency: dict[str, Any] = field(default_factory=dict)  # the run summary's `latency`

    @property
    def carried_rate(self) -> float:
        return carried_rate({"rate": self.rate, "evidence": self.evidence})

    @property
    def over_limit(self) -> bool:
        """The engine could not carry this rate: UNSTABLE, or FAILING by shedding load."""
        return self.verdict == "UNSTABLE" or (
            self.verdict == "FAILING" and bool(self.failures.get("load_shedding"))
        )


@dataclass
class BoundaryResult:
    # the highest arrival rate judged STABLE: min(λ asked, the rate that arrived in its window)
    lower: float | None
    # the lowest rate the engine could not carry: a probe judged UNSTABLE (or shedding load), or
    # the upper end of the saturated departure interval when that is lower (above lower)
    upper: float | None
    precision: float  # requested relative width
    reached: bool  # upper / lower − 1 ≤ precision
    engine_seconds: float
    probes: list[Probe]
    theory_mu: float
    capacity_estimate: float | None  # saturated departure rate (the narrowest measured)
    capacity_interval: tuple[float, float] | None
    confidence: float
    stop_reason: str
    kind: str
    backend: str
    extras: dict[str, Any] = field(default_factory=dict)
    # with an SLO: its targets and the SLO rate's bracket from the same probes (benchmark/slo.py)
    slo: dict[str, Any] | None = None

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
    """The engine-aware μ of one replica of `profile` on the workload (the search's start), over
    20,000 drawn requests: a start needs no more precision than that (±1%), and the exact law of
    a synthetic workload has millions of support points."""
    s, o = workload.draw(20_000, seed)
    return engine_aware_mu(profile, LengthLaw.sample(s, o, name=workload.name)).mu


def saturated_iteration_time(
    profile: EngineProfile, workload: Workload, mu: float, *, seed: int = 0
) -> float:
    """The iteration time of an engine serving μ requests a second near saturation. Little's
    law: tokens in a batch ≈ μ·E[s+o]·b, KV held ≈ the whole cache."""
    s, o = workload.draw(20_000, seed)
    it = profile.iteration_time
    return it.c0 / max(1e-9, 1.0 - it.c1 * mu * float(np.mean(s + o))) + it.c2 * profile.kv_tokens


def request_life(profile: EngineProfile, workload: Workload, mu: float, *, seed: int = 0) -> float:
    """Expected seconds a request spends in an engine near saturation: its iterations (prefill
    chunks plus decode steps) times the iteration time at that load — the queue's time constant."""
    s, o = workload.draw(20_000, seed)
    iterations = float(np.mean(np.ceil(s / profile.chunk_size) + o))
    return iterations * saturated_iteration_time(profile, workload, mu, seed=seed)


def timed_profile(
    backend: Backend,
    workload: Workload,
    extras: dict[str, Any],
    *,
    replicas: int = 1,
    seed: int = 0,
) -> tuple[EngineProfile, float]:
    """The backend's profile with an iteration time, and the capacity a burst measured (0 when
    none ran). An engine over HTTP reports no iteration time: b̄ is measured in a short
    saturating burst (kvbench.benchmark.burst, as `compare` does) after a warm-up request, and
    the burst is recorded in `extras` (batch_time, calibration)."""
    profile = backend.discover_profile().profile
    if profile.iteration_time.known:
        return profile, 0.0
    warm_up(backend)
    profile = backend.discover_profile().profile
    burst = run_burst(backend, workload, profile, replicas=replicas, seed=seed)
    extras["batch_time"] = asdict(burst.estimate)
    extras["calibration"] = {
        "engine_seconds": burst.engine_seconds,
        "requests": burst.requests,
        "throughput": burst.throughput,
    }
    timed = profile.replace(iteration_time=IterationTimeModel.constant(burst.estimate.value))
    return timed, burst.throughput or 0.0


def check_search_settings(
    precision: float,
    confidence: float,
    max_engine_seconds: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """The search's flags, checked before any engine is started (KvbenchError, one line)."""
    validate.in_range(precision, "--precision", 0.001, 1.0)
    check_settings(confidence, tolerance)
    validate.positive_number(max_engine_seconds, "--max-engine-seconds", allow_inf=True)


def check_replayed(probe: Probe, index: int, rate: float) -> None:
    """A replayed probe must be the one the search asks for now: the same rate (to rounding),
    or the decisions have diverged and resuming would mix two different searches."""
    if not math.isclose(probe.rate, rate, rel_tol=1e-9):
        raise KvbenchError(
            f"cannot resume: probe {index + 1} ran at λ = {probe.rate:.6g} req/s, but the search "
            f"now asks for λ = {rate:.6g} req/s (the engine's calibration or settings changed)"
        )


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
    replicas: int = 1,
    replay: bool = False,
    slo: Slo | None = None,
    percentiles: tuple[float, ...] | None = None,
    resumed: Sequence[Probe] = (),
) -> BoundaryResult:
    """Bracket the backend's stability boundary. `backend_for_seed(seed)` gives the backend for
    one probe (probe k uses seed + k, so probes are independent and the search reproducible).
    With `output`, every run is written to its own run directory under it (probe-KK, and
    probe-KK-xN for its N-th extension); `progress` receives every run's events as they happen
    and `on_probe_start(rate, duration)` is told when each run starts (kvbench compare's live
    view and report use these). `replicas`: how many replicas share the load behind the backend
    (rates, start_rate included, are totals over them). With `slo`, every probe is judged
    against it as well, and the SLO rate is bracketed from the same probes (no probe is run for
    it): see kvbench.benchmark.slo. With `replay`, every probe replays the trace's own
    timestamps, scaled to the probe's rate (RunSpec.replay). `resumed`: probes an interrupted
    search judged (kvbench.benchmark.resume), taken in place of running the first len(resumed)
    probes; each is passed to `on_probe` as a run one would be."""
    check_search_settings(precision, confidence, max_engine_seconds, tolerance)
    first = backend_for_seed(seed)
    extras: dict[str, Any] = {}
    profile, burst_capacity = timed_profile(first, workload, extras, replicas=replicas, seed=seed)
    if start_rate is not None:
        theory_mu = mu = start_rate
    else:
        # from the burst's capacity when higher: an overloaded probe measures the capacity
        # whatever the overload, and a constant b̄ undershoots an engine that runs prefill and
        # decode as separate batches (see compare_search.start_rate)
        theory_mu = theory_rate(profile, workload, seed=seed)
        mu = max(theory_mu, burst_capacity)
        extras["start_rate"] = mu
    # a request lives in one replica, which sees 1/replicas of the load
    life = request_life(profile, workload, mu / replicas, seed=seed)
    min_duration, max_duration = MIN_LIVES * life, MAX_LIVES * life

    probes: list[Probe] = []
    spent = 0.0
    lo: float | None = None
    hi: float | None = None
    capacity: tuple[float, float, float] | None = None  # (estimate, lo, hi) from a saturated run
    stop = "precision reached"

    def duration_for(rate: float) -> float:
        ref = capacity[0] if capacity is not None else mu
        distance = abs(math.log(rate / ref))
        lives = LIVES_AT_UNIT / max(distance, precision / 4)
        return float(np.clip(lives * life, min_duration, max_duration))

    def probe(rate: float, *, until_capacity_width: float | None = None) -> Probe:
        """One probe, extended while INCONCLUSIVE (or, for a saturation run, while the capacity
        interval is wider than `until_capacity_width`)."""
        nonlocal spent
        k = len(probes)
        if k < len(resumed):
            p = resumed[k]
            check_replayed(p, k, rate)
            spent += p.engine_seconds
            return record(p)
        backend = first if k == 0 else backend_for_seed(seed + k)
        duration = duration_for(rate)
        cost = previous = 0.0
        extensions = 0
        while True:
            duration = min(duration, max_duration)
            spec = RunSpec(
                workload_spec,
                rate,
                burstiness,
                duration=duration,
                seed=seed + k,
                confidence=confidence,
                tolerance=tolerance,
                replay=replay,
            )
            run_dir = None
            if output is not None:
                run_dir = output / (f"probe-{k:02d}" + (f"-x{extensions}" if extensions else ""))
            if on_probe_start is not None:
                on_probe_start(rate, duration)
            result = execute_run(
                backend,
                workload,
                spec,
                output=run_dir,
                progress=progress,
                slo=slo,
                percentiles=percentiles,
            )
            step = duration - previous if backend.replays_prefix else duration
            cost += step
            spent += step
            verdict = result.summary["verdict"] or "INCONCLUSIVE"
            ev = result.summary["evidence"] or {}
            wide = (
                until_capacity_width is not None
                and verdict == "UNSTABLE"
                and ev.get("departure_lo")
                and ev["departure_hi"] / ev["departure_lo"] - 1 > until_capacity_width
            )
            # a saturation probe is not extended while INCONCLUSIVE: it is near the boundary, and
            # stepping the rate up (below) gets an overloaded run for less than doubling it would
            # a run without a verdict because its client fell behind is not extended: a longer
            # one would only fall further behind
            lagged = (
                result.summary["verdict"] is None and not result.summary["client_kept_schedule"]
            )
            more = (
                verdict == "INCONCLUSIVE" and until_capacity_width is None and not lagged
            ) or wide
            next_cost = 2 * duration - duration if backend.replays_prefix else 2 * duration
            if not more or duration >= max_duration or spent + next_cost > max_engine_seconds:
                break
            previous = duration
            duration *= 2.0
            extensions += 1
        p = Probe(
            rate,
            duration,
            cost,
            verdict,
            extensions,
            ev,
            result.summary["client_kept_schedule"],
            None if run_dir is None else str(run_dir),
            result.summary["failures"],
            result.summary["throughput"],
            result.summary["slo"],
            result.summary["latency"],
        )
        return record(p)

    def record(p: Probe) -> Probe:
        probes.append(p)
        if on_probe is not None:
            on_probe(p)
        if p.verdict == "FAILING" and not p.over_limit:
            raise EngineError(
                f"probe at λ = {p.rate:.4g} req/s: FAILING, {p.evidence['reason']}; the search stops: "
                "these failures are a fault of the engine or its configuration, not load "
                "shedding (HTTP 429/502/503/504, timeouts, reset connections)"
            )
        return p

    def judged_probe(rate: float, *, until_capacity_width: float | None = None) -> Probe:
        """A probe whose client kept its schedule, or one that showed the engine over its limit
        anyway; the same rate once more after a lagged run, since a pause on a shared machine is
        not a client that cannot keep up. Otherwise the search stops: raising the rate would
        put the client further behind, and a bracket of unjudged probes means nothing."""
        for _ in range(2):
            p = probe(rate, until_capacity_width=until_capacity_width)
            if p.client_kept_schedule or p.over_limit or not budget_left():
                return p
        raise ClientLagError(
            f"probe at λ = {rate:.4g} req/s: the client could not keep its send schedule "
            "(see the probe's schedule lag); the search stops. Give kvbench's client its own "
            "cores (taskset), or a lower --time-scale for an emulator"
        )

    def learn(p: Probe) -> None:
        nonlocal lo, hi, capacity
        if p.verdict == "STABLE":
            lo = p.carried_rate if lo is None else max(lo, p.carried_rate)
        elif p.verdict == "FAILING" and p.over_limit:
            hi = p.rate if hi is None else min(hi, p.rate)
        elif p.verdict == "UNSTABLE":
            hi = p.rate if hi is None else min(hi, p.rate)
            ev = p.evidence
            dep, dlo, dhi = ev.get("departure_rate"), ev.get("departure_lo"), ev.get("departure_hi")
            if dep and dlo and dhi and (capacity is None or dhi - dlo < capacity[2] - capacity[1]):
                capacity = (float(dep), float(dlo), float(dhi))
            if capacity is not None and capacity[2] > (lo or 0.0):
                hi = min(hi, capacity[2])

    def budget_left() -> bool:
        return spent + min_duration <= max_engine_seconds and len(probes) < MAX_PROBES

    # 1. saturate
    rate = mu * FIRST_OVERLOAD
    while budget_left():
        p = judged_probe(rate, until_capacity_width=CAPACITY_WIDTH * precision)
        learn(p)
        if p.over_limit:
            break
        rate *= 1.5 if p.verdict == "STABLE" else 1.25
    # 2–3. close the bracket from below
    ceiling = hi  # the next lower probe goes one precision step below this
    stalled: list[float] = []
    while hi is not None and ceiling is not None and budget_left():
        if lo is not None and hi / lo - 1.0 <= precision * (1 + 1e-9):
            break
        rate = ceiling / (1.0 + precision)
        if lo is not None and rate <= lo * (1 + 1e-9):
            rate = math.sqrt(lo * hi)
        if any(abs(rate / r - 1.0) < 1e-6 for r in stalled):
            break
        p = judged_probe(rate)
        learn(p)
        if p.verdict == "INCONCLUSIVE":
            # Too close to call even at the longest run: the boundary is near; step below it.
            stalled.append(rate)
            ceiling = rate
        else:
            ceiling = hi
    reached = lo is not None and hi is not None and hi / lo - 1.0 <= precision * (1 + 1e-9)
    if not reached:
        stop = "engine-second budget spent" if not budget_left() else "could not close the bracket"

    judged = [{**asdict(p), "index": i, "over_limit": p.over_limit} for i, p in enumerate(probes)]
    return BoundaryResult(
        slo=None if slo is None else slo_boundary(slo, judged, hi),
        lower=lo,
        upper=hi,
        precision=precision,
        reached=reached,
        engine_seconds=spent,
        probes=probes,
        theory_mu=theory_mu,
        capacity_estimate=None if capacity is None else capacity[0],
        capacity_interval=None if capacity is None else (capacity[1], capacity[2]),
        confidence=confidence,
        stop_reason=stop,
        kind=first.kind,
        backend=first.name,
        extras={"request_life": life, **extras},
    )
