"""`kvbench boundary`: search for the stability boundary λ*."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path

import click

from kvbench import interrupt
from kvbench.backends import settings
from kvbench.backends.amended import AmendedProfile
from kvbench.backends.base import Backend
from kvbench.backends.launch import launched_servers
from kvbench.benchmark.saturated_rate import measure_saturated_rate
from kvbench.benchmark.search import (
    DEFAULT_MAX_ENGINE_SECONDS,
    DEFAULT_PRECISION,
    Probe,
    find_boundary,
)
from kvbench.benchmark.served_work import ServedRate
from kvbench.cli import options, vllm_flags
from kvbench.cli.backend_options import BackendArgs, backend_options
from kvbench.cost import Pricing, economics
from kvbench.errors import KvbenchError
from kvbench.export.json import write_json
from kvbench.output.progress import (
    Heartbeat,
    budget_text,
    echo_progress,
    elapsed,
    on_terminal,
    probe_line,
)
from kvbench.output.run import boundary_text
from kvbench.workload import load_workload


@click.command(
    epilog="""\b
Examples:
  kvbench boundary --backend sim:vllm --workload pd-1:1
  kvbench boundary --backend sim:trtllm --workload azure-conv --precision 0.1 --json
  kvbench boundary --backend sim:ideal --kv-tokens 65536 --batch-time 0.03 --seed 7
  kvbench boundary --backend sim:vllm --confirm
  kvbench boundary --backend emulate:trtllm --workload uniform:1-32,1-32 --kv-tokens 2048
  kvbench boundary --backend sim:sglang --method open-loop --output-dir runs/sg-boundary
  kvbench boundary --backend sim:vllm --slo ttft:500ms,tpot:50ms@p99 --gpu-price 2.5
"""
)
@backend_options
@options.engine_settings()
@options.workload()
@vllm_flags.random_dataset("workload_spec")
@options.burstiness()
@click.option(
    "--precision",
    type=float,
    default=DEFAULT_PRECISION,
    show_default=True,
    help="Relative width of the bracket to reach (upper/lower − 1).",
)
@click.option(
    "--max-engine-seconds",
    type=float,
    default=DEFAULT_MAX_ENGINE_SECONDS,
    show_default=True,
    metavar="S",
    help=f"Stop once the probes have used this much engine time (the default is "
    f"{DEFAULT_MAX_ENGINE_SECONDS / 3600:g} h); progress lines show what is left.",
)
@click.option(
    "--method",
    type=click.Choice(["backlog", "open-loop"]),
    default=None,
    help="backlog: the saturated service rate measured with a bounded backlog, from served work"
    " (the default: sim:*, and engines or emulators over HTTP); open-loop: bracket between"
    " open-loop runs judged STABLE and UNSTABLE (the default with --slo).",
)
@click.option(
    "--backlog",
    type=int,
    default=None,
    metavar="K",
    help="Requests kept sent but not started (first token not yet streamed), per replica"
    " (backlog method). Default by rule, the larger of: the smallest queue at which the engine"
    " serves no faster than a deeper one (8 on the simulator, where a top-up is instant; 32 over"
    " HTTP, where a top-up lags a round trip and engines admit requests in batches), and 8 × the"
    " requests that start per iteration at saturation.",
)
@click.option(
    "--confirm",
    is_flag=True,
    help="After a backlog bracket, judge open-loop runs just below and above it"
    " (expect STABLE, UNSTABLE).",
)
@options.output_dir(
    "Write the search to DIR: boundary.json (what --json prints) and, with --method "
    "open-loop, every probe's run directory (probe-KK) as it goes."
)
@options.save_result(
    "Write the search even without --output-dir, to boundary-BACKEND-TIME/ in the working "
    "directory (vllm bench serve's spelling)."
)
@options.latency_targets(bracket=True)
@options.pricing()
@options.json_output()
def boundary(
    backend: BackendArgs,
    engine_settings: tuple[str, ...],
    seed: int,
    confidence: float,
    burstiness: float,
    workload_spec: str,
    precision: float,
    max_engine_seconds: float,
    method: str | None,
    backlog: int | None,
    confirm: bool,
    output_dir: Path | None,
    save_result: bool,
    targets: options.LatencyTargets,
    pricing: Pricing,
    as_json: bool,
) -> None:
    """Bracket the rate λ* at which the engine's queue stops being stable. By default: the
    saturated service rate measured with a bounded backlog (K requests kept waiting, topped up
    the moment one starts; over HTTP by the Rust driver, from each streamed chunk's running
    token count), estimated from served work to --precision. With --method open-loop: between
    the largest rate judged STABLE and the smallest judged UNSTABLE. Every probe and its cost is
    reported. With --slo the search is open-loop (the SLO is judged on its probes), and the SLO
    rate's bracket is reported beside λ*'s."""
    workload = load_workload(workload_spec)
    if output_dir is None and save_result:
        output_dir = options.default_result_dir("boundary", backend.name)
    if output_dir is not None:
        output_dir = _writable(output_dir)
    parsed = settings.parse_given(engine_settings)
    if set(parsed) - {None}:
        raise KvbenchError("--engine-setting: boundary measures one engine; give KEY=VALUE")
    given = parsed.get(None, {})
    if given and backend.name.startswith("sim:"):
        raise KvbenchError(
            "--engine-setting describes an engine over HTTP; a simulated engine's settings are "
            "its --profile's, --kv-tokens and --chunk-size"
        )
    opened: list[Backend] = []

    def backend_for_seed(s: int):
        # The simulator draws its noise from the seed, so each probe gets its own; a server is the
        # same server for every probe (launching one per probe would hold several at once).
        if opened and opened[0].kind != "simulated":
            return amended(opened[0])
        b = backend.open(s)
        opened.append(b)
        return amended(b)

    def amended(b: Backend) -> Backend:
        return AmendedProfile(b, settings=given) if given else b

    spent = [0.0]
    lines: list[str] = []
    started = time.monotonic()
    current = ["starting"]
    running = [0.0]  # engine seconds of the bounded-backlog probe under way

    def on_probe(p: Probe) -> None:
        spent[0] += p.engine_seconds
        running[0] = 0.0
        lines.append(probe_line(p.rate, p.duration, p.verdict, spent[0], max_engine_seconds))
        echo_progress(lines[-1], quiet=as_json)
        current[0] = f"{len(lines)} probes judged"

    def on_probe_start(rate: float, duration: float) -> None:
        current[0] = f"probe {len(lines) + 1} at λ = {rate:.3f} req/s for {duration:,.0f} s"

    def heartbeat() -> None:
        echo_progress(
            f"  {elapsed(time.monotonic() - started)} elapsed: {current[0]}; "
            f"{budget_text(spent[0] + running[0], max_engine_seconds)}"
        )

    # off a terminal (a job's log) a line a minute, so a long search is never silent
    beat = Heartbeat(heartbeat) if not as_json and not on_terminal() else nullcontext()

    def on_look(t: float, est: ServedRate | None) -> None:
        running[0] = t
        if est is None:
            return
        look = f"λ̂ = {est.rate:.3f} req/s  [{est.lo:.3f}, {est.hi:.3f}]  width {est.width:.1%}"
        # every look on a terminal; in a log, the latest in the minute's line
        if on_terminal():
            echo_progress(f"  {t:,.0f} engine-s  {look}", quiet=as_json)
        current[0] = f"bounded-backlog probe at {t:,.0f} engine-s, {look}"

    with beat:
        try:
            first = backend_for_seed(seed)
            if method is None:
                # an SLO is judged on open-loop probes' latencies, which a bounded backlog has
                # none of
                probe = first.has_backlog_probe and targets.slo is None
                method = "backlog" if probe else "open-loop"
            if method == "backlog" and targets.slo is not None:
                raise KvbenchError("--slo and --goodput go with --method open-loop")
            if method == "open-loop" and (backlog is not None or confirm):
                raise KvbenchError("--backlog and --confirm go with --method backlog")
            if method == "backlog":
                result = measure_saturated_rate(
                    first,
                    workload,
                    workload_spec,
                    precision=precision,
                    confidence=confidence,
                    max_engine_seconds=max_engine_seconds,
                    seed=seed,
                    backlog=backlog,
                    confirm=confirm,
                    confirm_backend=backend_for_seed,
                    on_look=on_look,
                    on_probe=on_probe,
                )
            else:
                result = find_boundary(
                    backend_for_seed,
                    workload,
                    workload_spec,
                    precision=precision,
                    confidence=confidence,
                    max_engine_seconds=max_engine_seconds,
                    seed=seed,
                    burstiness=burstiness,
                    on_probe=on_probe,
                    on_probe_start=on_probe_start,
                    output=output_dir,
                    slo=targets.slo,
                    percentiles=targets.percentiles,
                )
        except KeyboardInterrupt:
            # the finished probes are the measurement so far: keep them where the user sees them
            done = (
                "\n".join([f"finished probes ({len(lines)}):", *lines])
                if lines
                else "no probe finished"
            )
            echo_progress(f"stopped by {interrupt.stopped_by()}; {done}")
            sys.exit(interrupt.exit_code())
        finally:
            # what kvbench started, as started (credentials redacted), before closing forgets it
            servers = [s.record() for b in opened for s in launched_servers(b)]
            for b in opened:
                b.close()
    record = {**result.to_dict(), "workload": workload_spec, "seed": seed, "servers": servers}
    record["economics"] = economics(
        record["probes"],
        lambda_lower=record["lower"],
        slo_lower=(record.get("slo") or {}).get("lower"),
        replicas=1,  # boundary measures one replica
        pricing=pricing,
        launch_args=backend.launch.args,
        lambda_throughput=record["extras"].get("throughput"),
    )
    if output_dir is not None:
        write_json(record, output_dir / "boundary.json")
    if as_json:
        write_json(record)
    else:
        click.echo(boundary_text(record))
    sys.exit(boundary_exit_status(record))


def _writable(directory: Path) -> Path:
    """The output directory, created; refused in one line if it cannot be, or already holds a
    search (a probe's run would refuse it later, after minutes of measuring)."""
    if (directory / "boundary.json").exists() or (directory / "probe-00").exists():
        raise KvbenchError(f"{directory}: already holds a search; choose a new --output-dir")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KvbenchError(f"{directory}: cannot write: {err.strerror or err}") from None
    return directory


def boundary_exit_status(record: dict) -> int:
    """1 when the engine's failures kept the search from a bracket (some probe FAILING and no
    lower or upper end), so a script or CI job notices; 0 for any bracket, however wide."""
    failing = any(p["verdict"] == "FAILING" for p in record["probes"])
    bracketed = record["lower"] is not None and record["upper"] is not None
    return 1 if failing and not bracketed else 0
