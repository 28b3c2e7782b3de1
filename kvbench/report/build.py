"""Turn a compare directory's raw files into the report's figures and plot series.

Every number a report shows is computed here from the raw files (engine.json, each run's
records and samples), so `kvbench report DIR` rebuilds exactly what `kvbench compare` wrote.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from kvbench.benchmark import raw
from kvbench.benchmark.failures import merge_failures
from kvbench.benchmark.recorder import read_run
from kvbench.benchmark.runner import summarize
from kvbench.benchmark.slo import Slo, percentile_key, slo_boundary
from kvbench.cost import Pricing, economics
from kvbench.errors import KvbenchError
from kvbench.report.schema import (
    VERDICTS,
    BatchTime,
    Boundary,
    CompareResults,
    EngineResult,
    LatencySummary,
    Probe,
    Provisioning,
    Theory,
)
from kvbench.theory import replicas_needed

SAMPLE_COLUMNS = [
    "time",
    "in_flight",
    "waiting",
    "running",
    "kv_used_tokens",
    "kv_usage",
    "preemptions_total",
]


@dataclass
class ProbeSeries:
    """Queue and KV samples of one probe, for the plots of the probes either side of a boundary."""

    engine: str
    kind: str
    probe: int
    rate: float
    verdict: str
    samples: pd.DataFrame  # SAMPLE_COLUMNS


@dataclass
class Report:
    results: CompareResults
    boundary_series: list[ProbeSeries]  # per engine: the probes at the bracket's two ends
    samples: pd.DataFrame  # every probe's samples, with `engine` and `probe` columns


def _with_kv_usage(samples: pd.DataFrame, kv_capacity: float | None) -> pd.DataFrame:
    """Fill kv_usage from kv_used_tokens where an engine reports tokens but not the fraction."""
    samples = samples.reindex(columns=SAMPLE_COLUMNS)
    if kv_capacity and samples["kv_usage"].isna().all() and samples["kv_used_tokens"].notna().any():
        samples["kv_usage"] = samples["kv_used_tokens"] / kv_capacity
    return samples


def _latency(summary: dict[str, Any]) -> LatencySummary:
    lat = summary["latency"]
    return LatencySummary(
        ttft_p50=lat["ttft"]["p50"],
        ttft_p99=lat["ttft"]["p99"],
        e2e_p50=lat["e2e"]["p50"],
        e2e_p99=lat["e2e"]["p99"],
        tpot_p50=lat["tpot"]["p50"],
    )


def _asked_percentiles(summary: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    keys = ["n", "mean", *(percentile_key(p) for p in summary["percentiles"])]
    return {
        m: {k: summary["latency"][m].get(k) for k in keys} for m in ("ttft", "tpot", "itl", "e2e")
    }


def _probe(
    directory: Path,
    raw_probe: dict[str, Any],
    kv_capacity: float | None,
    slo: Slo | None,
    percentiles: tuple[float, ...] | None,
):
    """One probe's figures, recomputed from its run file with the runner's own summary, judged
    against the compare's SLO and percentiles."""
    import pandas as pd

    run_dir = directory / raw_probe["run_dir"]
    run = read_run(run_dir)
    summary = summarize(
        run.header,
        run.records,
        run.samples,
        status=run.status,
        scrape=run.scrape,
        slo=slo,
        percentiles=percentiles,
    )
    evidence = summary["evidence"] or {}
    counts = summary["requests"]
    failures = summary["failures"]
    samples = _with_kv_usage(pd.DataFrame([asdict(s) for s in run.samples]), kv_capacity)
    probe = Probe(
        index=int(raw_probe["index"]),
        rate=float(raw_probe["rate"]),
        duration=float(summary["window"]),
        engine_seconds=float(raw_probe["engine_seconds"]),
        verdict=str(raw_probe["verdict"]),
        run_dir=str(raw_probe["run_dir"]),
        arrival_rate=evidence.get("arrival_rate"),
        departure_rate=evidence.get("departure_rate"),
        slope=evidence.get("slope"),
        slope_ci=[evidence["slope_lo"], evidence["slope_hi"]] if "slope_lo" in evidence else None,
        requests_sent=counts["sent"],
        requests_finished=counts["completed"],
        requests_failed=counts["failed"],
        mean_in_system=evidence.get("mean_in_system"),
        max_in_system=evidence.get("max_in_system"),
        client_ok=bool(summary["client_kept_schedule"]),
        extensions=int(raw_probe.get("extensions", 0)),
        reason=evidence.get("reason"),
        latency=_latency(summary),
        failure_fraction=failures["fraction"],
        failures=failures["kinds"],
        over_limit=bool(raw_probe.get("over_limit", raw_probe["verdict"] == "UNSTABLE")),
        preemptions=summary["preemptions"],
        waiting_mean=summary["waiting"]["mean"],
        waiting_max=summary["waiting"]["max"],
        kv_usage_mean=summary["kv_usage"]["mean"],
        kv_usage_max=summary["kv_usage"]["max"],
        scrape_errors=dict((summary["scrape"] or {}).get("errors", {})),
        percentiles=_asked_percentiles(summary),
        throughput=dict(summary["throughput"]),
        slo=summary["slo"],
    )
    if probe.verdict not in VERDICTS:
        raise KvbenchError(f"{run_dir}: unknown verdict {probe.verdict!r}")
    return probe, samples


def _engine(directory: Path, eng: dict[str, Any], config: dict[str, Any]):
    replicas = int(eng.get("replicas", 1))
    result = EngineResult(
        label=str(eng["label"]),
        backend=str(eng["backend"]),
        kind=str(eng["kind"]),
        status=str(eng.get("status", "failed")),
        replicas=replicas,
        urls=list(eng.get("urls", [])),
        error=eng.get("error"),
        profile=eng.get("profile"),
        profile_sources=dict(eng.get("profile_sources", {})),
        settings=list(eng.get("settings", [])),
        settings_flags=list(eng.get("settings_flags", [])),
        provenance=eng.get("provenance"),
    )
    if eng.get("batch_time"):
        result.batch_time = BatchTime(**eng["batch_time"])
    if eng.get("batch_time_burst"):
        result.batch_time_burst = BatchTime(**eng["batch_time_burst"])
    result.separate_batch_times = eng.get("separate_batch_times")
    if eng.get("theory"):
        result.theory = Theory(**eng["theory"])
    kv_capacity = None
    if result.profile and result.profile.get("kv_tokens"):
        kv_capacity = float(result.profile["kv_tokens"]) * replicas

    # each engine's own SLO, percentiles and price (a merged report's engines keep theirs)
    slo = Slo.from_dict(eng.get("slo", config.get("slo")))
    asked = eng.get("percentiles", config.get("percentiles"))
    percentiles = tuple(asked) if asked else None
    search = eng.get("search") or {}
    series = []
    for raw_probe in search.get("probes", []):
        probe, samples = _probe(directory, raw_probe, kv_capacity, slo, percentiles)
        result.probes.append(probe)
        series.append((probe, samples))
    if search:
        result.boundary = Boundary(
            lower=search.get("lower"),
            upper=search.get("upper"),
            converged=bool(search.get("converged", False)),
            precision=float(search.get("precision", config.get("precision", 0.0))),
            method=str(search.get("method", "open-loop")),
            confirmed=search.get("confirmed"),
        )
    calibration = eng.get("calibration") or {}
    # a bounded-backlog search's cost is its probe's (it records no open-loop probes)
    searched = (
        float(search.get("engine_seconds", 0.0))
        if search.get("method") == "backlog"
        else sum(p.engine_seconds for p in result.probes)
    )
    result.engine_seconds = float(calibration.get("engine_seconds", 0.0)) + searched
    counts = Counter(p.verdict for p in result.probes)
    result.verdict_counts = {v: counts.get(v, 0) for v in VERDICTS}
    result.failures = merge_failures([p.failures for p in result.probes])
    preemptions = [p.preemptions for p in result.probes if p.preemptions is not None]
    result.preemptions = sum(preemptions) if preemptions else None
    scrape_errors: Counter[str] = Counter()
    for p in result.probes:
        scrape_errors.update(p.scrape_errors)
    result.scrape_errors = dict(scrape_errors)

    measured = result.boundary.midpoint if result.boundary else None
    if result.theory and measured:
        result.gap_percent = 100 * (result.theory.mu - measured) / measured
        if result.theory.mu_engine_aware is not None:
            result.gap_engine_aware_percent = (
                100 * (result.theory.mu_engine_aware - measured) / measured
            )
    lower = result.boundary.lower if result.boundary else None
    basis = "λ* lower bound"
    probes = [asdict(p) for p in result.probes]
    if slo is not None and result.boundary is not None:
        result.slo_boundary = slo_boundary(slo, probes, result.boundary.upper)
        # provisioning from the smaller of the two: the SLO rate is never above λ*, and with no
        # probe meeting the SLO there is no measured rate to provision from
        lower, basis = result.slo_boundary["lower"], "SLO rate lower bound"
    servers = eng.get("servers") or []
    result.economics = economics(
        probes,
        lambda_throughput=(search.get("backlog") or {}).get("throughput"),
        lambda_lower=result.boundary.lower if result.boundary else None,
        slo_lower=(result.slo_boundary or {}).get("lower"),
        replicas=replicas,
        pricing=Pricing(**pricing)
        if (pricing := eng.get("pricing", config.get("pricing")))
        else Pricing(),
        launch_args=servers[0].get("argv", []) if servers else [],
    )
    target = config.get("target_rate")
    if target and result.theory:
        rho = float(config.get("target_utilization", 0.9))
        result.provisioning = Provisioning(
            basis=basis,
            target_rate=float(target),
            utilization=rho,
            replicas_theory=replicas_needed(target, result.theory.mu_replica, rho),
            replicas_measured=replicas_needed(target, lower / replicas, rho) if lower else None,
            replicas_engine_aware=(
                replicas_needed(target, result.theory.mu_engine_aware / replicas, rho)
                if result.theory.mu_engine_aware
                else None
            ),
        )

    boundary_series = []
    if result.boundary:
        # the probes either side: the fastest judged STABLE and the slowest judged UNSTABLE
        stable = [(p, x) for p, x in series if p.verdict == "STABLE"]
        unstable = [(p, x) for p, x in series if p.verdict == "UNSTABLE"]
        ends = []
        if stable:
            ends.append(max(stable, key=lambda px: px[0].rate))
        if unstable:
            ends.append(min(unstable, key=lambda px: px[0].rate))
        boundary_series = [
            ProbeSeries(result.label, result.kind, p.index, p.rate, p.verdict, x) for p, x in ends
        ]
    all_samples = [
        samples.assign(engine=result.label, kind=result.kind, probe=probe.index, rate=probe.rate)
        for probe, samples in series
    ]
    return result, boundary_series, all_samples


def build_report(directory: Path) -> Report:
    """Read a compare directory's raw files and compute every figure of its report."""
    import pandas as pd

    header, raw_engines = raw.read_compare(directory)
    config = dict(header.get("config", {}))
    engines, boundary_series, sample_frames = [], [], []
    for eng in raw_engines:
        result, series, frames = _engine(directory, eng, config)
        engines.append(result)
        boundary_series.extend(series)
        sample_frames.extend(frames)
    results = CompareResults(
        name=str(header["name"]),
        created=str(header["created"]),
        command=str(header["command"]),
        kvbench_version=str(header["kvbench_version"]),
        versions=dict(header.get("versions", {})),
        config=config,
        banner=header.get("banner"),
        engines=engines,
        interrupted=bool(header.get("interrupted", False))
        or any(e.status == "interrupted" for e in engines),
        warnings=list(header.get("warnings", [])),
        merged_from=list(header.get("merged_from", [])),
    )
    columns = ["engine", "kind", "probe", "rate", *SAMPLE_COLUMNS]
    samples = (
        pd.concat(sample_frames, ignore_index=True)[columns]
        if sample_frames
        else pd.DataFrame(columns=columns)
    )
    return Report(results, boundary_series, samples)
