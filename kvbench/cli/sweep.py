"""`kvbench sweep`: a capacity-planning grid of simulated engines, cell by cell."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from kvbench.cli import options
from kvbench.cost import Pricing
from kvbench.errors import KvbenchError
from kvbench.export import sweep_html
from kvbench.export.json import write_json
from kvbench.output.progress import echo_progress
from kvbench.output.sweep import cell_lines
from kvbench.output.terminal import block, highlight, number
from kvbench.sweep.grid import build_grid, load_grid_file, split_values
from kvbench.sweep.pool import DEFAULT_RETRIES, default_jobs, run_local
from kvbench.sweep.store import SweepStore


def _axis(name: str, metavar: str, help_text: str, *, commas: bool = True):
    how = "Comma-separated or repeated" if commas else "Repeated (a spec has commas of its own)"
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        multiple=True,
        metavar=metavar,
        help=f"{help_text} {how}: one grid axis.",
    )


@click.command(
    epilog="""\b
Examples:
  kvbench sweep --engine sim:vllm,sim:sglang,sim:trtllm --workload uniform:1-32,1-32 --kv-tokens 1024,2048,4096 --seed 0,1 --output sweep-out
  kvbench sweep --grid grid.toml --target-rate 400 --gpu-price 2.5 --output sweep-out
  kvbench sweep --grid grid.toml --output sweep-out --resume          # after a stop: only the missing cells
  kvbench sweep --grid grid.toml --output sweep-out --ray             # on a local Ray cluster
  kvbench sweep --grid grid.toml --output sweep-out --ray ray://head:10001
"""
)
@click.option(
    "--grid",
    "grid_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="A TOML file of the grid: keys engine, workload, kv_tokens, profile, replicas, "
    "burstiness, seed (a value or a list each) and method, precision, max_engine_seconds, "
    "confidence, target_rate, target_utilization, gpu_price, gpus_per_replica; a flag given "
    "replaces the file's value.",
)
@_axis(
    "engine",
    "sim:RULE[:KEY=V,…]",
    "Simulated engines (rules vllm, sglang, trtllm, ideal), each optionally with profile "
    "settings, e.g. sim:vllm:token_budget=4096,max_running=128 (default: sim:vllm).",
)
@_axis(
    "workload",
    "SPEC|FILE",
    f"Workloads: {options.WORKLOAD_HELP} (default: pd-1:1).",
    commas=False,
)
@_axis("kv_tokens", "M", "KV-cache capacities in tokens (default: the preset's).")
@_axis(
    "profile",
    "NAME",
    "Iteration-time presets (kvbench.profile; default: vidur-a100-llama3-8b).",
)
@_axis("replicas", "G", "Replicas behind round-robin dispatch (default: 1).")
@_axis(
    "burstiness",
    "SHAPE",
    "Gamma shapes of inter-arrival gaps, with --method open-loop (default: 1, Poisson).",
)
@_axis("seed", "N", "Seeds of the simulator and the search (default: 0).")
@click.option(
    "--method",
    type=click.Choice(["backlog", "open-loop"]),
    default=None,
    help="The boundary search, as in `kvbench boundary` (default: backlog).",
)
@click.option(
    "--precision", type=float, default=None, help="Relative bracket width (default 0.05)."
)
@click.option(
    "--max-engine-seconds",
    type=float,
    default=None,
    metavar="S",
    help="Engine-time budget of each cell's search (default 43200).",
)
@click.option(
    "--confidence", type=float, default=None, help="Confidence of every verdict (default 0.95)."
)
@click.option(
    "--target-rate",
    type=float,
    default=None,
    metavar="λ",
    help="Traffic to provision for: replicas needed by the measured λ* and by each theory.",
)
@click.option(
    "--target-utilization",
    type=float,
    default=None,
    metavar="ρ",
    help="Highest fraction of a replica's capacity to plan for (default 0.9).",
)
@options.pricing()
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    required=True,
    metavar="DIR",
    help="Where cells.jsonl (a row per finished cell, as each finishes), the table "
    "(cells.parquet, or cells.csv without pyarrow) and report.html go.",
)
@click.option("--resume", is_flag=True, help="Continue the sweep in --output: skip finished cells.")
@click.option(
    "--jobs",
    type=int,
    default=None,
    metavar="N",
    help="Local processes (default: every core; 1 runs the cells in this process).",
)
@options.ray_address(
    "Run the cells as Ray tasks (the kvbench[ray] extra): on a Ray cluster started here "
    "over --jobs cores, or on the cluster at ADDRESS (its nodes need kvbench installed).",
)
@click.option(
    "--max-retries",
    type=int,
    default=DEFAULT_RETRIES,
    show_default=True,
    help="Times a cell whose worker died is run again before it is recorded as failed.",
)
@options.json_output()
def sweep(
    grid_file: str | None,
    engine: tuple[str, ...],
    workload: tuple[str, ...],
    kv_tokens: tuple[str, ...],
    profile: tuple[str, ...],
    replicas: tuple[str, ...],
    burstiness: tuple[str, ...],
    seed: tuple[str, ...],
    method: str | None,
    precision: float | None,
    max_engine_seconds: float | None,
    confidence: float | None,
    target_rate: float | None,
    target_utilization: float | None,
    pricing: Pricing,
    output: str,
    resume: bool,
    jobs: int | None,
    ray_address: str | None,
    max_retries: int,
    as_json: bool,
) -> None:
    """Evaluate a grid of simulated engines cell by cell: the paper's μ, the engine-aware μ and
    its binding constraint, the simulated boundary λ* (the default search of `kvbench
    boundary`), and with --target-rate the replicas (and --gpu-price the cost) it takes.

    Each finished cell is appended to DIR/cells.jsonl at once, so a stopped sweep keeps what
    finished and --resume runs only the rest (cells are matched by a key of their parameters).
    The cells run on every local core, or as Ray tasks with --ray; a seeded cell gives the same
    row either way. A cell that fails (or whose worker dies more than --max-retries times) gets
    a failed row and the sweep exits 1 at the end. All results are SIMULATED."""
    flags: dict[str, Any] = {
        "engine": split_values(engine),
        "workload": list(workload),
        "kv_tokens": split_values(kv_tokens),
        "profile": split_values(profile),
        "replicas": split_values(replicas),
        "burstiness": split_values(burstiness),
        "seed": split_values(seed),
        "method": method,
        "precision": precision,
        "max_engine_seconds": max_engine_seconds,
        "confidence": confidence,
        "target_rate": target_rate,
        "target_utilization": target_utilization,
        "gpu_price": pricing.gpu_price,
        "gpus_per_replica": pricing.gpus_per_replica,
    }
    file_values = load_grid_file(grid_file) if grid_file else {}
    grid = build_grid(file_values, flags, grid_file or "")
    if jobs is not None and jobs < 1:
        raise KvbenchError(f"--jobs must be at least 1, got {jobs}")
    if ray_address and jobs is not None:
        raise KvbenchError(
            "--jobs sets the cores of a Ray cluster kvbench starts; a cluster at an address "
            "runs on its own CPUs"
        )
    if max_retries < 0:
        raise KvbenchError(f"--max-retries must be at least 0, got {max_retries}")
    if ray_address is not None:
        from kvbench.ray_session import check_address, import_ray

        import_ray()
        if ray_address:
            check_address(ray_address)
    cells = grid.cells()
    store = SweepStore(Path(output), resume=resume)
    quiet = as_json or not sys.stderr.isatty()
    done_before = store.finished()
    todo = [c for c in cells if c["key"] not in done_before]
    store.write_grid(grid.to_dict())
    started = time.perf_counter()
    count = [0]

    def on_row(row: dict[str, Any]) -> None:
        store.append(row)
        count[0] += 1
        echo_progress(f"[{count[0]}/{len(todo)}] {_row_line(row)}", quiet=quiet)

    try:
        if ray_address is not None:
            from kvbench.sweep.ray_cluster import run_ray

            run_ray(
                todo,
                on_row,
                address=ray_address or None,
                num_cpus=jobs,
                max_retries=max_retries,
            )
        else:
            run_local(todo, on_row, jobs=jobs or default_jobs(), max_retries=max_retries)
    except KeyboardInterrupt:
        store.close()
        echo_progress(
            f"{count[0]} of {len(todo)} cells finished, kept in {store.rows_path}; "
            "--resume runs the rest"
        )
        raise
    store.close()
    elapsed = time.perf_counter() - started
    frame = store.table([c["key"] for c in cells])
    table = store.write_table(frame)
    report = sweep_html.write(frame, grid.to_dict(), store.directory)
    failed = int((frame["status"] != "ok").sum())
    record = {
        "simulated": True,
        "cells": len(cells),
        "ran": len(todo),
        "skipped": len(cells) - len(todo),
        "failed": failed,
        "seconds": elapsed,
        "cells_per_minute": 60 * len(todo) / elapsed if elapsed > 0 and todo else None,
        "executor": "ray" if ray_address is not None else "local",
        "rows": str(store.rows_path),
        "table": str(table),
        "report": str(report),
    }
    if as_json:
        write_json(record)
    else:
        rows = [
            ("cells", f"{len(cells)}", f"{len(todo)} run, {len(cells) - len(todo)} already done"),
            (
                "failed",
                highlight(str(failed), "red" if failed else "green"),
                "see the status column" if failed else "",
            ),
            ("time", f"{elapsed:.1f} s", f"{record['executor']} executor"),
            ("table", str(table)),
            ("report", str(report)),
        ]
        click.echo(block("Sweep (SIMULATED)", rows))
        shown = cell_lines(frame.to_dict("records"))
        if shown:
            click.echo("\n".join(["", *shown]))
    sys.exit(1 if failed else 0)


def _row_line(row: dict[str, Any]) -> str:
    what = (
        f"{row['engine']} {row['workload']} M={row['kv_tokens'] or 'preset'} "
        f"×{row['replicas']} seed {row['seed']}"
    )
    if row["status"] != "ok":
        return f"{what}: FAILED ({row['error']})"
    star = row["lambda_star"]
    shown = "no estimate" if star is None else f"{number(star)} req/s"
    return (
        f"{what}: λ* = {shown} (SIMULATED), μ engine-aware "
        f"{number(row['mu_engine_aware'] * row['replicas'])}, paper "
        f"{number(row['mu_paper'] * row['replicas'])}"
    )
