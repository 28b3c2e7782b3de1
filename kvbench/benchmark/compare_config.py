"""What a comparison is asked to do (CompareConfig, checked before anything runs), the embedded
default it falls back to, the backend each of its labels stands for, and what a progress view
is told (CompareObserver). kvbench.benchmark.compare runs it."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from kvbench import validate
from kvbench.backends import settings
from kvbench.backends.base import Backend, QueueSample, RequestRecord
from kvbench.backends.launch import LaunchOptions
from kvbench.backends.replicas import RoundRobinBackend
from kvbench.benchmark.batch_time import check_trim
from kvbench.benchmark.compare_ray import RayPlacement
from kvbench.benchmark.search import DEFAULT_PRECISION, check_search_settings
from kvbench.benchmark.slo import DEFAULT_PERCENTILES, Slo
from kvbench.cost import Pricing
from kvbench.errors import KvbenchError
from kvbench.redact import redact_url

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


class ObserverRelay:
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


def slug(label: str) -> str:
    """A directory name for a user label: safe characters only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "engine"


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
