"""`kvbench calibrate`: fit an engine's iteration-time model, with standard errors."""

from __future__ import annotations

from pathlib import Path

import click

from kvbench.calibration import Calibration, fit_iteration_time, load_windows
from kvbench.cli import options
from kvbench.errors import KvbenchError
from kvbench.export.json import write_json
from kvbench.output.terminal import Row, block, estimate, highlight, number
from kvbench.profile import DEFAULT_HARDWARE, POLICIES, build_profile


@click.command(
    epilog="""\b
Examples:
  kvbench calibrate --backend sim:vllm --output vllm-fit.json
  kvbench theory --engine vllm --iteration-model vllm-fit.json
  kvbench calibrate --windows trtllm-iterations.jsonl --json   # records saved from TRT-LLM /metrics
"""
)
@click.option(
    "--backend",
    default=None,
    metavar="sim:ENGINE",
    help=f"Calibrate a simulated engine ({', '.join('sim:' + p for p in POLICIES)}) with short runs "
    "at 0.5, 0.8 and 1.1× its engine-aware μ.",
)
@click.option(
    "--windows",
    "windows_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Fit an engine's own timings instead: TensorRT-LLM iteration records (JSON list or JSON "
    "lines, as /metrics returns them) or CSV windows (iterations, batch_tokens, kv_tokens, elapsed).",
)
@options.workload()
@options.profile_preset()
@options.kv_tokens("default: the profile's")
@options.chunk_size("default: the profile's")
@click.option(
    "--num-prompts",
    type=int,
    default=3_000,
    show_default=True,
    help="Requests over all calibration runs.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Save the model (for `kvbench theory --iteration-model FILE`).",
)
@options.json_output()
def calibrate(
    backend: str | None,
    windows_path: str | None,
    workload_spec: str,
    profile_name: str | None,
    kv_tokens: int | None,
    chunk_size: int | None,
    num_prompts: int,
    seed: int,
    output: str | None,
    as_json: bool,
) -> None:
    """Fit b = c0 + c1·(tokens in the batch) + c2·(KV tokens held) to an engine's iteration
    timings by least squares, with heteroscedasticity-robust standard errors, and the lognormal
    noise σ around it. The engine-aware theory evaluates this model at its operating point."""
    if (backend is None) == (windows_path is None):
        raise click.UsageError("give exactly one of --backend sim:ENGINE or --windows FILE")
    if windows_path is not None:
        calibration = Calibration(
            fit=fit_iteration_time(load_windows(windows_path)), backend=windows_path
        )
    else:
        assert backend is not None  # exactly one of the two, checked above
        from kvbench.benchmark.calibrate import calibrate_simulated
        from kvbench.workload import load_workload

        kind, _, engine = backend.partition(":")
        if kind != "sim" or engine not in POLICIES:
            raise KvbenchError(
                f"cannot calibrate backend {backend!r}: choose sim:ENGINE ({', '.join(POLICIES)}), "
                "or save a real engine's iteration records and pass --windows FILE"
            )
        profile = build_profile(
            engine,
            profile_name or DEFAULT_HARDWARE.name,
            kv_tokens=kv_tokens,
            chunk_size=chunk_size,
        )
        calibration = calibrate_simulated(
            profile, load_workload(workload_spec), num_prompts=num_prompts, seed=seed
        )
    record = calibration.to_json()
    if output is not None:
        try:
            Path(output).write_text(_dumps(record))
        except OSError as err:
            raise KvbenchError(f"{output}: cannot write ({err.strerror})") from None
    if as_json:
        write_json(record)
        return
    fit = calibration.fit
    se = fit.stderr
    label = " (SIMULATED)" if calibration.simulated else ""
    rows: list[Row] = [
        ("c0", highlight(estimate(fit.c0 * 1e3, se[0] * 1e3, "ms")), "per iteration"),
        (
            "c1",
            estimate(fit.c1 * 1e6, se[1] * 1e6, "µs/token", 3),
            "per token in the batch" + _fixed("c1", fit),
        ),
        (
            "c2",
            estimate(fit.c2 * 1e9, se[2] * 1e9, "ns/token", 3),
            "per KV token held" + _fixed("c2", fit),
        ),
        ("noise σ", number(fit.noise_sigma, 3), "log(observed / model)"),
        (
            "R²",
            number(fit.r_squared, 4),
            f"{fit.n_iterations:,} iterations in {fit.n_windows:,} windows",
        ),
    ]
    if calibration.preemption_waste is not None:
        rows.append(
            (
                "preemption waste",
                f"{calibration.preemption_waste:,.0f} tokens/request",
                "recomputed, overloaded run",
            )
        )
    if output is not None:
        rows.append(("saved", output))
    click.echo(block(f"Iteration-time model{label}: {fit.source or calibration.backend}", rows))


def _fixed(term: str, fit) -> str:
    return " (not separable in these data: held at 0)" if term in fit.fixed else ""


def _dumps(record: dict) -> str:
    import json

    return json.dumps(record, indent=2) + "\n"
