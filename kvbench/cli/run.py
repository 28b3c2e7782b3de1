"""`kvbench run`: one open-loop stability run at a fixed rate."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kvbench import interrupt
from kvbench.benchmark.runner import RunSpec, execute_run, replay_rate
from kvbench.cli import options, vllm_flags
from kvbench.cli.backend_options import BackendArgs, backend_options
from kvbench.export.json import write_json
from kvbench.output.progress import RunProgress, echo_progress
from kvbench.output.run import run_summary_text
from kvbench.provenance import check_exporter_url, for_backend, parse_metadata
from kvbench.workload import Workload, load_workload


@click.command(
    epilog="""\b
Examples:
  kvbench run --backend sim:vllm --workload pd-1:1 --request-rate 2.0 --duration 1200
  kvbench run --backend sim:trtllm --request-rate 3 --num-prompts 5000 --output-dir runs/trt-3
  kvbench run --backend vllm --url http://localhost:8000 --request-rate 1.5 --duration 600 --json
  kvbench run --backend sim:vllm --workload azure-conv --replay --replay-speed 2
  kvbench run --backend sim:vllm --request-rate 2 --duration 600 --slo ttft:2s,tpot:100ms@p99
"""
)
@backend_options
@options.workload()
@vllm_flags.random_dataset("workload_spec")
@options.request_rate()
@options.replay()
@options.replay_speed()
@options.burstiness()
@click.option(
    "--duration",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds of load (or --num-prompts).",
)
@click.option(
    "--num-prompts", type=int, default=None, metavar="N", help="Requests to send (or --duration)."
)
@options.output_dir(
    "Write the run (header, every request and queue sample) to DIR as it goes (--output: "
    "the older spelling).",
    aliases=("--output",),
)
@options.save_result(
    "Write the run even without --output-dir, to run-BACKEND-RATEqps-TIME/ in the working "
    "directory (vllm bench serve's spelling)."
)
@options.metadata()
@options.gpu_exporter()
@options.latency_targets()
@options.json_output()
def run(
    backend: BackendArgs,
    seed: int,
    confidence: float,
    burstiness: float,
    workload_spec: str,
    request_rate: float | None,
    replay: bool,
    replay_speed: float | None,
    duration: float | None,
    num_prompts: int | None,
    output_dir: Path | None,
    save_result: bool,
    metadata: tuple[str, ...],
    gpu_exporter: str | None,
    targets: options.LatencyTargets,
    as_json: bool,
) -> None:
    """Send requests open-loop at a fixed rate, record every event, and judge whether the
    engine's queue stays bounded: STABLE, UNSTABLE or INCONCLUSIVE at the stated confidence,
    from the completed requests; FAILING (exit status 1) when more than 1% of the requests
    failed."""
    workload = load_workload(workload_spec)
    if replay:
        request_rate, num_prompts = _replayed(
            workload, request_rate, replay_speed, burstiness, duration, num_prompts
        )
    elif replay_speed is not None:
        raise click.UsageError("--replay-speed needs --replay")
    elif request_rate is None:
        raise click.UsageError("Missing option '--request-rate' (or --replay a timed trace).")
    spec = RunSpec(
        workload_spec,
        request_rate,
        burstiness,
        duration=duration,
        num_prompts=num_prompts,
        seed=seed,
        confidence=confidence,
        replay=replay,
    )
    if output_dir is None and save_result:
        output_dir = options.default_result_dir("run", backend.name, request_rate)
    output = None if output_dir is None else str(output_dir)
    stated = parse_metadata(metadata)
    check_exporter_url(gpu_exporter)
    engine = backend.open(seed)
    try:
        found = for_backend(engine, backend.name, metadata=stated, gpu_exporter=gpu_exporter)
        label = f"{backend.name} λ={request_rate:g}"
        with RunProgress(label, duration, quiet=as_json) as progress:
            result = execute_run(
                engine,
                workload,
                spec,
                output=output,
                progress=progress,
                header_extra={"provenance": found},
                slo=targets.slo,
                percentiles=targets.percentiles,
            )
    except KeyboardInterrupt:
        where = f"; partial run in {output} (kvbench report {output})" if output else ""
        echo_progress(f"stopped by {interrupt.stopped_by()}{where}")
        sys.exit(interrupt.exit_code())
    finally:
        engine.close()
    summary = {**result.summary, "workload": workload_spec, "directory": output}
    if as_json:
        write_json(summary)
    else:
        click.echo(run_summary_text(summary, output))
    sys.exit(run_exit_status(summary))


def _replayed(
    workload: Workload,
    request_rate: float | None,
    speed: float | None,
    burstiness: float,
    duration: float | None,
    num_prompts: int | None,
) -> tuple[float, int | None]:
    """The rate a --replay run sends at (the trace's own, times --replay-speed, or
    --request-rate) and its length: the whole trace once unless --duration or --num-prompts."""
    if request_rate is not None and speed is not None:
        raise click.UsageError("give --replay-speed or --request-rate with --replay, not both")
    if burstiness != 1.0:
        raise click.UsageError("--burstiness shapes a Poisson schedule; --replay uses the trace's")
    recorded = replay_rate(workload)
    rate = request_rate if request_rate is not None else recorded * (speed or 1.0)
    if duration is None and num_prompts is None:
        num_prompts = len(workload.rows()[0])
    return rate, num_prompts


def run_exit_status(summary: dict) -> int:
    """1 when the engine failed the run (its status says so, or its requests failed too often
    for any verdict but FAILING), so a script or CI job notices; 0 otherwise, whatever the
    verdict: UNSTABLE is a measurement, not a failure."""
    return 1 if summary["status"] == "failed" or summary["verdict"] == "FAILING" else 0
