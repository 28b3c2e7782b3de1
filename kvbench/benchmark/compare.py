"""Measure several engines' stability boundaries on one workload, side by side with theory.

For each engine, in turn: resolve its backend (launch from a recipe, attach by URL, or the
emulated/simulated engine), discover its profile, estimate b̄ from its own iteration timings
in a short saturating calibration run, evaluate the theory at that b̄, search the boundary
starting from the theory's μ, and close the backend. Everything is written to the compare
directory as it happens (kvbench/report/raw.py describes the files), so one engine failing, or a
Ctrl-C, loses nothing already measured; the report is built from those files afterwards.

This module measures; presentation (progress view, terminal summary) observes it through
`CompareObserver`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kvbench import __version__, theory
from kvbench.backends.base import (
    Backend,
    DiscoveredProfile,
    QueueSample,
    RequestRecord,
    RequestSpec,
)
from kvbench.backends.replicas import RoundRobinBackend
from kvbench.benchmark.batch_time import (
    CLIENT_SOURCE,
    MIN_TIMINGS,
    PROBE_SOURCE,
    BatchTimeEstimate,
    estimate_batch_time,
    saturated_decode_times,
)
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile, IterationTimeModel
from kvbench.report import raw
from kvbench.workload import Workload, load_workload

# A calibration burst holds this many KV caches' worth of requests, so that the engine runs full
# batches while about half of them wait.
CALIBRATION_FILL = 2.0
# What an engine name means with no --url and no --model: its simulated form, run in virtual time.
EMBEDDED_KIND = "sim"
# Long enough for one 16-token prompt and 2 output tokens on any engine that is up at all.
WARMUP_SECONDS = 60.0


@dataclass
class CompareConfig:
    backends: list[str]  # labels, e.g. ["trtllm", "sglang"], or explicit specs "sim:trtllm"
    workload: str = "pd-1:1"
    name: str | None = None
    urls: dict[str, list[str]] = field(default_factory=dict)
    model: str | None = None
    replicas: int = 1
    precision: float = 0.05
    confidence: float = 0.95
    max_engine_seconds: float | None = None
    seed: int = 0
    target_rate: float | None = None
    target_utilization: float = 0.9
    trim: float = 0.0
    output_root: Path = Path("reports")
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_root"] = str(self.output_root)
        return out


class CompareObserver(Protocol):
    """What a progress view is told; every method is optional to act on."""

    def engine_started(self, label: str, kind: str, index: int, total: int) -> None: ...

    def phase(self, label: str, what: str, rate: float | None, planned: float | None) -> None: ...

    def sample(self, label: str, sample: QueueSample) -> None: ...

    def probe_finished(self, label: str, rate: float, verdict: str) -> None: ...

    def engine_finished(self, label: str, status: str, error: str | None) -> None: ...


def slug(label: str) -> str:
    """A directory name for a user label: safe characters only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "engine"


def report_directory(config: CompareConfig, now: datetime) -> Path:
    name = config.name or "-vs-".join(slug(b) for b in config.backends)
    base = config.output_root / f"{now:%Y-%m-%d}-{slug(name)}"
    directory, n = base, 2
    while directory.exists():
        directory, n = base.with_name(f"{base.name}-{n}"), n + 1
    return directory


def calibration_requests(workload: Workload, kv_tokens: int, replicas: int, seed: int):
    """A burst at t = 0 of CALIBRATION_FILL KV caches' worth of requests (by mean footprint)."""
    prompts, outputs = workload.draw(4096, seed)
    footprint = float(np.mean(prompts + outputs))
    n = max(64, math.ceil(CALIBRATION_FILL * kv_tokens * replicas / footprint))
    prompts, outputs = workload.draw(n, seed)
    return [
        RequestSpec(request_id=i, intended_send=0.0, prompt_len=int(s), output_len=int(o))
        for i, (s, o) in enumerate(zip(prompts, outputs))
    ]


class _Engine:
    """The raw record of one engine (engine.json), rewritten after every step."""

    def __init__(self, directory: Path, asked: dict[str, Any]):
        self.directory = directory / raw.ENGINES_DIR / asked["slug"]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = dict(asked, status="running", error=None)
        self.save()

    def save(self) -> None:
        raw.write_json_atomic(self.directory / raw.ENGINE_FILE, self.data)

    def relative(self, path: Path, root: Path) -> str:
        return path.relative_to(root).as_posix()


def _theory(workload: Workload, profile: EngineProfile, batch_time: float, replicas: int) -> dict:
    """The paper's μ at the measured b̄, and the engine-aware μ.

    The engine-aware μ evaluates each bound's iteration time at its own operating point when the
    engine's iteration-time model is known (a simulated engine's profile carries it; a real
    engine's discovered profile does not) and falls back to the measured b̄ as a
    constant otherwise. The measured b̄ is the client's time per output token, which for an
    engine that runs prefill and decode as separate batches (SGLang) already includes the
    interleaved prefill iterations that the engine-aware model counts itself, so using it where
    the model is known would count them twice (−14% on the embedded default)."""
    paper = theory.evaluate(
        workload, kv_tokens=profile.kv_tokens, chunk_size=profile.chunk_size, batch_time=batch_time
    )
    known = profile.iteration_time.known
    model = profile.iteration_time if known else IterationTimeModel.constant(batch_time)
    aware = engine_aware_mu(profile, LengthLaw.from_workload(workload), iteration_model=model)
    return {
        "mean_g": paper.expected_g.mean,
        "delta": paper.delta,
        "mu_replica": paper.mu,
        "mu": replicas * paper.mu,
        "mu_lower": replicas * paper.mu_lower,
        "mu_engine_aware": replicas * aware.mu,
        "binding": aware.binding,
        "iteration_model": "engine profile" if known else "measured b̄ (constant)",
    }


class _Discard:
    """An event sink that keeps nothing (the warm-up request)."""

    def request(self, record: RequestRecord) -> None:
        pass

    def sample(self, sample: QueueSample) -> None:
        pass


class _Relay:
    """An event sink that shows queue samples to the observer (and passes events on to the
    recorder, when there is one)."""

    def __init__(self, recorder, observer: CompareObserver, label: str):
        self.recorder, self.observer, self.label = recorder, observer, label

    def request(self, record: RequestRecord) -> None:
        if self.recorder is not None:
            self.recorder.request(record)

    def sample(self, sample: QueueSample) -> None:
        if self.recorder is not None:
            self.recorder.sample(sample)
        self.observer.sample(self.label, sample)


def _calibrate(
    backend: Backend, engine: _Engine, root: Path, workload: Workload, profile, config, observer,
    label: str,
) -> BatchTimeEstimate:
    from kvbench.benchmark.recorder import RunRecorder, versions

    requests = calibration_requests(workload, profile.kv_tokens, config.replicas, config.seed)
    # long enough for every request to finish at a pessimistic 0.2 s per iteration is not
    # needed: the burst's saturated part is what counts, so bound it by the decode of ~3 waves
    duration = 3 * CALIBRATION_FILL * float(np.mean([r.output_len for r in requests])) * 0.2
    run_dir = engine.directory / "calibration"
    recorder = RunRecorder(
        run_dir,
        {"purpose": "calibration", "backend": backend.name, "kind": backend.kind,
         "workload": config.workload, "requests": len(requests), "burst": True,
         "versions": versions()},
    )
    observer.phase(label, "calibrating b̄ (saturating burst)", None, duration)
    started = time.monotonic()
    status, error = "completed", None
    try:
        backend.execute(requests, _Relay(recorder, observer, label), duration=duration)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except KvbenchError as err:
        status, error = "failed", str(err)
        raise
    finally:
        recorder.close(status, error)
    elapsed = _engine_seconds(backend, recorder.records, time.monotonic() - started)
    engine.data["calibration"] = {
        "run_dir": engine.relative(run_dir, root),
        "engine_seconds": elapsed,
        "requests": len(requests),
    }
    estimate = estimate_batch_time(
        saturated_decode_times(recorder.records), source=CLIENT_SOURCE, trim=config.trim
    )
    engine.data["batch_time"] = asdict(estimate)
    engine.save()
    return estimate


def _engine_seconds(backend: Backend, records: list[RequestRecord], wall: float) -> float:
    """Engine time a run took: virtual for a simulator (its last event), wall time otherwise."""
    if backend.kind == "simulated":
        times = [r.finished or r.first_token or r.sent or 0.0 for r in records]
        return float(max(times, default=0.0))
    return wall


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


def backend_spec(label: str, config: CompareConfig) -> str:
    """The backend a label stands for: `--url label=URL` attaches and `--model` launches the
    engine; with neither an engine name means its embedded form (EMBEDDED_KIND)."""
    if ":" in label or config.urls.get(label) or config.model:
        return label
    return f"{EMBEDDED_KIND}:{label}"


def replica_count(label: str, config: CompareConfig) -> int:
    urls = config.urls.get(label, [])
    return len(urls) if len(urls) > 1 else config.replicas


def open_backend(label: str, spec: str, config: CompareConfig) -> Backend:
    """Resolve the backend; several URLs become replicas behind a round-robin dispatcher."""
    from kvbench.backends.registry import resolve_backend

    urls = config.urls.get(label, [])
    if len(urls) > 1:
        return RoundRobinBackend([resolve_backend(spec, url=u, seed=config.seed) for u in urls])
    if urls:
        if config.replicas > 1:
            raise KvbenchError(
                f"{label}: --replicas {config.replicas} with one --url; give one --url per replica"
            )
        return resolve_backend(spec, url=urls[0], seed=config.seed)
    if config.model:
        if config.replicas > 1:
            raise KvbenchError(
                f"{label}: --replicas with --model; launch one server per GPU and give each "
                "with --url"
            )
        from kvbench.backends.engines import open_engine

        return open_engine(spec, model=config.model, seed=config.seed)
    return resolve_backend(spec, replicas=config.replicas, seed=config.seed)


def banner_for(kinds: set[str]) -> str | None:
    marked = sorted(k for k in kinds if k != "real")
    if not marked:
        return None
    what = " and ".join(k.upper() for k in marked)
    return (
        f"{what} engines: these figures come from kvbench's engine "
        f"{'simulator' if marked == ['simulated'] else 'emulators and simulator'} on this "
        "machine's CPU, not from GPU measurements. Give --url engine=URL or --model to measure "
        "real engines."
    )


def run_compare(config: CompareConfig, observer: CompareObserver) -> Path:
    """Measure every engine; return the compare directory (raw files only: build the report
    with kvbench.report.write_report). KeyboardInterrupt stops after saving what was measured,
    and the directory says so."""
    if not config.backends:
        raise KvbenchError("--backends needs at least one engine, e.g. --backends trtllm,sglang")
    workload = load_workload(config.workload)
    now = datetime.now(timezone.utc)
    directory = report_directory(config, now)
    directory.mkdir(parents=True)
    asked = []
    for i, label in enumerate(config.backends):
        spec = backend_spec(label, config)
        asked.append(
            {"label": label, "backend": spec, "kind": _expected_kind(spec),
             "replicas": replica_count(label, config), "urls": config.urls.get(label, []),
             "slug": f"{i}-{slug(label)}"}
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
        "banner": banner_for({a["kind"] for a in asked}),
        "interrupted": False,
        "engines": asked,
    }
    raw.write_json_atomic(directory / raw.COMPARE_FILE, header)

    for index, a in enumerate(asked):
        engine = _Engine(directory, a)
        observer.engine_started(a["label"], a["kind"], index, len(asked))
        backend = None
        try:
            backend = open_backend(a["label"], a["backend"], config)
            _measure(backend, engine, directory, workload, config, observer, a["label"])
            engine.data["status"] = "ok"
        except KeyboardInterrupt:
            engine.data["status"] = "interrupted"
            engine.data["error"] = "stopped by Ctrl-C; finished probes are kept"
            header["interrupted"] = True
        except KvbenchError as err:
            engine.data["status"], engine.data["error"] = "failed", str(err)
        finally:
            if backend is not None:
                engine.data["kind"] = backend.kind  # an attached server may be an emulator
                backend.close()
            engine.save()
            observer.engine_finished(a["label"], engine.data["status"], engine.data["error"])
        if header["interrupted"]:
            break
    # the banner states what actually ran (an attached server may turn out to be an emulator)
    kinds = set()
    for a in asked:
        path = directory / raw.ENGINES_DIR / a["slug"] / raw.ENGINE_FILE
        kinds.add(raw.read_json(path)["kind"] if path.is_file() else a["kind"])
    header["banner"] = banner_for(kinds)
    raw.write_json_atomic(directory / raw.COMPARE_FILE, header)
    return directory


def _expected_kind(spec: str) -> str:
    prefix = spec.split(":", 1)[0] if ":" in spec else ""
    return {"sim": "simulated", "emulate": "emulated"}.get(prefix, "real")


def _measure(
    backend: Backend,
    engine: _Engine,
    root: Path,
    workload: Workload,
    config: CompareConfig,
    observer: CompareObserver,
    label: str,
) -> None:
    observer.phase(label, "warm-up request", None, None)
    # one short request first: TensorRT-LLM publishes its KV-cache stats (and so M) only after
    # an iteration has run, and every engine's first request pays one-off start-up costs
    backend.execute([RequestSpec(0, 0.0, 16, 2)], _Discard(), duration=WARMUP_SECONDS)
    observer.phase(label, "discovering profile", None, None)
    discovered = backend.discover_profile()
    profile = discovered.profile
    engine.data["profile"] = asdict(profile)
    engine.data["profile_sources"] = dict(discovered.sources)
    engine.save()

    batch = _calibrate(backend, engine, root, workload, profile, config, observer, label)
    engine.data["theory"] = _theory(workload, profile, batch.value, engine.data["replicas"])
    engine.save()
    _search(backend, engine, root, workload, config, observer, label)
    saturated = _saturated_batch_time(engine, root, config)
    if saturated is not None:
        engine.data["batch_time_burst"] = engine.data["batch_time"]
        engine.data["batch_time"] = asdict(saturated)
        engine.data["theory"] = _theory(workload, profile, saturated.value, engine.data["replicas"])
        engine.save()


def _saturated_batch_time(
    engine: _Engine, root: Path, config: CompareConfig
) -> BatchTimeEstimate | None:
    """b̄ as the paper measured it: in the open-loop run nearest saturation (the slowest probe
    judged UNSTABLE, whose queue never drains after warm-up), rather than in the calibration
    burst, whose all-at-once arrivals make it more prefill-heavy than steady saturation.
    None when the search judged no probe UNSTABLE or the probe has too few timings."""
    from kvbench.benchmark.recorder import read_run
    from kvbench.benchmark.runner import summarize

    unstable = [p for p in engine.data["search"]["probes"] if p["verdict"] == "UNSTABLE"]
    if not unstable:
        return None
    probe = min(unstable, key=lambda p: p["rate"])
    run = read_run(root / probe["run_dir"])
    evidence = summarize(run.header, run.records, run.samples, status=run.status)["evidence"]
    timings = saturated_decode_times(run.records, after=(evidence or {}).get("warmup_end", 0.0))
    if timings.size < MIN_TIMINGS:
        return None
    return estimate_batch_time(
        timings, source=PROBE_SOURCE.format(rate=probe["rate"]), trim=config.trim
    )


class _MeasuredIterationTime(Backend):
    """A real engine's backend whose profile carries the b̄ compare measured: the search sizes
    its runs from the profile's iteration time, which an engine over HTTP does not report."""

    def __init__(self, backend: Backend, batch_time: float):
        self.backend, self.batch_time = backend, batch_time
        self.name, self.kind = backend.name, backend.kind
        self.replays_prefix = getattr(backend, "replays_prefix", False)

    def discover_profile(self) -> DiscoveredProfile:
        found = self.backend.discover_profile()
        if math.isfinite(found.profile.iteration_time.mean_time(0.0, 0.0)):
            return found
        sources = dict(found.sources, iteration_time="b̄ measured by kvbench compare")
        profile = found.profile.replace(
            iteration_time=IterationTimeModel.constant(self.batch_time)
        )
        return DiscoveredProfile(profile, sources)

    def execute(self, requests: list[RequestSpec], sink, *, duration: float) -> None:
        self.backend.execute(requests, sink, duration=duration)


def _search(
    backend: Backend,
    engine: _Engine,
    root: Path,
    workload: Workload,
    config: CompareConfig,
    observer: CompareObserver,
    label: str,
) -> None:
    """The boundary search from the theory's μ; each probe is recorded in engine.json as soon as
    it is judged, so an interrupted search keeps its finished probes."""
    from kvbench.benchmark.search import DEFAULT_MAX_ENGINE_SECONDS, find_boundary

    search: dict[str, Any] = {
        "lower": None, "upper": None, "precision": config.precision, "converged": False,
        "engine_seconds": 0.0, "probes": [],
    }
    engine.data["search"] = search

    measured = _MeasuredIterationTime(backend, engine.data["batch_time"]["value"])

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
                "engine_seconds": probe.engine_seconds,
                "verdict": probe.verdict,
                "extensions": probe.extensions,
                "run_dir": engine.relative(Path(probe.run_dir), root),
            }
        )
        stable = [p["rate"] for p in search["probes"] if p["verdict"] == "STABLE"]
        unstable = [p["rate"] for p in search["probes"] if p["verdict"] == "UNSTABLE"]
        search["lower"] = max(stable, default=None)
        search["upper"] = min((r for r in unstable if r > (search["lower"] or 0)), default=None)
        search["engine_seconds"] = sum(p["engine_seconds"] for p in search["probes"])
        engine.save()
        observer.probe_finished(label, probe.rate, probe.verdict)

    result = find_boundary(
        backend_for_seed,
        workload,
        config.workload,
        precision=config.precision,
        confidence=config.confidence,
        max_engine_seconds=config.max_engine_seconds or DEFAULT_MAX_ENGINE_SECONDS,
        seed=config.seed,
        # the engine-aware μ is the closer guess when there is one; the search overloads it first
        start_rate=engine.data["theory"]["mu_engine_aware"] or engine.data["theory"]["mu"],
        on_probe=on_probe,
        on_probe_start=on_probe_start,
        output=engine.directory,
        progress=_Relay(None, observer, label),
        replicas=engine.data["replicas"],
    )
    search.update(lower=result.lower, upper=result.upper, converged=result.reached,
                  engine_seconds=result.engine_seconds, stop_reason=result.stop_reason)
    engine.save()
