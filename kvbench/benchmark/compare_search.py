"""Compare's boundary search for one engine, from where the theory puts it: the bounded-backlog
probe by default (its interval narrowing shown as it goes, with --confirm open-loop verdicts
either side), or open-loop probes; every probe and the outcome recorded in engine.json as they
come, so an interrupted search keeps what it judged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvbench.backends.amended import AmendedProfile
from kvbench.backends.base import Backend, RequestRecord
from kvbench.benchmark import resume as resume_compare
from kvbench.benchmark.compare_config import (
    CompareConfig,
    CompareObserver,
    ObserverRelay,
    open_backend,
)
from kvbench.benchmark.raw import EngineRecord
from kvbench.benchmark.recorder import read_run
from kvbench.benchmark.search import BoundaryResult, Probe
from kvbench.errors import KvbenchError
from kvbench.workload import Workload


def start_rate(data: dict[str, Any]) -> float:
    """Where the search starts (it overloads this first): the engine-aware μ, or the capacity
    the calibration burst showed when that is higher. An overloaded probe measures the capacity
    whatever the overload, while every probe that comes back STABLE below the boundary costs a
    whole probe; and with a measured constant b̄ the engine-aware μ undershoots an engine that
    runs prefill and decode as separate batches (SGLang: b̄ already holds the prefill batches
    the model counts again)."""
    theory_mu = data["theory"]["mu_engine_aware"] or data["theory"]["mu"]
    burst = data["calibration"].get("throughput") or 0.0
    if burst <= 0:
        return theory_mu
    # ...but not past twice what the burst completed: the burst is all-at-once arrivals, which
    # carry less than steady saturation, not half as much. A b̄ from token times a starved client
    # read in bunches (0.19 ms for an engine that takes 13 ms) put the theory at 2,770 req/s and
    # the first probe at 3,464, over a boundary near 160 that the burst's 150 req/s had shown.
    return min(max(theory_mu, burst), 2.0 * burst)


def saturated_run(engine: EngineRecord, root: Path):
    """The open-loop run nearest saturation (the slowest probe judged UNSTABLE, whose queue never
    drains after warm-up) and its probe; None when the search judged no probe UNSTABLE."""
    unstable = [p for p in engine.data["search"]["probes"] if p["verdict"] == "UNSTABLE"]
    if not unstable:
        return None
    probe = min(unstable, key=lambda p: p["rate"])
    return read_run(root / probe["run_dir"]), probe


def _backlog_search(
    measured: AmendedProfile,
    engine: EngineRecord,
    workload: Workload,
    config: CompareConfig,
    observer: CompareObserver,
    label: str,
    budget: float,
    backend_for_seed: Callable[[int], Backend],
) -> tuple[list[RequestRecord], float]:
    """The bounded-backlog probe (kvbench.benchmark.saturated_rate) as compare's search: the
    engine saturated from its first seconds with K requests kept waiting, its service rate
    estimated from served work until the interval is as narrow as --precision asks (the
    progress view shows it narrowing); with --confirm, open-loop verdicts just below and above
    the bracket (in search.confirmed). Returns the probe's requests (an engine over HTTP records
    them; a simulator's probe does not) and where its steady window began."""
    from kvbench.benchmark.saturated_rate import measure_saturated_rate

    assert config.workload is not None and config.precision is not None  # with_defaults

    def on_look(t: float, est) -> None:
        what = "bounded-backlog probe, no interval yet"
        if est is not None:
            what = (
                f"bounded-backlog probe: {est.lo:.4g} – {est.hi:.4g} req/s, "
                f"{est.width:.1%} wide ({config.precision:.0%} asked)"
            )
        observer.phase(label, what, None, None)

    confirmed: list[dict[str, Any]] = []

    def on_probe(probe: Probe) -> None:
        confirmed.append(
            {
                "rate": probe.rate,
                "expected": "STABLE" if not confirmed else "UNSTABLE",
                "verdict": probe.verdict,
                "engine_seconds": probe.engine_seconds,
            }
        )
        expected = confirmed[-1]["expected"]
        observer.phase(
            label,
            f"open-loop confirmation at {probe.rate:.4g} req/s: {probe.verdict} "
            f"(expected {expected})",
            None,
            None,
        )

    result = measure_saturated_rate(
        measured,
        workload,
        config.workload,
        precision=config.precision,
        confidence=config.confidence,
        max_engine_seconds=budget,
        seed=config.seed,
        start_rate=start_rate(engine.data),
        replicas=engine.data["replicas"],
        on_look=on_look,
        confirm=config.confirm,
        confirm_backend=backend_for_seed,
        on_probe=on_probe,
    )
    _record_search(
        engine, result, backlog=result.extras, confirmed=confirmed if config.confirm else None
    )
    run = measured.backlog_run
    records = getattr(run, "records", None) or []
    after = float(result.extras.get("warmup", 0.0))
    iteration = None if run is None else run.iteration_time(after)
    if iteration is not None:
        engine.data["engine_iteration_time"] = {
            "value": iteration,
            "source": "the engine's iteration count over the bounded-backlog probe's steady "
            "window (vllm:iteration_tokens_total)",
        }
    return records, after


def search(
    backend: Backend,
    engine: EngineRecord,
    root: Path,
    workload: Workload,
    config: CompareConfig,
    observer: CompareObserver,
    label: str,
    given: dict[str, int],
) -> tuple[list[RequestRecord], float] | None:
    """The boundary search from the theory's μ: the bounded-backlog probe (`_backlog_search`,
    whose requests and warm-up end it returns), or open-loop probes, each recorded in
    engine.json as soon as it is judged, so an interrupted search keeps its finished probes
    (None)."""
    from kvbench.benchmark.search import DEFAULT_MAX_ENGINE_SECONDS, find_boundary

    # a resumed search replays the probes judged before it was interrupted
    resumed = resume_compare.replayed_probes(root, engine.data)
    search: dict[str, Any] = {
        "lower": None,
        "upper": None,
        "precision": config.precision,
        "converged": False,
        "engine_seconds": 0.0,
        "probes": [],
    }
    engine.data["search"] = search

    measured = AmendedProfile(
        backend,
        batch_time=engine.data["batch_time"]["value"],
        batch_source="b̄ measured by kvbench compare",
        settings=given,
    )

    def backend_for_seed(seed: int) -> Backend:
        # a simulator draws its iteration-time noise from the seed: one per probe; a server is
        # the same server for every probe
        if backend.kind == "simulated" and seed != config.seed:
            return open_backend(label, engine.data["backend"], replace(config, seed=seed))
        return measured

    def on_probe_start(rate: float, duration: float) -> None:
        observer.phase(label, "probe", rate, duration)

    def on_probe(probe) -> None:
        search["probes"].append(
            {
                "index": len(search["probes"]),
                "rate": probe.rate,
                "carried_rate": probe.carried_rate,  # what a STABLE verdict counts for
                "engine_seconds": probe.engine_seconds,
                "verdict": probe.verdict,
                "over_limit": probe.over_limit,
                "client_kept_schedule": probe.client_kept_schedule,
                "extensions": probe.extensions,
                "run_dir": engine.relative(Path(probe.run_dir), root),
            }
        )
        stable = [p["carried_rate"] for p in search["probes"] if p["verdict"] == "STABLE"]
        unstable = [p["rate"] for p in search["probes"] if p["over_limit"]]
        search["lower"] = max(stable, default=None)
        search["upper"] = min((r for r in unstable if r > (search["lower"] or 0)), default=None)
        search["engine_seconds"] = sum(p["engine_seconds"] for p in search["probes"])
        engine.save()
        observer.probe_finished(label, probe.rate, probe.verdict, search["engine_seconds"], budget)

    assert config.workload is not None and config.precision is not None  # with_defaults
    budget = config.max_engine_seconds or DEFAULT_MAX_ENGINE_SECONDS
    method = config.method or (
        "open-loop" if config.slo is not None or config.replay or resumed else "backlog"
    )
    if method == "backlog" and not measured.has_backlog_probe:
        if config.method == "backlog":
            raise KvbenchError(f"{label}: {measured.name} cannot run the bounded-backlog probe")
        method = "open-loop"
    search["method"] = method
    if method == "backlog":
        return _backlog_search(
            measured, engine, workload, config, observer, label, budget, backend_for_seed
        )
    if config.confirm:
        raise KvbenchError(f"{label}: --confirm goes with the bounded-backlog probe, not {method}")
    result = find_boundary(
        backend_for_seed,
        workload,
        config.workload,
        precision=config.precision,
        confidence=config.confidence,
        max_engine_seconds=budget,
        seed=config.seed,
        start_rate=start_rate(engine.data),
        on_probe=on_probe,
        on_probe_start=on_probe_start,
        output=engine.directory,
        progress=ObserverRelay(None, observer, label),
        replicas=engine.data["replicas"],
        replay=config.replay,
        slo=config.slo,
        percentiles=config.percentiles,
        resumed=resumed,
    )
    _record_search(engine, result)
    return None


def _record_search(engine: EngineRecord, result: BoundaryResult, **more: Any) -> None:
    """The search's outcome into engine.json, beside its probes."""
    engine.data["search"].update(
        lower=result.lower,
        upper=result.upper,
        converged=result.reached,
        engine_seconds=result.engine_seconds,
        stop_reason=result.stop_reason,
        **more,
    )
    engine.save()
