"""Flags shared by several commands, defined once so their names and help read the same
everywhere. Profile flags default to None: each command fills in its own default (the paper's
setting for `theory`, an engine preset elsewhere)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from kvbench.benchmark.slo import Slo, parse_percentiles, slo_from_options
from kvbench.cost import Pricing

WORKLOAD_HELP = (
    "uniform:S_LO-S_HI,O_LO-O_HI, fixed:S,O, pd-1:1, pd-2:1, pd-1:2, azure-conv (the packaged "
    "Azure conversation trace), a trace file (.csv in the Azure schema, or .jsonl), or "
    "ShareGPT-style JSON conversations (FILE, or sharegpt:FILE,tokenizer=DIR to count tokens "
    "with a local tokenizer)"
)


def workload(default: str | None = "pd-1:1"):
    return click.option(
        "--workload",
        "workload_spec",
        metavar="SPEC|FILE",
        default=default,
        show_default=default is not None,
        help=WORKLOAD_HELP + ".",
    )


def kv_tokens(default_help: str):
    return click.option(
        "--kv-tokens",
        type=int,
        default=None,
        metavar="M",
        help=f"KV-cache capacity in tokens ({default_help}).",
    )


def chunk_size(default_help: str):
    return click.option(
        "--chunk-size",
        type=int,
        default=None,
        metavar="N",
        help=f"Prefill chunk size ŝ in tokens ({default_help}).",
    )


def batch_time(default_help: str):
    return click.option(
        "--batch-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"Iteration time b̄ near saturation ({default_help}).",
    )


def request_rate(required: bool = False):
    # No explicit default: click ≥ 8.2 treats default=None as a value and skips `required`.
    return click.option(
        "--request-rate",
        type=float,
        required=required,
        metavar="λ",
        help="Arrival rate in requests per second.",
    )


def burstiness():
    return click.option(
        "--burstiness",
        type=float,
        default=1.0,
        show_default=True,
        help="Gamma shape of inter-arrival gaps (1 = Poisson).",
    )


def exact_g():
    return click.option(
        "--exact",
        is_flag=True,
        help="Use the exact ⌈s/ŝ⌉-chunk sum for g(s,o) instead of the paper's closed form.",
    )


def json_output():
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object instead of text."
    )


def engine(help_text: str):
    from kvbench.profile import POLICIES

    return click.option("--engine", type=click.Choice(POLICIES), default=None, help=help_text)


def profile_preset():
    from kvbench.profile import DEFAULT_HARDWARE, HARDWARE

    return click.option(
        "--profile",
        "profile_name",
        type=click.Choice(sorted(HARDWARE)),
        default=None,
        help="Hardware/model calibration the engine preset uses, named after its source "
        f"(default: {DEFAULT_HARDWARE.name}, fitted to Vidur's measured A100 kernel timings).",
    )


def metadata():
    return click.option(
        "--metadata",
        multiple=True,
        metavar="KEY=VALUE",
        help="Recorded with the results (repeatable). The keys host, cpu_model, cpu_cores, "
        "memory_mib, gpu_model, gpu_count, gpu_memory_mib, driver_version and cuda_version "
        "describe the engine's hardware where kvbench cannot read it (an engine on another "
        "host).",
    )


def gpu_exporter():
    return click.option(
        "--gpu-exporter",
        metavar="URL",
        help="A DCGM exporter's metrics URL on the engine's host (e.g. http://HOST:9400/metrics): "
        "GPU model, count, memory and driver for an engine kvbench cannot read them for.",
    )


def served_model():
    # the meaning every other serving benchmark gives --model (vllm bench serve, genai-perf)
    return click.option(
        "--model",
        "served_model",
        default=None,
        metavar="NAME",
        help="The served model's name, sent in every request to a real engine [default: the "
        "first of the engine's /v1/models].",
    )


def launch_model(what: str = "the engine"):
    return click.option(
        "--launch",
        "launch_model",
        default=None,
        metavar="MODEL_PATH",
        help=f"Launch {what} (real backends) with the model at MODEL_PATH, from its recipe in "
        "backends/<engine>/; kvbench stops it at the end.",
    )


def engine_settings(per_engine: bool = False):
    """--engine-setting: a scheduler setting of an engine over HTTP that it does not expose."""
    from kvbench.backends.settings import SETTINGS

    prefix = "[LABEL:]" if per_engine else ""
    only = " A LABEL: prefix gives it to that engine only." if per_engine else ""
    return click.option(
        "--engine-setting",
        "engine_settings",
        multiple=True,
        metavar=f"{prefix}KEY=VALUE",
        help="A setting the engine was started with but does not expose, for the engine-aware "
        f"theory (repeatable); KEY is one of {', '.join(SETTINGS)}, e.g. "
        "--engine-setting max_running=4 for vLLM's --max-num-seqs 4. Replaces what was read "
        "or assumed; the report marks every setting as read, given, inferred (from the "
        f"engine's gauges under saturation) or assumed (the engine's default).{only}",
    )


def engine_launch(per_engine: bool = False):
    """--engine-python, --engine-arg, --engine-env: how kvbench launches an engine (--launch).
    With `per_engine` (compare), a value may start with `ENGINE=` to reach that engine only."""
    prefix = "[ENGINE=]" if per_engine else ""
    only = " An ENGINE= prefix gives it to that engine only." if per_engine else ""
    decorators = [
        click.option(
            "--engine-python",
            multiple=per_engine,
            metavar=f"{prefix}PATH",
            help="The interpreter of the environment the engine is installed in (--launch; "
            f"default: kvbench's own).{only}",
        ),
        click.option(
            "--engine-arg",
            "engine_args",
            multiple=True,
            metavar=f"{prefix}ARG",
            help="One more argument for the engine's command line (--launch), after the "
            "recipe's; repeat, e.g. --engine-arg=--tensor-parallel-size --engine-arg=2. "
            f"A flag the recipe also sets replaces the recipe's.{only}",
        ),
        click.option(
            "--engine-env",
            "engine_env",
            multiple=True,
            metavar=f"{prefix}KEY=VALUE",
            help="An environment variable for the engine (--launch); repeat. Recorded with the "
            f"run, with values of names that look like credentials (KEY, TOKEN, SECRET, "
            f"PASSWORD) redacted.{only}",
        ),
    ]

    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def replay(searched: bool = False):
    """--replay: a timed trace's own arrival pattern instead of a Poisson process."""
    rate = (
        "each probe's rate (its gaps scaled by one factor)"
        if searched
        else "--replay-speed, or scaled to --request-rate"
    )
    return click.option(
        "--replay",
        is_flag=True,
        help="Send the trace's requests in file order at its own timestamps, at "
        f"{rate}; past its end the trace starts over. Needs a trace with timestamps.",
    )


def replay_speed():
    return click.option(
        "--replay-speed",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="FACTOR",
        help="With --replay: how much faster than recorded (2 = twice the trace's rate) "
        "[default: 1, or the factor that gives --request-rate].",
    )


class _Greedy(click.Option):
    """An option that also takes the words after its value up to the next option, as vLLM's
    argparse `nargs="+"` does (`--goodput ttft:2000 tpot:100`); joined by spaces."""

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = getattr(parser, "_long_opt", {}).get(name)
            if option is None:
                continue
            take = option.process

            def process(value, state, take=take):
                words = [value]
                while state.rargs and not state.rargs[0].startswith("-"):
                    words.append(state.rargs.pop(0))
                take(" ".join(words), state)

            option.process = process


@dataclass(frozen=True)
class LatencyTargets:
    """--slo/--goodput and --percentiles/--metric-percentiles, parsed."""

    slo: Slo | None
    percentiles: tuple[float, ...]


def latency_targets(*, bracket: bool = False):
    """--slo (or vLLM's --goodput) and --percentiles (or --metric-percentiles); the command
    receives them parsed as `targets: LatencyTargets`. `bracket`: the command searches, so the
    help says how the SLO rate is bracketed."""
    how = (
        " Each probe of the stability search is judged against it too, and the SLO rate (the "
        "fastest probe judged STABLE that met the SLO, up to the slowest above it that missed "
        "it or λ*'s upper end) is bracketed from those probes alone: no probe is run for the "
        "SLO, so the bracket is as tight as the search's probes make it."
        if bracket
        else ""
    )
    decorators = [
        click.option(
            "--slo",
            metavar="METRIC:TIME,…[@pP]",
            help="Latency targets, e.g. ttft:2s,tpot:100ms,e2e:30s@p99 (units s or ms; "
            "percentile default p99). Reported: SLO attainment (completed requests within "
            "every target) and goodput (those per second); met when each metric's percentile "
            f"over completed requests is within its target.{how}",
        ),
        click.option(
            "--goodput",
            cls=_Greedy,
            multiple=True,
            metavar="KEY:MS …",
            help="vLLM's spelling of --slo: KEY:VALUE pairs in milliseconds, KEY one of ttft, "
            "tpot, e2el (e.g. --goodput ttft:2000 tpot:100), judged at p99.",
        ),
        click.option(
            "--percentiles",
            "--metric-percentiles",
            "percentiles",
            default="50,90,99",
            show_default=True,
            metavar="P,…",
            help="Latency percentiles to report (TTFT, TPOT, ITL, E2E), over completed "
            "requests only.",
        ),
    ]

    def apply(f):
        @functools.wraps(f)
        def wrapper(*args, slo, goodput, percentiles, **kwargs):
            kwargs["targets"] = LatencyTargets(
                slo_from_options(slo, goodput), parse_percentiles(percentiles)
            )
            return f(*args, **kwargs)

        for decorator in reversed(decorators):
            wrapper = decorator(wrapper)
        return wrapper

    return apply


def pricing():
    """--gpu-price and --gpus-per-replica; the command receives `pricing: Pricing`."""
    decorators = [
        click.option(
            "--gpu-price",
            type=float,
            metavar="USD_PER_HOUR",
            help="Price of one GPU-hour: gives $/hour, $ per million requests and per million "
            "output tokens at λ* and at the SLO rate (the assumptions are printed).",
        ),
        click.option(
            "--gpus-per-replica",
            type=int,
            metavar="N",
            help="GPUs one replica runs on, for tokens/s per GPU and cost [default: the "
            "launch's --tensor-parallel-size/--tp engine argument, else 1].",
        ),
    ]

    def apply(f):
        @functools.wraps(f)
        def wrapper(*args, gpu_price, gpus_per_replica, **kwargs):
            given = Pricing(gpu_price, gpus_per_replica)
            given.check()
            kwargs["pricing"] = given
            return f(*args, **kwargs)

        for decorator in reversed(decorators):
            wrapper = decorator(wrapper)
        return wrapper

    return apply


def output_dir(help_text: str, *, aliases: tuple[str, ...] = (), default=None):
    """--output-dir, the one spelling of run, boundary and compare for where results go, with
    vllm bench serve's --result-dir (and a command's older spelling in `aliases`) beside it."""
    return click.option(
        "--output-dir",
        "--result-dir",
        *aliases,
        "output_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=default is not None,
        metavar="DIR",
        help=help_text,
    )


def save_result(help_text: str):
    """vllm bench serve's --save-result."""
    return click.option("--save-result", is_flag=True, help=help_text)


def static_figures():
    return click.option(
        "--figures",
        is_flag=True,
        help="Also write each plot as PNG and SVG in figures/ beside report.html (needs "
        "kvbench[figures], i.e. kaleido, and Chrome or Chromium).",
    )


def ray_address(help: str):
    """--ray [ADDRESS]: a Ray cluster started here (no address) or the one at ADDRESS."""
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="",
        default=None,
        metavar="[ADDRESS]",
        help=help,
    )


def shared_plotlyjs():
    return click.option(
        "--shared-plotlyjs",
        is_flag=True,
        help="report.html loads plotly.js from plotly.min.js in the directory above it, written "
        "there once for every report in it, instead of carrying its 4.6 MB itself (the report "
        "is then no longer one self-contained file).",
    )


def default_result_dir(command: str, backend: str, rate: float | None = None) -> Path:
    """Where --save-result writes without --output-dir: a new directory in the working
    directory named, as vllm bench serve names its result file, after the backend, the rate and
    the time."""
    import re
    from datetime import datetime

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", backend)
    rate_part = "" if rate is None else f"-{rate:g}qps"
    return Path(f"{command}-{name}{rate_part}-{datetime.now():%Y%m%d-%H%M%S}")
