"""`kvbench compare`: several engines' stability boundaries beside the theory, as a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from kvbench import interrupt
from kvbench.backends.labels import parse_backends
from kvbench.backends.launch import redact_given
from kvbench.benchmark.compare import run_compare
from kvbench.benchmark.compare_config import EMBEDDED, REAL_ENGINE_WORKLOAD, CompareConfig
from kvbench.benchmark.compare_ray import RayPlacement
from kvbench.benchmark.failures import describe
from kvbench.benchmark.search import DEFAULT_MAX_ENGINE_SECONDS
from kvbench.cli import options, vllm_flags
from kvbench.cli.backend_options import auth_options, request_headers
from kvbench.errors import KvbenchError
from kvbench.export import figures as static_figures
from kvbench.export.compare_report import write_report
from kvbench.export.json import write_json
from kvbench.output import economics
from kvbench.output.compare_progress import CompareProgress, PlainCompareProgress
from kvbench.output.progress import on_terminal
from kvbench.output.run import queue_stability_row
from kvbench.output.terminal import block, highlight
from kvbench.provenance import check_exporter_url, parse_metadata
from kvbench.redact import redact_url
from kvbench.report.build import Report
from kvbench.report.schema import CompareResults, EngineResult
from kvbench.report.table import engine_name, fmt_bracket, fmt_gap, fmt_rate


def _parse_urls(values: tuple[str, ...]) -> dict[str, list[str]]:
    urls: dict[str, list[str]] = {}
    for value in values:
        engine, sep, url = value.partition("=")
        if not sep or not engine or not url.startswith(("http://", "https://")):
            raise KvbenchError(f"--url {value!r}: expected LABEL=http://HOST:PORT")
        urls.setdefault(engine, []).append(url)
    return urls


def _command_line(ctx: click.Context) -> str:
    """The command as typed, up to option order: every option given on the command line (and
    --backends, always); credentials in engine arguments and environment redacted."""
    words = ["kvbench", "compare"]
    labels = [b.strip() for b in ctx.params.get("backends", "").split(",")]
    redacted = {
        "engine_args": redact_given(ctx.params.get("engine_args", ()), labels, env=False),
        "engine_env": redact_given(ctx.params.get("engine_env", ()), labels, env=True),
    }
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        # click ≥ 8.2 gives an option without a default the default UNSET, never equal to its
        # value: where a value came from is the test, not what it equals
        typed = ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE
        if (
            not (typed or param.name == "backends")
            or value in (None, ())
            or (param.name in ("progress", "resume", "save_result"))
        ):
            continue
        flag = param.opts[0]
        if isinstance(param, click.Option) and param.is_flag and not value:
            if not param.secondary_opts:
                continue
            flag = param.secondary_opts[0]
        if param.name == "metadata":  # a credential-like key's value is never written
            value = tuple(f"{k}={v}" for k, v in parse_metadata(value).items())
        if isinstance(param, click.Option) and param.is_flag:
            words.append(flag)
        elif param.name == "api_key":
            words += [flag, "***"]  # credentials are never recorded
        elif param.name == "headers":
            for v in value:
                words += [flag, v.partition("=")[0] + "=***"]
        elif param.name == "urls":
            for v in value:
                label, sep, url = v.partition("=")
                words += [flag, label + sep + redact_url(url)]
        else:
            for v in redacted.get(param.name, value if param.multiple else (value,)):
                # --engine-arg=--flag: click would read a separate --flag as an option
                words += [f"{flag}={v}"] if str(v).startswith("-") else [flag, str(v)]
    return shlex.join(words)


def _engine_lines(e: EngineResult) -> list[tuple[str, str] | tuple[str, str, str]]:
    if e.status != "ok" and not e.probes:
        return [("status", highlight(f"{e.status.upper()}: {e.error}", "red"))]
    rows: list = []
    if e.boundary:
        how = f"{len(e.probes)} probes"
        if e.boundary.method == "backlog":
            how = "1 bounded-backlog probe" + (" + 2 open-loop" if e.boundary.confirmed else "")
        rows.append(
            (
                "λ* measured",
                highlight(f"{fmt_bracket(e)} req/s"),
                f"{how}, {e.engine_seconds:.0f} engine-s",
            )
        )
    if e.boundary and e.boundary.method == "backlog":
        confirmed = e.boundary.confirmed
        rows.append(
            queue_stability_row(None if confirmed is None else [c["verdict"] for c in confirmed])
        )
    rows += economics.rows(e.slo_boundary, e.economics)
    if e.theory:
        rows.append(
            (
                "μ theory",
                f"{fmt_rate(e.theory.mu)} req/s",
                f"gap {fmt_gap(e.gap_percent)}, b̄ = {e.batch_time.value:.4f} s"
                if e.batch_time
                else "",
            )
        )
        if e.theory.mu_engine_aware is not None:
            rows.append(
                (
                    "μ engine-aware",
                    f"{fmt_rate(e.theory.mu_engine_aware)} req/s",
                    f"gap {fmt_gap(e.gap_engine_aware_percent)}, {e.theory.binding} binds",
                )
            )
    if e.provisioning:
        p = e.provisioning
        aware = (
            "" if p.replicas_engine_aware is None else f", {p.replicas_engine_aware} engine-aware"
        )
        rows.append(
            (
                "replicas needed",
                f"{p.replicas_measured if p.replicas_measured else '—'} measured, "
                f"{p.replicas_theory} paper{aware}",
                f"for {p.target_rate:g} req/s at ρ = {p.utilization:g}, measured from the "
                f"{p.basis}",
            )
        )
    if e.failures:
        failing = e.verdict_counts.get("FAILING", 0)
        rows.append(("failed requests", describe(e.failures, limit=2), f"{failing} probes FAILING"))
    if e.preemptions is not None:
        rows.append(("preemptions", f"{e.preemptions:,}", "counted by the engine, every probe"))
    if e.status != "ok":
        rows.append(("status", highlight(f"{e.status.upper()}: {e.error}", "red")))
    return rows


def print_summary(results: CompareResults, directory: Path) -> None:
    if results.banner:
        click.echo(click.style(results.banner, fg="yellow", bold=True))
    for e in results.engines:
        click.echo(
            block(f"{engine_name(e)} — {results.config.get('workload', '')}", _engine_lines(e))
        )
    click.echo(f"Report: {directory / 'report.html'}")


@click.command()
@click.option(
    "--backends",
    default="trtllm,sglang",
    show_default=True,
    help="Comma-separated engines: trtllm, sglang, vllm, or an explicit backend such as "
    "sim:trtllm (simulated, virtual time) or emulate:sglang; LABEL=ENGINE names a row (e.g. "
    "h200-trt=trtllm,mi300-sgl=sglang), needed when one engine appears twice.",
)
@click.option(
    "--workload",
    help=f"Workload spec (pd-1:1, uniform:S-S,O-O, fixed:S,O) or trace file [default: "
    f"{EMBEDDED.workload} with no --url/--launch (the embedded default), else "
    f"{REAL_ENGINE_WORKLOAD}].",
)
@vllm_flags.random_dataset("workload")
@click.option(
    "--kv-tokens",
    type=click.IntRange(min=1),
    metavar="M",
    help=f"KV capacity of the emulated and simulated engines [default: {EMBEDDED.kv_tokens} "
    "in the embedded default, else the engine preset's 131,000].",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    help=f"Engine seconds per real second of the emulated engines [default: "
    f"{EMBEDDED.time_scale:g} in the embedded default, else 1]. Figures stay in engine "
    "seconds; the scale only sets how fast the emulator must stream.",
)
@click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="LABEL=URL",
    help="Attach to a running server; repeat for data-parallel replicas.",
)
@options.metadata()
@options.gpu_exporter()
@options.served_model()
@options.launch_model("each engine")
@auth_options()[0]
@auth_options()[1]
@options.engine_launch(per_engine=True)
@options.engine_settings(per_engine=True)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Data-parallel replicas per engine, dispatched round-robin.",
)
@click.option(
    "--precision",
    type=float,
    help=f"Relative width of the boundary bracket to reach [default: "
    f"{EMBEDDED.precision:g} in the embedded default, else 0.05].",
)
@click.option(
    "--method",
    type=click.Choice(["backlog", "open-loop"]),
    help="backlog: each engine's saturated service rate, measured with a bounded backlog (K "
    "requests kept sent but not started) and estimated from served work; open-loop: bracket "
    "between open-loop runs judged STABLE and UNSTABLE [default: backlog, except with --slo, "
    "--goodput or --replay, which are judged on open-loop runs].",
)
@click.option(
    "--confirm",
    is_flag=True,
    help="After each bounded-backlog bracket, judge open-loop runs just below and above it "
    "(expect STABLE, UNSTABLE): the queue-stability evidence itself, for a few request lives "
    "more of engine time each.",
)
@click.option(
    "--confidence", type=float, default=0.95, show_default=True, help="Confidence of every verdict."
)
@click.option(
    "--max-engine-seconds",
    type=float,
    metavar="S",
    help=f"Search budget per engine, in engine seconds [default: {DEFAULT_MAX_ENGINE_SECONDS:,.0f}"
    f" = {DEFAULT_MAX_ENGINE_SECONDS / 3600:g} h]; progress lines show what is left.",
)
@click.option(
    "--target-rate", type=float, help="Also answer: replicas needed for this rate (req/s)."
)
@click.option(
    "--target-utilization",
    type=float,
    default=0.9,
    show_default=True,
    help="Utilization ρ the replicas for --target-rate are sized to.",
)
@options.latency_targets(bracket=True)
@options.pricing()
@click.option(
    "--trim",
    type=float,
    default=0.0,
    show_default=True,
    help="b̄ as a trimmed mean cutting this fraction from each tail (0: the median).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds arrivals, lengths and the simulator (probe k uses seed + k).",
)
@click.option("--name", help="Report name [default: the engines' labels].")
@options.output_dir("The report goes to DIR/<date>-<name>/.", default=Path("reports"))
@options.save_result("Accepted for vllm bench serve's spelling: compare always writes its report.")
@click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    metavar="DIR",
    help="Continue the interrupted comparison in DIR (a directory compare wrote) with the same "
    "settings: finished engines and judged probes are kept, not run again.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr [default: on; a live view on a terminal, else a plain line per "
    "phase, per probe and per minute].",
)
@options.static_figures()
@options.shared_plotlyjs()
@options.replay(searched=True)
@options.ray_address(
    "Measure the engines side by side, each as a Ray task on a node with the GPUs it "
    "needs (the kvbench[ray] extra): the engine is launched (or its emulator started) there, "
    "kvbench's client runs beside it, and its raw folder comes back for this report. On a Ray "
    "cluster started here, or the one at ADDRESS (its nodes need kvbench and the engines).",
)
@click.option(
    "--gpus-per-engine",
    type=float,
    default=None,
    metavar="N",
    help="GPUs each engine's Ray task holds (with --ray) [default: 1 with --launch, else 0: "
    "an emulator or an attached engine needs none].",
)
@click.option(
    "--gpu-resource",
    default="GPU",
    show_default=True,
    metavar="NAME",
    help="The Ray resource --gpus-per-engine counts, for clusters that name accelerators "
    "otherwise.",
)
@click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout.")
def compare(
    backends,
    workload,
    kv_tokens,
    time_scale,
    urls,
    metadata,
    gpu_exporter,
    served_model,
    launch_model,
    api_key,
    headers,
    engine_python,
    engine_args,
    engine_env,
    engine_settings,
    replicas,
    precision,
    method,
    confirm,
    confidence,
    max_engine_seconds,
    target_rate,
    target_utilization,
    targets,
    pricing,
    trim,
    seed,
    name,
    output_dir,
    save_result,
    resume,
    progress,
    figures,
    shared_plotlyjs,
    replay,
    ray_address,
    gpus_per_engine,
    gpu_resource,
    as_json,
) -> None:
    """Measure each engine's stability boundary on the same workload, set it beside the theory,
    and write a report (report.html, summary.md, results.json, CSVs).

    With no --url and no --launch each engine is kvbench's emulator of it (its scheduler in
    kvbench's simulator, behind the engine's own HTTP API), started on a free local port, driven
    over HTTP exactly as a real engine is, and stopped at the end; the report says EMULATED on
    every row and plot. With no --workload either, the embedded default applies: s, o ~
    U{1..32}, M = 2,048 tokens, the emulated engines run at 1.25 engine seconds per real second,
    and the bracket is 10% wide (short requests and a small cache keep the comparison to about
    a minute of CPU; every figure is in the emulated engine's own seconds). sim:ENGINE runs the
    same configuration in the simulator, in virtual time.

    \b
    Examples:
      kvbench compare --backends trtllm,sglang
      kvbench compare --backends sim:trtllm,sim:sglang         # the same, simulated
      kvbench compare --backends trtllm --workload pd-1:1      # paper scale, emulated (slow)
      kvbench compare --backends vllm --url vllm=http://127.0.0.1:8000 --target-rate 50
      kvbench compare --backends h200=vllm --url h200=http://10.0.0.5:8000 \\
          --slo ttft:2s,tpot:100ms@p99 --gpu-price 3.5 --gpus-per-replica 8 --target-rate 40
      kvbench compare --backends h200-trt=trtllm --url h200-trt=http://10.0.0.5:8000 \\
          --metadata gpu_model="NVIDIA H200" --metadata gpu_count=8
      kvbench compare --backends trtllm,sglang --confirm       # + open-loop evidence
      kvbench compare --backends trtllm,sglang --resume reports/2026-12-01-trtllm-vs-sglang
    """
    if figures:
        static_figures.check()
    placement = None
    if ray_address is not None:
        gpus = gpus_per_engine if gpus_per_engine is not None else (1.0 if launch_model else 0.0)
        placement = RayPlacement(ray_address or None, gpus, gpu_resource)
        placement.check()
    elif gpus_per_engine is not None or gpu_resource != "GPU":
        raise KvbenchError("--gpus-per-engine and --gpu-resource go with --ray")
    if confirm and (method == "open-loop" or targets.slo is not None or replay):
        # --slo and --replay are judged on open-loop probes, which bracket λ* themselves
        raise KvbenchError("--confirm goes with the bounded-backlog probe (--method backlog)")
    labels, engines = parse_backends(backends)
    config = CompareConfig(
        backends=labels,
        engines=engines,
        metadata=parse_metadata(metadata),
        gpu_exporter=check_exporter_url(gpu_exporter),
        workload=workload,
        kv_tokens=kv_tokens,
        time_scale=time_scale,
        name=name,
        urls=_parse_urls(urls),
        launch_model=launch_model,
        served_model=served_model,
        headers=request_headers(api_key, headers),
        replicas=replicas,
        precision=precision,
        method=method,
        confirm=confirm,
        confidence=confidence,
        max_engine_seconds=max_engine_seconds,
        seed=seed,
        target_rate=target_rate,
        target_utilization=target_utilization,
        trim=trim,
        output_root=output_dir,
        command=_command_line(click.get_current_context()),
        engine_python=list(engine_python),
        engine_args=list(engine_args),
        engine_env=list(engine_env),
        replay=replay,
        engine_settings=list(engine_settings),
        slo=targets.slo,
        percentiles=targets.percentiles,
        pricing=pricing,
        ray=placement,
    )
    # a live view on a terminal, plain lines in a log; --no-progress: neither
    show = True if progress is None else progress
    view = CompareProgress(enabled=show) if on_terminal() or not show else PlainCompareProgress()
    # a SIGTERM (a job runner's timeout) stops like Ctrl-C (kvbench.interrupt): the engines
    # kvbench started are stopped and what was measured is reported
    with view:
        directory = run_compare(config, view, resume=resume)
    # measuring is over: a Ctrl-C (or SIGTERM) now would only lose the report, so let it finish
    with interrupt.shielded():
        report, _ = write_report(directory, figures=figures, shared_plotlyjs=shared_plotlyjs)
    if as_json:
        write_json(report.results.to_dict())
    else:
        print_summary(report.results, directory)
    sys.exit(compare_exit_status(report.results))


def compare_exit_status(results: CompareResults) -> int:
    """128 + the signal when stopped (130 Ctrl-C, 143 SIGTERM); 1 when any engine FAILED, so a
    script or CI job notices though the report was written; else 0."""
    if results.interrupted or interrupt.terminated():
        click.echo(
            f"stopped by {interrupt.stopped_by()}: the report covers what was measured before",
            err=True,
        )
        return interrupt.exit_code()
    return failed_engines_status(results)


def failed_engines_status(results: CompareResults) -> int:
    failed = [engine_name(e) for e in results.engines if e.status == "failed"]
    if failed:
        click.echo(f"error: {', '.join(failed)} FAILED (see the report)", err=True)
        return 1
    return 0


def rebuild_compare_report(
    directory: Path, as_json: bool, figures: bool = False, shared_plotlyjs: bool = False
) -> Report:
    """`kvbench report DIR` for a compare directory: rebuild every report file from the raw
    files (with `figures`, the static figures too) and print the summary (or results.json with
    --json)."""
    report, _ = write_report(directory, figures=figures, shared_plotlyjs=shared_plotlyjs)
    if as_json:
        write_json(report.results.to_dict())
    else:
        print_summary(report.results, directory)
    return report
