"""Measure several engines' stability boundaries on one workload, side by side with theory.

For each engine, in turn: resolve its backend (launch from a recipe, attach by URL, start
kvbench's emulator of it, or the simulated engine), discover its profile, estimate b̄ from its
own iteration timings in a short saturating calibration run, evaluate the theory at that b̄
(measured_theory), search the boundary starting from the theory's μ (compare_search), and close
the backend. Everything is written to the compare directory as it happens (kvbench/benchmark/
raw.py describes the files), so one engine failing, or a Ctrl-C, loses nothing already
measured; the report is built from those files afterwards. What is asked, and what each label
stands for, is compare_config's.

This module measures; presentation (progress view, terminal summary) observes it through
`CompareObserver`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from kvbench import __version__, interrupt, provenance
from kvbench.backends import settings
from kvbench.backends.base import Backend, QueueSample
from kvbench.backends.launch import launched_servers
from kvbench.benchmark import raw
from kvbench.benchmark import resume as resume_compare
from kvbench.benchmark.batch_time import BatchTimeEstimate
from kvbench.benchmark.burst import (
    burst_duration,
    calibration_requests,
    run_burst,
    warm_up,
)
from kvbench.benchmark.compare_config import (
    CompareConfig,
    CompareObserver,
    ObserverRelay,
    backend_spec,
    banner_for,
    open_backend,
    replica_count,
    slug,
)
from kvbench.benchmark.compare_ray import measure_on_ray, placement_session
from kvbench.benchmark.compare_search import saturated_run, search
from kvbench.benchmark.measured_theory import (
    reported_iterations_fit,
    saturated_batch_time,
    theory_beside,
    warmup_end,
)
from kvbench.benchmark.raw import EngineRecord
from kvbench.benchmark.recorder import RunRecorder, versions
from kvbench.benchmark.separate_batches import SOURCE as SEPARATE_SOURCE
from kvbench.benchmark.separate_batches import separate_batch_times
from kvbench.errors import KvbenchError
from kvbench.redact import redact_url
from kvbench.workload import Workload, load_workload


def report_directory(config: CompareConfig, now: datetime) -> Path:
    name = config.name or "-vs-".join(slug(b) for b in config.backends)
    base = config.output_root / f"{now:%Y-%m-%d}-{slug(name)}"
    directory, n = base, 2
    while directory.exists():
        directory, n = base.with_name(f"{base.name}-{n}"), n + 1
    return directory


def _calibrate(
    backend: Backend,
    engine: EngineRecord,
    root: Path,
    workload: Workload,
    profile,
    config,
    observer,
    label: str,
) -> tuple[BatchTimeEstimate, list[QueueSample]]:
    """b̄ from a saturating burst, and the engine's gauges during it."""
    requests = calibration_requests(workload, profile.kv_tokens, config.replicas, config.seed)
    run_dir = engine.directory / "calibration"
    recorder = RunRecorder(
        run_dir,
        {
            "purpose": "calibration",
            "backend": backend.name,
            "kind": backend.kind,
            "workload": config.workload,
            "requests": len(requests),
            "burst": True,
            "versions": versions(),
            "provenance": engine.data.get("provenance"),
        },
    )
    observer.phase(label, "calibrating b̄ (saturating burst)", None, burst_duration(requests))
    status, error = "completed", None
    try:
        burst = run_burst(
            backend,
            workload,
            profile,
            replicas=config.replicas,
            seed=config.seed,
            trim=config.trim,
            sink=ObserverRelay(recorder, observer, label),
        )
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except KvbenchError as err:
        status, error = "failed", str(err)
        raise
    finally:
        recorder.close(status, error)
    engine.data["calibration"] = {
        "run_dir": engine.relative(run_dir, root),
        "engine_seconds": burst.engine_seconds,
        "requests": burst.requests,
        "throughput": burst.throughput,
    }
    engine.data["batch_time"] = asdict(burst.estimate)
    engine.save()
    return burst.estimate, recorder.samples


def _versions() -> dict[str, str]:
    import platform

    import plotly

    return {
        "kvbench": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "plotly": plotly.__version__,
    }


def run_compare(
    config: CompareConfig, observer: CompareObserver, resume: Path | None = None
) -> Path:
    """Measure every engine; return the compare directory (raw files only: build the report
    with kvbench.export.compare_report.write_report). KeyboardInterrupt stops after saving what was measured,
    and the directory says so. `resume`: the directory of an interrupted comparison of the same
    configuration to continue (kvbench.benchmark.resume)."""
    config.check()
    config = config.with_defaults()
    config.check_launch()
    if config.ray is None:
        return _run_compare(config, observer, resume)
    if resume is not None:
        raise KvbenchError(
            "--resume continues a comparison here; with --ray each engine is measured afresh on "
            "its node, so start a new comparison"
        )
    with placement_session(config.ray):
        return _run_compare(config, observer, None)


def _run_compare(config: CompareConfig, observer: CompareObserver, resume: Path | None) -> Path:
    assert config.workload is not None  # with_defaults filled it
    workload = load_workload(config.workload)
    if config.replay:
        from kvbench.benchmark.runner import replay_rate

        replay_rate(workload)  # a trace that cannot be replayed fails before any engine starts
    if resume is None:
        directory, header = _create(config)
    else:
        directory = resume
        header = resume_compare.reopen(directory, config.to_json(), config.command)
    asked = header["engines"]
    todo = []
    for index, a in enumerate(asked):
        previous = resume_compare.previous_engine(directory, a) if resume else None
        if previous is not None and previous["status"] in resume_compare.FINISHED:
            observer.engine_started(a["label"], a["kind"], index, len(asked))
            observer.engine_finished(a["label"], previous["status"], previous["error"])
        else:
            todo.append((index, a, previous))
    measure = partial(measure_engine, config=config, workload=workload)
    if config.ray is not None:
        header["interrupted"] = measure_on_ray(
            directory, header, [a for _, a, _ in todo], config.ray, measure, observer
        )
    else:
        for index, a, previous in todo:
            observer.engine_started(a["label"], a["kind"], index, len(asked))
            if measure(directory, a, observer, previous=previous):
                header["interrupted"] = True
                break
    # the banner states what actually ran (an attached server may turn out to be an emulator)
    kinds: set[str] = set()
    scales: set[float] = set()
    for a in asked:
        path = directory / raw.ENGINES_DIR / a["slug"] / raw.ENGINE_FILE
        data = raw.read_json(path) if path.is_file() else a
        kinds.add(data["kind"])
        if data["kind"] == "emulated" and data.get("time_scale") is not None:
            scales.add(data["time_scale"])
    header["banner"] = banner_for(kinds, scales)
    raw.write_json_atomic(directory / raw.COMPARE_FILE, header)
    return directory


class _Silent:
    """The observer of an engine measured where nobody watches (a Ray node)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def measure_engine(
    directory: Path,
    a: dict[str, Any],
    observer: CompareObserver | None,
    *,
    config: CompareConfig,
    workload: Workload,
    previous: dict[str, Any] | None = None,
) -> bool:
    """Open and measure one engine of the comparison at `directory` (its entry `a` of
    compare.json), recording everything in its engine.json; whether it was interrupted.
    `previous`: its record from an interrupted comparison being resumed."""
    observer = observer or cast(CompareObserver, _Silent())
    engine = EngineRecord(directory, a, previous)
    if previous is not None:
        resume_compare.set_aside(engine.directory, previous)
    backend = None
    interrupted = False
    try:
        backend = open_backend(a["label"], a["backend"], config, engine.directory / "server")
        engine.data["time_scale"] = backend.time_scale
        engine.data["servers"] = _servers(backend, directory)
        engine.data["provenance"] = provenance.for_backend(
            backend, a["backend"], metadata=config.metadata, gpu_exporter=config.gpu_exporter
        )
        engine.save()
        _measure(backend, engine, directory, workload, config, observer, a["label"])
        engine.data["status"] = "ok"
    except KeyboardInterrupt:
        engine.data["status"] = "interrupted"
        engine.data["error"] = f"stopped by {interrupt.stopped_by()}; finished probes are kept"
        interrupted = True
    except KvbenchError as err:
        engine.data["status"], engine.data["error"] = "failed", str(err)
    finally:
        if backend is not None:
            engine.data["kind"] = backend.kind  # an attached server may be an emulator
            engine.data["notes"] = list(getattr(backend, "notes", []))
            backend.close()
        engine.save()
        observer.engine_finished(a["label"], engine.data["status"], engine.data["error"])
    return interrupted


def _create(config: CompareConfig) -> tuple[Path, dict[str, Any]]:
    """A new compare directory and its compare.json."""
    now = datetime.now(UTC)
    directory = report_directory(config, now)
    try:
        directory.mkdir(parents=True)
    except OSError as err:
        raise KvbenchError(
            f"{directory}: cannot create the report directory: {err.strerror or err}"
        ) from None
    asked: list[dict[str, Any]] = []
    for i, label in enumerate(config.backends):
        spec = backend_spec(label, config)
        asked.append(
            {
                "label": label,
                "backend": spec,
                "kind": _expected_kind(spec),
                "replicas": replica_count(label, config),
                "urls": [redact_url(u) for u in config.urls.get(label, [])],
                "slug": f"{i}-{slug(label)}",
                # what this engine's probes are judged against and priced at: a merged report
                # keeps each machine's own (kvbench report merge)
                "slo": None if config.slo is None else config.slo.to_dict(),
                "percentiles": list(config.percentiles),
                "pricing": asdict(config.pricing),
                **(
                    {"engine_launch": options.record()} if (options := config.launch(label)) else {}
                ),
            }
        )
    header = {
        "kind": raw.RAW_KIND,
        "version": raw.RAW_VERSION,
        "name": config.name or " vs ".join(config.backends),
        "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": config.command,
        "kvbench_version": __version__,
        "versions": _versions(),
        "config": config.to_json(),
        "banner": banner_for(
            {a["kind"] for a in asked}, {config.time_scale} if config.time_scale else set()
        ),
        "interrupted": False,
        "engines": asked,
    }
    raw.write_json_atomic(directory / raw.COMPARE_FILE, header)
    return directory, header


def _servers(backend: Backend, root: Path) -> list[dict[str, Any]]:
    """The server processes kvbench started for this backend (one per replica): pid, URL,
    command line and environment (credentials redacted), and log (relative to the compare
    directory when it is inside it)."""
    found = []
    for server in launched_servers(backend):
        log = server.log_path
        if log.is_relative_to(root):
            log = log.relative_to(root)
        found.append({**server.record(), "log": log.as_posix()})
    return found


def _expected_kind(spec: str) -> str:
    prefix = spec.split(":", 1)[0] if ":" in spec else ""
    return {"sim": "simulated", "emulate": "emulated"}.get(prefix, "real")


def _measure(
    backend: Backend,
    engine: EngineRecord,
    root: Path,
    workload: Workload,
    config: CompareConfig,
    observer: CompareObserver,
    label: str,
) -> None:
    observer.phase(label, "warm-up request", None, None)
    # one short request first: TensorRT-LLM publishes its KV-cache stats (and so M) only after
    # an iteration has run, and every engine's first request pays one-off start-up costs
    warm_up(backend)
    observer.phase(label, "discovering profile", None, None)
    given = settings.for_label(settings.parse_given(config.engine_settings), label)
    discovered = settings.apply_given(backend.discover_profile(), given)
    profile = discovered.profile
    _record_profile(engine, discovered)

    if resume_compare.calibrated(engine.data):
        # resuming: the burst ran before the interruption; its b̄ and gauges are read back
        batch, burst_samples = resume_compare.calibration(root, engine.data)
    else:
        batch, burst_samples = _calibrate(
            backend, engine, root, workload, profile, config, observer, label
        )
    # A running cap that no endpoint exposes shows in the gauges of a saturated engine: first in
    # the calibration burst's, before the theory sets where the search starts (with vLLM's
    # assumed 256 against a real 4, the first probe went in 25 times over the boundary), then in
    # the slowest overloaded probe's.
    discovered, flags = settings.check_running_cap(
        discovered, settings.pinned_running(burst_samples), "the calibration burst"
    )
    _record_profile(engine, discovered, flags)
    profile = discovered.profile
    engine.data["theory"] = theory_beside(workload, profile, batch.value, engine.data["replicas"])
    engine.save()
    backlog = search(backend, engine, root, workload, config, observer, label, given)
    if backlog is not None:
        # the bounded-backlog probe: the engine saturated throughout, its requests recorded
        records, after = backlog
        where = "the bounded-backlog probe"
    else:
        saturated = saturated_run(engine, root)
        if saturated is None:
            return
        run, probe = saturated
        discovered, more = settings.check_running_cap(
            discovered,
            settings.pinned_running(run.samples),
            f"the probe at {probe['rate']:.4g} req/s",
        )
        _record_profile(engine, discovered, [*flags, *more])
        # a client that fell behind read its streams late, bunching their tokens: its b̄ is not
        # the engine's (an UNSTABLE verdict stands without it: kvbench.benchmark.runner)
        records = run.records if probe.get("client_kept_schedule", True) else []
        after = warmup_end(run)
        where = f"the overloaded probe at λ = {probe['rate']:.3f} req/s"
    b = saturated_batch_time(records, after, where, config.trim) or BatchTimeEstimate(
        **engine.data["batch_time"]
    )
    if b.source != engine.data["batch_time"]["source"]:
        engine.data["batch_time_burst"] = engine.data["batch_time"]
        engine.data["batch_time"] = asdict(b)
    separate = None
    # first tokens of replicas behind round-robin interleave: one engine's batches only
    if discovered.profile.separate_prefill_decode and engine.data["replicas"] == 1:
        separate = separate_batch_times(
            records, after=after, source=SEPARATE_SOURCE.format(where=where)
        )
    if separate is not None:
        engine.data["separate_batch_times"] = asdict(separate)
    fit = reported_iterations_fit(backend)
    if fit is not None:
        engine.data["iteration_fit"] = fit.to_json()
    engine.data["theory"] = theory_beside(
        workload,
        discovered.profile,
        b.value,
        engine.data["replicas"],
        separate,
        fit,
        (engine.data.get("engine_iteration_time") or {}).get("value"),
    )
    engine.save()


def _record_profile(engine: EngineRecord, found, flags: Iterable[str] = ()) -> None:
    """The profile, where each value came from, and each setting as read, given, inferred or
    assumed, with the contradictions the measurements showed."""
    engine.data["profile"] = asdict(found.profile)
    engine.data["profile_sources"] = dict(found.sources)
    engine.data["settings"] = settings.table(found)
    engine.data["settings_flags"] = list(flags)
    engine.save()
