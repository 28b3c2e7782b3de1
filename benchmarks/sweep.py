"""Cells per minute of a 200-cell simulated sweep: one process (sequential) against the local
process pool and Ray over the same cores; Ray's per-task overhead; a projection to 10,000 cells
on a 64-core cluster.

    python benchmarks/sweep.py [--jobs 2] [--out benchmarks/results/sweep.json]

The grid: sim:vllm, sim:sglang, sim:trtllm, sim:ideal × M = 8192, 16384, 32768, 65536, 131072
× seeds 0–9 on uniform:32-256,32-256 (the vidur-a100 preset, the default search to 0.5%): 200
cells of ~0.1–1 s each, so the benchmark takes a few minutes. (On the embedded default
uniform:1-32,1-32 at M ≤ 4096 a cell costs ~20 ms, where any executor's per-task cost shows;
at the paper's setting, pd-1:1 with M = 131,000 to 5%, ~3 s.) Every executor writes its rows through the sweep's
store (cells.jsonl, flushed per row) as `kvbench sweep` does, and must give the same rows as
the sequential run. Ray's cluster is started before its timing starts (its start-up is reported
on its own), as a sweep on an existing cluster would see it. The machine's load average is
recorded before and after each run: the figures mean little under other work. Every process
runs one BLAS thread (the pool's and Ray's workers do; this process is set so before numpy
loads), so the ratios compare executors, not BLAS threading.
"""

from __future__ import annotations

import os

# kvbench.sweep.pool.THREAD_VARIABLES, set before anything imports numpy
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from kvbench.sweep.grid import build_grid  # noqa: E402
from kvbench.sweep.pool import default_jobs, run_local  # noqa: E402
from kvbench.sweep.ray_cluster import run_ray  # noqa: E402
from kvbench.sweep.store import SweepStore  # noqa: E402

GRID = {
    "engine": ["sim:vllm", "sim:sglang", "sim:trtllm", "sim:ideal"],
    "workload": ["uniform:32-256,32-256"],
    "kv_tokens": ["8192", "16384", "32768", "65536", "131072"],
    "seed": [str(s) for s in range(10)],
    "precision": 0.005,
}
NOOP_TASKS = 400


def noop(cell: dict[str, Any]) -> dict[str, Any]:
    return {"key": cell["key"]}


def timed(name: str, execute) -> dict[str, Any]:
    """Runs `execute(on_row)` with rows going to a fresh store; wall time and the rows."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SweepStore(Path(tmp) / name, resume=False)
        appends: list[float] = []

        def on_row(row: dict[str, Any]) -> None:
            t = time.perf_counter()
            store.append(row)
            appends.append(time.perf_counter() - t)

        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        execute(on_row)
        wall = time.perf_counter() - t0
        store.close()
        rows = list(store.rows.values())
    return {
        "name": name,
        "wall_seconds": wall,
        "cells": len(rows),
        "cells_per_minute": 60 * len(rows) / wall,
        "cell_seconds_sum": sum(r.get("cell_seconds") or 0.0 for r in rows),
        "append_seconds_mean": statistics.fmean(appends) if appends else None,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "rows": rows,
    }


def comparable(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: {k: v for k, v in r.items() if k != "cell_seconds"} for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=default_jobs())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cells = build_grid({}, GRID, "benchmark").cells()
    assert len(cells) == 200
    jobs = args.jobs
    print(f"{len(cells)} cells, {jobs} jobs, load average {os.getloadavg()}")

    runs = [timed("sequential", lambda on_row: run_local(cells, on_row, jobs=1))]
    runs.append(timed("pool", lambda on_row: run_local(cells, on_row, jobs=jobs)))

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=jobs, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        # warm the workers (their first task imports kvbench), as a long sweep amortises it
        run_ray(cells[:jobs], lambda row: None)
        runs.append(timed("ray", lambda on_row: run_ray(cells, on_row)))
        noops = [{"key": f"noop-{i}"} for i in range(NOOP_TASKS)]
        noop_run = timed("ray no-op", lambda on_row: run_ray(noops, on_row, fn=noop))
    finally:
        ray.shutdown()

    reference = comparable(runs[0]["rows"])
    for r in runs[1:]:
        r["rows_identical_to_sequential"] = comparable(r["rows"]) == reference
    cell_cost = runs[0]["cell_seconds_sum"] / len(cells)
    # A no-op task's share of the cluster: what each task costs Ray beyond the cell itself.
    ray_overhead_noop = noop_run["wall_seconds"] * jobs / NOOP_TASKS
    # In the sweep itself: core-seconds the cluster spent beyond the cells' own compute.
    ray = runs[2]
    ray_overhead_sweep = (ray["wall_seconds"] * jobs - ray["cell_seconds_sum"]) / len(cells)
    sequential = runs[0]["wall_seconds"]
    summary: dict[str, Any] = {
        "cells": len(cells),
        "jobs": jobs,
        "cpu": os.cpu_count(),
        "cell_seconds_mean": cell_cost,
        "ray_start_seconds": ray_start,
        "ray_overhead_per_task_noop": ray_overhead_noop,
        "ray_overhead_per_task_sweep": ray_overhead_sweep,
        "ray_overhead_fraction_noop": ray_overhead_noop / cell_cost,
        "ray_overhead_fraction_sweep": ray_overhead_sweep / cell_cost,
        "append_seconds_mean": runs[0]["append_seconds_mean"],
    }
    for r in runs:
        summary[r["name"]] = {k: v for k, v in r.items() if k not in ("rows", "name")}
        summary[r["name"]]["speedup"] = sequential / r["wall_seconds"]
    # 10,000 cells on 64 cores: each core as fast as one here, cells as cheap as these, one
    # task per core at a time, the per-task overhead of this Ray run, and the driver's row
    # appends (serial) overlapping the work.
    per_cell = cell_cost + max(ray_overhead_noop, ray_overhead_sweep)
    compute = 10_000 * per_cell / 64
    driver = 10_000 * (runs[0]["append_seconds_mean"] or 0.0)
    summary["projection_10000_cells_64_cores_seconds"] = max(compute, driver) + ray_start
    summary["projection_driver_seconds"] = driver
    for r in runs:
        print(
            f"{r['name']:>10}: {r['wall_seconds']:6.1f} s  {r['cells_per_minute']:7.0f} cells/min"
            f"  ×{sequential / r['wall_seconds']:.2f}  load {r['load_before']:.2f}→"
            f"{r['load_after']:.2f}"
            + (
                f"  rows identical: {r['rows_identical_to_sequential']}"
                if "rows_identical_to_sequential" in r
                else ""
            )
        )
    print(
        f"cell cost {cell_cost * 1000:.1f} ms; Ray start {ray_start:.1f} s; Ray overhead per task "
        f"{ray_overhead_noop * 1000:.2f} ms (no-op tasks, {100 * ray_overhead_noop / cell_cost:.1f}%"
        f" of a cell), {ray_overhead_sweep * 1000:.2f} ms in the sweep "
        f"({100 * ray_overhead_sweep / cell_cost:.1f}%); row append "
        f"{1000 * (runs[0]['append_seconds_mean'] or 0):.3f} ms"
    )
    print(
        f"projection: 10,000 cells on 64 cores ≈ "
        f"{summary['projection_10000_cells_64_cores_seconds']:.0f} s"
    )
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
