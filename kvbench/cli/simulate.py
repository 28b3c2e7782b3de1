"""`kvbench simulate`: run a workload through the engine simulator in virtual time and report
throughput, the queue and latencies, all labelled SIMULATED."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from kvbench.arrivals import arrival_times
from kvbench.benchmark.stability import stability_verdict
from kvbench.cli import options
from kvbench.errors import KvbenchError
from kvbench.export.json import write_json
from kvbench.export.parquet import require_pyarrow, write_frames
from kvbench.output.terminal import block, estimate, highlight, number
from kvbench.profile import DEFAULT_HARDWARE, UNLIMITED, IterationTimeModel, build_profile
from kvbench.simulator import DISPATCH, SimulationResult
from kvbench.simulator import simulate as run_simulation
from kvbench.workload import load_workload

LATENCIES = {
    "ttft": "TTFT",
    "tpot": "TPOT",
    "e2e": "E2E latency",
    "queueing_delay": "queueing delay",
}
PERCENTILES = (50, 90, 99)
_VERDICT_COLORS = {"STABLE": "green", "UNSTABLE": "red", "INCONCLUSIVE": "yellow"}


@click.command(
    epilog="""\b
Examples:
  kvbench simulate --engine vllm --request-rate 3 --num-prompts 20000
  kvbench simulate --engine ideal --workload pd-2:1 --request-rate 4.2 --duration 3600 --batch-time 0.043
  kvbench simulate --engine sglang --workload azure-conv --request-rate 2 --duration 1800 --json
  kvbench simulate --engine trtllm --request-rate 20 --replicas 8 --dispatch jsq --num-prompts 50000 --output out/
"""
)
@click.option(
    "--engine",
    type=click.Choice(("vllm", "sglang", "trtllm", "ideal")),
    required=True,
    help="Scheduler rule to simulate (ideal: the paper's work-conserving policy).",
)
@options.workload()
@options.request_rate(required=True)
@click.option(
    "--num-prompts", type=int, default=None, metavar="N", help="Number of requests to send."
)
@click.option(
    "--duration",
    type=float,
    default=None,
    metavar="S",
    help="Send for S simulated seconds and stop the clock there.",
)
@click.option(
    "--burstiness",
    type=float,
    default=1.0,
    show_default=True,
    help="Gamma shape of the arrival gaps (1: Poisson; below 1: burstier).",
)
@options.profile_preset()
@options.kv_tokens("the engine preset's")
@options.chunk_size("the engine preset's")
@options.batch_time("the preset's iteration-time model; given, a constant iteration time")
@click.option(
    "--max-tokens",
    "max_tokens_cap",
    type=int,
    default=None,
    metavar="N",
    help="max_tokens each request declares, which trtllm reserves at admission "
    "(default: each request's own output length).",
)
@click.option(
    "--replicas", type=int, default=1, show_default=True, metavar="G", help="Engine replicas."
)
@click.option(
    "--dispatch",
    type=click.Choice(DISPATCH),
    default="round_robin",
    show_default=True,
    help="How arrivals are spread over replicas (jsq: join the shortest queue).",
)
@click.option(
    "--sample-interval",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Record the queue every Δt instead of every iteration (smaller output for long runs).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of lengths, arrivals and noise."
)
@options.json_output()
@click.option(
    "--output",
    "output_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Write records.parquet, timeseries.parquet and summary.json to DIR.",
)
def simulate(
    engine: str,
    workload_spec: str,
    request_rate: float,
    num_prompts: int | None,
    duration: float | None,
    burstiness: float,
    profile_name: str | None,
    kv_tokens: int | None,
    chunk_size: int | None,
    batch_time: float | None,
    max_tokens_cap: int | None,
    replicas: int,
    dispatch: str,
    sample_interval: float | None,
    seed: int,
    as_json: bool,
    output_dir: str | None,
) -> None:
    """Simulate ENGINE's scheduler serving the workload open-loop at λ requests/s, one engine
    iteration at a time (Rust core, virtual time). Reports throughput after warm-up with its
    interval, the stability verdict, the queue, and TTFT/TPOT/E2E/queueing-delay percentiles.
    With --num-prompts every request is followed to completion; with --duration the clock stops
    at S. Results are SIMULATED: they follow from the scheduler rule and the iteration-time
    model, not from a GPU."""
    if (num_prompts is None) == (duration is None):
        raise click.UsageError("give exactly one of --num-prompts and --duration")
    if request_rate <= 0 or not math.isfinite(request_rate):
        raise KvbenchError(f"--request-rate must be a positive number, got {request_rate}")
    if num_prompts is not None and num_prompts < 1:
        raise KvbenchError(f"--num-prompts must be at least 1, got {num_prompts}")
    if duration is not None and not duration > 0:
        raise KvbenchError(f"--duration must be positive, got {duration}")
    if max_tokens_cap is not None and max_tokens_cap < 1:
        raise KvbenchError(f"--max-tokens must be at least 1, got {max_tokens_cap}")
    if output_dir is not None:
        require_pyarrow()
    overrides: dict = dict(
        kv_tokens=kv_tokens, chunk_size=chunk_size, max_tokens_cap=max_tokens_cap
    )
    if batch_time is not None:
        overrides["iteration_time"] = IterationTimeModel.constant(batch_time)
    profile = build_profile(engine, profile_name or DEFAULT_HARDWARE.name, **overrides)
    workload = load_workload(workload_spec)

    if num_prompts is not None:
        n = num_prompts
    else:
        assert duration is not None  # exactly one of the two, checked above
        # Enough arrivals to cover the duration with overwhelming probability, then cut.
        n = int(request_rate * duration + 6 * math.sqrt(request_rate * duration / burstiness) + 10)
    arrivals = arrival_times(request_rate, n, burstiness=burstiness, seed=seed)
    if duration is not None:
        arrivals = arrivals[arrivals <= duration]
        n = len(arrivals)
        if n == 0:
            raise KvbenchError(
                f"no request arrives within --duration {duration:g} s at λ = {request_rate:g}"
            )
    prompt, output = workload.draw(n, seed=seed)
    result = run_simulation(
        profile,
        prompt,
        output,
        arrivals,
        replicas=replicas,
        dispatch=dispatch,
        seed=seed,
        until=duration,
        sample_interval=sample_interval,
    )
    # The measured window is the sending window: draining the last requests is not steady state.
    end = float(duration if duration is not None else arrivals[-1])
    summary = _summarise(result, request_rate, end)
    summary.update(
        engine=engine,
        profile=profile.name,
        profile_source=profile.source,
        workload=workload.name,
        request_rate=request_rate,
        burstiness=burstiness,
        replicas=replicas,
        dispatch=dispatch,
        seed=seed,
        config={
            "kv_tokens": profile.kv_tokens,
            "block_size": profile.block_size,
            "chunk_size": profile.chunk_size,
            "token_budget": profile.token_budget,
            "max_running": profile.max_running,
            "iteration_time": profile.iteration_time,
            "max_tokens_cap": profile.max_tokens_cap,
            "separate_prefill_decode": profile.separate_prefill_decode,
        },
    )
    if output_dir is not None:
        write_frames(output_dir, {"records": result.records, "timeseries": result.timeseries})
        write_json(summary, f"{output_dir}/summary.json")
    if as_json:
        write_json(summary)
        return
    click.echo(_render(summary, profile_limits=_limits(profile)))


def _summarise(result: SimulationResult, rate: float, end: float) -> dict:
    rec, ts = result.records, result.timeseries
    leave = rec["finished"].to_numpy(dtype=np.float64, copy=True)
    leave[leave > end] = np.nan
    verdict = stability_verdict(rec["arrival"].to_numpy(), leave, rate=rate, end=end)
    done = rec[rec["finished"].notna()]
    kv_capacity = result.summary["kv_capacity"]
    kv_share = ts["kv_used"] / kv_capacity
    latency = {key: _distribution(done[key]) for key in LATENCIES}
    return {
        "simulated": True,
        "requests": int(len(rec)),
        "completed": int(result.summary["completed"]),
        "throughput": verdict.departure_rate,
        "throughput_ci": [verdict.departure_lo, verdict.departure_hi],
        "warmup_end": verdict.warmup_end,
        "end": end,
        "simulated_seconds": result.summary["end_time"],
        "verdict": verdict.verdict.value,
        "verdict_reason": verdict.reason,
        "queue": {
            "mean_in_system": verdict.mean_in_system,
            "max_in_system": verdict.max_in_system,
            "final_in_system": verdict.final_in_system,
            "growth_per_second": verdict.slope,
            "growth_ci": [verdict.slope_lo, verdict.slope_hi],
        },
        "kv": {
            "capacity_tokens": kv_capacity,
            "mean_used_share": float(kv_share.mean()) if len(ts) else math.nan,
            "peak_used_share": result.summary["peak_kv_tokens"] / kv_capacity,
        },
        "preemptions": int(result.summary["preemptions"]),
        "iterations": int(result.summary["iterations"]),
        "iteration_time": {
            "mean": result.summary["busy_time"] / max(1, result.summary["iterations"]),
            "median": float(ts["iteration_time"][ts["iteration_time"] > 0].median())
            if len(ts)
            else math.nan,
        },
        "latency": latency,
    }


def _distribution(values: pd.Series) -> dict:
    v = values.dropna().to_numpy()
    if len(v) == 0:
        return {"mean": math.nan, **{f"p{p}": math.nan for p in PERCENTILES}}
    return {"mean": float(v.mean()), **{f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES}}


def _limits(profile) -> str:
    parts = [
        f"M = {profile.kv_tokens:,} tokens in pages of {profile.block_size}",
        f"ŝ = {profile.chunk_size}",
    ]
    if profile.token_budget < UNLIMITED:
        parts.append(f"budget {profile.token_budget}")
    if profile.max_running < UNLIMITED:
        parts.append(f"≤ {profile.max_running} running")
    parts.append(profile.iteration_time.formula())
    return ", ".join(parts)


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _render(s: dict, *, profile_limits: str) -> str:
    pct = " ".join(f"p{p}" for p in PERCENTILES)
    lo, hi = s["throughput_ci"]
    rows = [
        ("profile", f"{s['profile']} × {s['replicas']}", profile_limits),
        (
            "throughput",
            highlight(estimate(s["throughput"], 0.0, "req/s")),
            f"[{number(lo)}, {number(hi)}] 95% CI, after {number(s['warmup_end'], 0)} s warm-up (SIMULATED)",
        ),
        ("verdict", highlight(s["verdict"], _VERDICT_COLORS[s["verdict"]]), s["verdict_reason"]),
        (
            "in system",
            f"mean {number(s['queue']['mean_in_system'], 1)}, max {number(s['queue']['max_in_system'], 0)}, "
            f"at end {number(s['queue']['final_in_system'], 0)}",
            f"growth {s['queue']['growth_per_second']:+.3g}/s",
        ),
        (
            "KV used",
            f"mean {s['kv']['mean_used_share']:.1%}, peak {s['kv']['peak_used_share']:.1%}",
            f"of {s['kv']['capacity_tokens']:,} tokens",
        ),
        (
            "preemptions",
            f"{s['preemptions']:,}",
            f"{s['preemptions'] / max(1, s['requests']):.3f} per request",
        ),
        (
            "iteration",
            f"median {_seconds(s['iteration_time']['median'])}, mean {_seconds(s['iteration_time']['mean'])}",
            f"{s['iterations']:,} iterations",
        ),
    ]
    for key, label in LATENCIES.items():
        d = s["latency"][key]
        rows.append(
            (
                label,
                " / ".join(_seconds(d[f"p{p}"]) for p in PERCENTILES),
                f"{pct}, mean {_seconds(d['mean'])}",
            )
        )
    title = (
        f"SIMULATED {s['engine']}: {s['workload']} at λ = {s['request_rate']:g} req/s, "
        f"{s['requests']:,} requests, {s['completed']:,} completed (not a GPU measurement)"
    )
    return block(title, rows)
