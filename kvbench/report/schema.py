"""The versioned schema of a compare report's `results.json` (documented in docs/results-schema.md).

`results.json` is derived: `kvbench report DIR` rebuilds it from the raw files a compare run
wrote. Readers check `schema` and `schema_version`; a change that removes or renames a field
bumps the version, adding an optional field does not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvbench import validate
from kvbench.errors import KvbenchError
from kvbench.jsonable import dumps

SCHEMA = "kvbench.compare.results"
# 2: verdicts gained FAILING (a reader that knew three values would misread a fourth), probes
# and engines gained failures by kind and the engine's reported state, engines their provenance,
# and the file warnings and merged_from (kvbench report merge).
# 3: latency percentiles count completed requests only; provisioning's measured replicas come
# from the smaller of λ* and the SLO rate; probes gained percentiles, throughput and slo, engines
# slo_boundary and economics (tokens and cost).
SCHEMA_VERSION = 3
# Versions this kvbench reads: a version-1 or -2 file lacks only optional fields.
READABLE_VERSIONS = (1, 2, 3)

VERDICTS = ("STABLE", "UNSTABLE", "INCONCLUSIVE", "FAILING")
ENGINE_STATUSES = ("ok", "failed", "interrupted")


@dataclass
class LatencySummary:
    """Percentiles in seconds over the probe's finished requests, from the send time, as the
    runner's summary computes them (a run whose client lagged says so in `client_ok`)."""

    ttft_p50: float | None = None
    ttft_p99: float | None = None
    e2e_p50: float | None = None
    e2e_p99: float | None = None
    tpot_p50: float | None = None


@dataclass
class Probe:
    """One stability run of the boundary search at a fixed arrival rate."""

    index: int
    rate: float  # intended arrival rate λ, requests/s over all replicas
    duration: float  # seconds of load the judged run lasted (virtual for simulated engines)
    engine_seconds: float  # what the probe cost, extensions of an INCONCLUSIVE run included
    verdict: str  # one of VERDICTS
    run_dir: str  # relative to the report directory
    # what arrived in the judged window, requests/s: a STABLE verdict was judged against it, and
    # the bracket's lower end is min(rate, this) (kvbench.benchmark.stability.carried_rate)
    arrival_rate: float | None = None
    departure_rate: float | None = None
    slope: float | None = None  # growth of requests in system, requests/s
    slope_ci: list[float] | None = None  # [low, high] at the search's confidence
    requests_sent: int = 0
    requests_finished: int = 0
    requests_failed: int = 0
    mean_in_system: float | None = None  # time-weighted, after warm-up
    max_in_system: float | None = None
    client_ok: bool = True  # False when the client could not keep its schedule
    extensions: int = 0  # times an INCONCLUSIVE run was doubled
    reason: str | None = None  # the stability test's one-line evidence (FAILING: the failures)
    latency: LatencySummary = field(default_factory=LatencySummary)
    # more than failures.limit of the requests that ended failed: see kvbench.benchmark.failures
    failure_fraction: float | None = None
    # [{"kind", "count", "messages": [first few distinct, trimmed, no credentials], "hint"?}]
    failures: list[dict[str, Any]] = field(default_factory=list)
    over_limit: bool = (
        False  # counted as the bracket's upper end (UNSTABLE, or FAILING by shedding)
    )
    preemptions: int | None = None  # the engine's preemption counter's rise over the run
    waiting_mean: float | None = None  # engine's waiting queue, time-weighted over the run
    waiting_max: float | None = None
    kv_usage_mean: float | None = None  # engine's KV usage, 0..1, time-weighted
    kv_usage_max: float | None = None
    scrape_errors: dict[str, int] = field(default_factory=dict)  # state scraper errors by kind
    # metric (ttft, tpot, itl, e2e) → {"n", "mean", "p50", …} at the asked percentiles, seconds
    percentiles: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # span (s), requests_per_s, output_tokens_per_s, total_tokens_per_s over completed requests
    throughput: dict[str, float | None] = field(default_factory=dict)
    # with an SLO: targets, percentile, completed, attained, attainment, goodput, at_percentile,
    # met (kvbench/benchmark/slo.py)
    slo: dict[str, Any] | None = None


@dataclass
class BatchTime:
    """b̄: the representative iteration time near saturation, from the engine's own timings."""

    value: float
    method: str  # "median" or "trimmed-mean"
    trim: float  # fraction cut from each tail for the trimmed mean, 0 for the median
    samples: int  # timings the estimate is taken from
    source: str  # e.g. "per-iteration latency (server)", "per-request TPOT (client)"
    q25: float | None = None
    q75: float | None = None


@dataclass
class Theory:
    """The paper's model at this engine's profile and b̄, per replica and for all replicas."""

    mean_g: float  # E[g(s,o)], token·iterations
    delta: float  # max(s+o)/M
    mu_replica: float  # M / (b̄·E[g]), requests/s
    mu: float  # replicas · mu_replica
    mu_lower: float  # mu·(1−δ): below it the theory guarantees stability
    mu_engine_aware: float | None = None  # all replicas, when the engine-aware model is available
    binding: str | None = None  # which engine-aware bound binds
    iteration_model: str | None = None  # "engine profile" or "measured b̄ (constant)"
    # vLLM: tokens recomputed per request, from its rule replayed on the engine's settings
    preemption_waste: float | None = None


@dataclass
class Boundary:
    """The measured bracket: the highest arrival rate judged stable, the lowest rate the engine
    could not carry (kvbench.benchmark.search.BoundaryResult)."""

    lower: float | None
    upper: float | None
    converged: bool  # upper/lower − 1 ≤ precision
    precision: float  # requested relative width
    # "backlog": the saturated service rate's interval from one bounded-backlog probe (served
    # work); "open-loop": between probes judged STABLE and UNSTABLE
    method: str = "open-loop"
    # --confirm on a backlog bracket: the open-loop runs just below and above it, each
    # {rate, expected, verdict, engine_seconds}; None when not asked
    confirmed: list[dict[str, Any]] | None = None

    @property
    def midpoint(self) -> float | None:
        if self.lower is None or self.upper is None:
            return None
        return (self.lower + self.upper) / 2


@dataclass
class Provisioning:
    """Replicas needed to carry `target_rate` at utilisation `utilization`."""

    target_rate: float
    utilization: float
    replicas_theory: int  # ⌈λ / (ρ·μ_replica)⌉
    replicas_measured: int | None  # ⌈λ / (ρ·λ*_replica)⌉ from the bracket's lower end
    replicas_engine_aware: int | None = None  # ⌈λ / (ρ·μ_engine_aware per replica)⌉
    # what replicas_measured is from: "λ* lower bound" or "SLO rate lower bound" (the smaller)
    basis: str = "λ* lower bound"


@dataclass
class EngineResult:
    label: str  # the name the user gave (escaped wherever shown)
    backend: str  # e.g. "emulate:trtllm", "sim:sglang", "trtllm"
    kind: str  # "simulated", "emulated" or "real"
    status: str  # one of ENGINE_STATUSES
    replicas: int
    urls: list[str] = field(default_factory=list)
    error: str | None = None
    profile: dict[str, Any] | None = None
    profile_sources: dict[str, str] = field(default_factory=dict)
    # each scheduler setting: {setting, value, kind (read/given/inferred/assumed), source}
    settings: list[dict[str, Any]] = field(default_factory=list)
    settings_flags: list[str] = field(default_factory=list)  # what the measurements contradict
    batch_time: BatchTime | None = None  # b̄ the theory uses
    batch_time_burst: BatchTime | None = None  # the calibration burst's b̄ (the search's start)
    # separate prefill and decode batches (SGLang) over HTTP: both times measured apart, which
    # the engine-aware μ uses (kvbench/benchmark/separate_batches.py)
    separate_batch_times: dict[str, Any] | None = None
    theory: Theory | None = None
    boundary: Boundary | None = None
    gap_percent: float | None = None  # 100·(μ − λ*)/λ*, λ* the bracket's midpoint
    gap_engine_aware_percent: float | None = None
    engine_seconds: float = 0.0  # calibration plus every probe
    verdict_counts: dict[str, int] = field(default_factory=dict)
    provisioning: Provisioning | None = None
    probes: list[Probe] = field(default_factory=list)
    # every probe's failures together, most frequent kind first (same shape as Probe.failures)
    failures: list[dict[str, Any]] = field(default_factory=list)
    preemptions: int | None = None  # over every probe
    scrape_errors: dict[str, int] = field(default_factory=dict)  # over every probe
    # model, engine version, launch command and hardware (kvbench/provenance.py); None for a
    # compare directory written before provenance was recorded
    provenance: dict[str, Any] | None = None
    # with an SLO: its targets and the SLO rate's bracket from the search's probes: targets,
    # percentile, describe, lower, upper, lower_probe, note (kvbench/benchmark/slo.py)
    slo_boundary: dict[str, Any] | None = None
    # tokens/s and cost at λ*'s and the SLO rate's lower ends, with assumptions (kvbench/cost.py)
    economics: dict[str, Any] | None = None

    @property
    def marked(self) -> bool:
        """True when the figures do not come from a real engine."""
        return self.kind != "real"


@dataclass
class CompareResults:
    name: str
    created: str  # ISO 8601, UTC
    command: str
    kvbench_version: str
    versions: dict[str, str]
    config: dict[str, Any]
    banner: str | None  # shown on top of every report when any engine is emulated or simulated
    engines: list[EngineResult]
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    interrupted: bool = False
    # what a reader must know before comparing rows (a merge of runs with different workloads,
    # seeds or kvbench versions)
    warnings: list[str] = field(default_factory=list)
    # `kvbench report merge`: the compare directories merged, one entry per source
    merged_from: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for eng, src in zip(out["engines"], self.engines, strict=True):
            if src.boundary is not None:
                eng["boundary"]["midpoint"] = src.boundary.midpoint
        return out

    def write(self, path: Path) -> None:
        path.write_text(dumps(self.to_dict()) + "\n", encoding="utf-8")


def _build(cls, data: Any, where: str):
    """Construct dataclass `cls` from a JSON object, recursing into nested dataclass fields;
    a missing required field or a wrong shape raises KvbenchError naming `where`."""
    if not isinstance(data, dict):
        raise KvbenchError(f"{where}: expected an object for {cls.__name__}")
    nested = {
        "latency": LatencySummary,
        "batch_time": BatchTime,
        "batch_time_burst": BatchTime,
        "theory": Theory,
        "boundary": Boundary,
        "provisioning": Provisioning,
    }
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            continue  # derived (midpoint) or added by a later minor version
        if key in nested and value is not None:
            value = _build(nested[key], value, f"{where}.{key}")
        elif key == "probes":
            value = [_build(Probe, p, f"{where}.probes[{i}]") for i, p in enumerate(value)]
        elif key == "engines":
            value = [_build(EngineResult, e, f"{where}.engines[{i}]") for i, e in enumerate(value)]
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise KvbenchError(f"{where}: {cls.__name__}: {err}") from None


def load_results(path: Path) -> CompareResults:
    """Read a results.json, checking its schema name and version."""
    data = validate.input_json_object(path, missing="missing")
    if data.get("schema") != SCHEMA:
        raise KvbenchError(f"{path}: not a kvbench compare results file (schema {SCHEMA!r})")
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise KvbenchError(
            f"{path}: schema_version {data.get('schema_version')!r} is not supported "
            f"(this kvbench reads {', '.join(map(str, READABLE_VERSIONS))})"
        )
    return _build(CompareResults, data, str(path))
