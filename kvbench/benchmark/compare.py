"""Measure several engines' stability boundaries on one workload, side by side with theory.

For each engine, in turn: resolve its backend (launch from a recipe, attach by URL, start
kvbench's emulator of it, or the simulated engine), discover its profile, estimate b̄ from its own iteration timings
in a short saturating calibration run, evaluate the theory at that b̄, search the boundary
starting from the theory's μ, and close the backend. Everything is written to the compare
directory as it happens (kvbench/benchmark/raw.py describes the files), so one engine failing, or a
Ctrl-C, loses nothing already measured; the report is built from those files afterwards.

This module measures; presentation (progress view, terminal summary) observes it through
`CompareObserver`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from kvbench import __version__, interrupt, provenance, validate
from kvbench.backends import settings
from kvbench.backends.amended import AmendedProfile
from kvbench.backends.base import (
    Backend,
    QueueSample,
    RequestRecord,
)
from kvbench.backends.launch import LaunchOptions, launched_servers
from kvbench.backends.replicas import RoundRobinBackend
from kvbench.benchmark import raw
from kvbench.benchmark import resume as resume_compare
from kvbench.benchmark.batch_time import (
    BatchTimeEstimate,
    check_trim,
)
from kvbench.benchmark.burst import (
    burst_duration,
    calibration_requests,
    run_burst,
    warm_up,
)
from kvbench.benchmark.compare_ray import RayPlacement, measure_on_ray, placement_session
from kvbench.benchmark.measured_theory import (
    reported_iterations_fit,
    saturated_batch_time,
    theory_beside,
    warmup_end,
)
from kvbench.benchmark.recorder import RunRecorder, read_run, versions
from kvbench.benchmark.search import (
    DEFAULT_PRECISION,
    BoundaryResult,
    Probe,
    check_search_settings,
)
from kvbench.benchmark.separate_batches import SOURCE as SEPARATE_SOURCE
from kvbench.benchmark.separate_batches import separate_batch_times
from kvbench.benchmark.slo import DEFAULT_PERCENTILES, Slo
from kvbench.cost import Pricing
from kvbench.errors import KvbenchError
from kvbench.redact import redact_url
from kvbench.workload import Workload, load_workload

# What an engine name means with no --url and no --launch: kvbench's emulator of the engine,
# started as a child process and measured over HTTP like a real engine.
EMBEDDED_KIND = "emulate"


@dataclass(frozen=True)
class EmbeddedDefault:
    """What `kvbench compare --backends trtllm,sglang` measures with no --url, no --launch and no
    --workload: each engine's emulator (its scheduler in kvbench's simulator, behind the engine's
    own HTTP API) on a scaled-down version of the paper's 1:1 setting, so that the whole
    comparison takes about a minute of a laptop's CPU while every figure is still measured
    through the real path (HTTP, streaming, scraped engine state, statistical verdicts).

    Why these levers, and not others: the emulator streams one chunk per output token in Python,
    and each request costs ~1 ms of CPU in the emulator and again in the client, so the work a
    comparison can afford is counted in requests and tokens, not engine-seconds. Short requests
    (s, o ~ U{1..32}) and a KV cache of 2,048 tokens keep ~40–80 requests in each engine (δ =
    max(s+o)/M = 3%, the paper's order of magnitude) and a request's life to ~17 iterations, so
    a probe of 20 lives is ~1,000 requests. The A100 iteration-time model is kept, so every
    figure stays in that engine's seconds; `time_scale` runs the emulated engine at that many
    engine seconds per real second, chosen to keep the emulator and client well under a core
    (queueing in the emulator's own process would look like engine queueing). The default
    `vidur-a100-llama3-8b` model runs these small batches about twice as fast as the earlier
    illustrative one did at 2.5, so 1.25 keeps the real request rate where it was: at 2.5 the whole
    comparison used 0.75 of a core on average (38 s of CPU in 51 s) on a 2-core VM, and its
    brackets overlapped `sim:`'s, also with another process holding a core (109 s then). The client
    converts its clock to the engine's, so rates, b̄ and lengths are the emulated engine's and
    can be set beside the theory and `sim:` (the same configuration simulated) unchanged."""

    workload: str = "uniform:1-32,1-32"
    kv_tokens: int = 2048
    time_scale: float = 1.25
    # a bracket 10% wide: each halving of the width costs about as much as the search so far
    precision: float = 0.10


EMBEDDED = EmbeddedDefault()
REAL_ENGINE_WORKLOAD = "pd-1:1"


@dataclass
class CompareConfig:
    backends: list[str]  # labels, e.g. ["trtllm", "sglang"], or explicit specs "sim:trtllm"
    workload: str | None = None  # None: see with_defaults
    kv_tokens: int | None = None  # emulated and simulated engines' M (None: see with_defaults)
    time_scale: float | None = None  # emulated engines' engine seconds per real second
    name: str | None = None
    urls: dict[str, list[str]] = field(default_factory=dict)
    launch_model: str | None = None  # --launch MODEL_PATH: launch each engine from its recipe
    served_model: str | None = None  # --model NAME: the model named in requests
    # sent on every request to an HTTP engine; only the names are ever recorded
    headers: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    precision: float | None = None  # None: EMBEDDED.precision in the embedded default, else 0.05
    confidence: float = 0.95
    max_engine_seconds: float | None = None
    seed: int = 0
    target_rate: float | None = None
    target_utilization: float = 0.9
    trim: float = 0.0
    output_root: Path = Path("reports")
    command: str = ""
    # LABEL=ENGINE in --backends: what each label runs (a label absent here names its engine)
    engines: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)  # --metadata KEY=VALUE
    gpu_exporter: str | None = None
    # --engine-python, --engine-arg, --engine-env as given, each maybe prefixed ENGINE=
    engine_python: list[str] = field(default_factory=list)
    engine_args: list[str] = field(default_factory=list)
    engine_env: list[str] = field(default_factory=list)
    # --replay: every probe sends the trace's rows at its own timestamps, scaled to its rate
    replay: bool = False
    # --engine-setting as given: [LABEL:]KEY=VALUE
    engine_settings: list[str] = field(default_factory=list)
    # latency targets judged on every probe, and the percentiles reported (kvbench/benchmark/slo)
    slo: Slo | None = None
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    pricing: Pricing = field(default_factory=Pricing)  # --gpu-price, --gpus-per-replica
    # --ray: each engine measured as a Ray task on a node with its GPUs (compare_ray)
    ray: RayPlacement | None = None
    # --method: "backlog" or "open-loop"; None: the bounded-backlog probe wherever the engine
    # runs it, open-loop probes with --slo or --replay (latencies and a trace's timing are
    # judged on open-loop runs) and when resuming an open-loop search
    method: str | None = None
    # --confirm: open-loop verdict probes just below and above a bounded-backlog bracket
    confirm: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_root"] = str(self.output_root)
        out["urls"] = {k: [redact_url(u) for u in v] for k, v in self.urls.items()}
        out["headers"] = sorted(self.headers)  # names only: values may be credentials
        for key in ("engine_python", "engine_args", "engine_env"):
            del out[key]
        out["engine_launch"] = {
            label: options.record() for label in self.backends if (options := self.launch(label))
        }
        return out

    def launch(self, label: str) -> LaunchOptions:
        """What --engine-python, --engine-arg and --engine-env give the engine `label`."""
        return LaunchOptions.for_engine(
            label, self.backends, self.engine_python, self.engine_args, self.engine_env
        )

    def check_launch(self) -> None:
        """Refuse launch options that cannot apply, before anything is measured."""
        for label in self.backends:
            if self.launch(label) and (
                self.launch_model is None or ":" in label or label in self.urls
            ):
                raise KvbenchError(
                    f"{label}: --engine-python, --engine-arg and --engine-env apply to engines "
                    "kvbench launches (--launch)"
                )

    @property
    def measures_real_engines(self) -> bool:
        return bool(self.urls) or self.launch_model is not None

    def with_defaults(self) -> CompareConfig:
        """The configuration with its defaults filled in. With no real engine and no --workload,
        the embedded default (EMBEDDED: its workload, M and time scale) applies as a whole;
        otherwise the workload is the paper's pd-1:1, emulated and simulated engines take their
        preset's M, and emulators run in real time, unless given."""
        embedded = self.workload is None and not self.measures_real_engines

        def given(value, default):
            return default if value is None else value

        return replace(
            self,
            workload=given(self.workload, EMBEDDED.workload if embedded else REAL_ENGINE_WORKLOAD),
            kv_tokens=given(self.kv_tokens, EMBEDDED.kv_tokens if embedded else None),
            time_scale=given(self.time_scale, EMBEDDED.time_scale if embedded else None),
            precision=given(self.precision, EMBEDDED.precision if embedded else DEFAULT_PRECISION),
        )

    def check(self) -> None:
        """Every setting, checked before anything is measured or written: a bad one is a
        one-line KvbenchError (exit 2), never an engine row FAILED after minutes of work."""
        from kvbench.backends.registry import backend_names

        if not self.backends:
            raise KvbenchError(
                "--backends needs at least one engine, e.g. --backends trtllm,sglang"
            )
        known = backend_names()
        for label in self.backends:
            if backend_spec(label, self) not in known:
                raise KvbenchError(
                    f"unknown backend {label!r} in --backends; choose from trtllm, sglang, "
                    f"vllm or one of {', '.join(n for n in known if ':' in n)}"
                )
        if self.served_model is not None and not self.measures_real_engines:
            raise KvbenchError(
                "--model names the model served by a real engine (--url or --launch); the "
                "emulated and simulated engines serve their own"
            )
        unknown = set(self.urls) - set(self.backends)
        if unknown:
            raise KvbenchError(f"--url names {', '.join(sorted(unknown))}, not in --backends")
        given = settings.parse_given(self.engine_settings)
        named = set(given) - {None, *self.backends}
        if named:
            raise KvbenchError(
                f"--engine-setting names {', '.join(sorted(map(str, named)))}, not in --backends"
            )
        for label in self.backends:
            if backend_spec(label, self).startswith("sim:") and settings.for_label(given, label):
                raise KvbenchError(
                    f"--engine-setting reaches {label}, a simulated engine, whose settings are "
                    "its preset's and --kv-tokens; prefix each setting with the LABEL: of an "
                    "engine driven over HTTP"
                )
        for urls in self.urls.values():
            for url in urls:
                validate.url(url)
        if self.kv_tokens is not None:
            validate.token_count(self.kv_tokens, "--kv-tokens")
        if self.time_scale is not None:
            validate.positive_number(self.time_scale, "--time-scale")
        validate.positive_int(self.replicas, "--replicas")
        validate.seed(self.seed, "--seed")
        check_trim(self.trim)
        if self.target_rate is not None:
            validate.positive_number(self.target_rate, "--target-rate")
        validate.in_range(self.target_utilization, "--target-utilization", 0, 1, low_open=True)
        self.pricing.check()
        if self.method == "backlog" and (self.slo is not None or self.replay):
            raise KvbenchError(
                "--slo, --goodput and --replay are judged on open-loop probes: they go with "
                "--method open-loop (the default with them)"
            )
        precision = self.with_defaults().precision
        assert precision is not None  # with_defaults fills it in
        check_search_settings(
            precision,
            self.confidence,
            math.inf if self.max_engine_seconds is None else self.max_engine_seconds,
        )


class CompareObserver(Protocol):
    """What a progress view is told; every method is optional to act on."""

    def engine_started(self, label: str, kind: str, index: int, total: int) -> None: ...

    def phase(self, label: str, what: str, rate: float | None, planned: float | None) -> None: ...

    def sample(self, label: str, sample: QueueSample) -> None: ...

    def probe_finished(
        self, label: str, rate: float, verdict: str, spent: float, budget: float
    ) -> None:
        """`spent`: the engine's search so far, in engine seconds, of its `budget`
        (--max-engine-seconds)."""

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


class _Engine:
    """The raw record of one engine (engine.json), rewritten after every step."""

    def __init__(
        self, directory: Path, asked: dict[str, Any], previous: dict[str, Any] | None = None
    ):
        """`previous`: what an interrupted attempt recorded (resuming), kept and built on."""
        self.directory = directory / raw.ENGINES_DIR / asked["slug"]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = dict(previous or asked, status="running", error=None)
        self.save()

    def save(self) -> None:
        raw.write_json_atomic(self.directory / raw.ENGINE_FILE, self.data)

    def relative(self, path: Path, root: Path) -> str:
        return path.relative_to(root).as_posix()


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
    backend: Backend,
    engine: _Engine,
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
            sink=_Relay(recorder, observer, label),
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


def _start_rate(data: dict[str, Any]) -> float:
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
    """The backend a label stands for: `--url label=URL` attaches and `--launch` launches the
    engine; with neither an engine name means its embedded form (EMBEDDED_KIND)."""
    engine = config.engines.get(label, label)
    if ":" in engine or config.urls.get(label) or config.launch_model:
        return engine
    return f"{EMBEDDED_KIND}:{engine}"


def replica_count(label: str, config: CompareConfig) -> int:
    urls = config.urls.get(label, [])
    return len(urls) if len(urls) > 1 else config.replicas


def open_backend(
    label: str, spec: str, config: CompareConfig, log_dir: Path | None = None
) -> Backend:
    """Resolve the backend; several URLs become replicas behind a round-robin dispatcher.
    Emulators compare starts keep their logs in `log_dir`."""
    from kvbench.backends.registry import EMULATE_PREFIX, SIM_PREFIX, resolve_backend

    urls = config.urls.get(label, [])
    auth = config.headers
    served = config.served_model
    if len(urls) > 1:
        return RoundRobinBackend(
            [
                resolve_backend(spec, url=u, seed=config.seed, headers=auth, served_model=served)
                for u in urls
            ]
        )
    if urls:
        if config.replicas > 1:
            raise KvbenchError(
                f"{label}: --replicas {config.replicas} with one --url; give one --url per replica"
            )
        return resolve_backend(
            spec, url=urls[0], seed=config.seed, headers=auth, served_model=served
        )
    if config.launch_model:
        if config.replicas > 1:
            raise KvbenchError(
                f"{label}: --replicas with --launch; launch one server per GPU and give each "
                "with --url"
            )
        from kvbench.backends.engines import open_engine

        options = config.launch(label)
        return open_engine(
            spec,
            model_path=config.launch_model,
            served_model=served,
            seed=config.seed,
            engine_python=options.python,
            engine_args=list(options.args),
            engine_env=options.env,
            log_dir=log_dir,
            headers=auth,
        )
    if spec.startswith(EMULATE_PREFIX):
        return resolve_backend(
            spec,
            replicas=config.replicas,
            seed=config.seed,
            kv_tokens=config.kv_tokens,
            time_scale=config.time_scale,
            log_dir=log_dir,
        )
    if spec.startswith(SIM_PREFIX):
        return resolve_backend(
            spec, replicas=config.replicas, seed=config.seed, kv_tokens=config.kv_tokens
        )
    return resolve_backend(spec, replicas=config.replicas, seed=config.seed)


def banner_for(kinds: set[str], time_scales: Iterable[float] = ()) -> str | None:
    """The line over every summary when any engine is not real. `time_scales`: the emulated
    engines' engine seconds per real second."""
    marked = sorted(k for k in kinds if k != "real")
    if not marked:
        return None
    what = " and ".join(k.upper() for k in marked)
    sources: dict[tuple[str, ...], str] = {
        ("simulated",): "kvbench's engine simulator",
        ("emulated",): "kvbench's HTTP emulators of the engines (its engine simulator behind "
        "each engine's own API, measured over HTTP)",
    }
    source = sources.get(tuple(marked), "kvbench's HTTP emulators and engine simulator")
    clock = ""
    scaled = sorted(t for t in time_scales if t != 1.0)
    if scaled:
        clock = (
            f", run at {' and '.join(f'{t:g}' for t in scaled)} engine seconds per real "
            "second (every figure is in the emulated engine's own seconds)"
        )
    return (
        f"{what} engines: these figures come from {source}{clock} on this machine's CPU, not from "
        "GPU measurements. Give --url engine=URL or --launch MODEL_PATH to measure real engines."
    )


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
    engine = _Engine(directory, a, previous)
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
    backlog = _search(backend, engine, root, workload, config, observer, label, given)
    if backlog is not None:
        # the bounded-backlog probe: the engine saturated throughout, its requests recorded
        records, after = backlog
        where = "the bounded-backlog probe"
    else:
        saturated = _saturated_run(engine, root)
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


def _record_profile(engine: _Engine, found, flags: Iterable[str] = ()) -> None:
    """The profile, where each value came from, and each setting as read, given, inferred or
    assumed, with the contradictions the measurements showed."""
    engine.data["profile"] = asdict(found.profile)
    engine.data["profile_sources"] = dict(found.sources)
    engine.data["settings"] = settings.table(found)
    engine.data["settings_flags"] = list(flags)
    engine.save()


def _saturated_run(engine: _Engine, root: Path):
    """The open-loop run nearest saturation (the slowest probe judged UNSTABLE, whose queue never
    drains after warm-up) and its probe; None when the search judged no probe UNSTABLE."""
    unstable = [p for p in engine.data["search"]["probes"] if p["verdict"] == "UNSTABLE"]
    if not unstable:
        return None
    probe = min(unstable, key=lambda p: p["rate"])
    return read_run(root / probe["run_dir"]), probe


def _backlog_search(
    measured: AmendedProfile,
    engine: _Engine,
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
        start_rate=_start_rate(engine.data),
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


def _search(
    backend: Backend,
    engine: _Engine,
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
        start_rate=_start_rate(engine.data),
        on_probe=on_probe,
        on_probe_start=on_probe_start,
        output=engine.directory,
        progress=_Relay(None, observer, label),
        replicas=engine.data["replicas"],
        replay=config.replay,
        slo=config.slo,
        percentiles=config.percentiles,
        resumed=resumed,
    )
    _record_search(engine, result)
    return None


def _record_search(engine: _Engine, result: BoundaryResult, **more: Any) -> None:
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
