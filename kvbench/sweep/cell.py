"""One cell of a sweep evaluated: both theories, the simulated boundary, provisioning.

`evaluate_cell` is the whole seam between a sweep and its executors: a pure function of the
cell's parameters (seeded, no files, no globals) that returns a plain record, so a process pool
and a Ray cluster compute the same row for the same cell. `guarded` turns a cell's error into a
failed row, so one bad cell never stops the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kvbench.backends.sim import SimBackend
from kvbench.benchmark.saturated_rate import measure_saturated_rate
from kvbench.benchmark.search import find_boundary
from kvbench.cost import at_rate
from kvbench.engine_theory import beside_paper
from kvbench.errors import KvbenchError
from kvbench.profile import build_profile
from kvbench.theory import replicas_needed
from kvbench.workload import load_workload

CellFunction = Callable[[dict[str, Any]], dict[str, Any]]

# What provisioning adds to a row (empty without a target rate).
PROVISIONING_FIELDS = (
    "replicas_needed",
    "replicas_needed_engine_aware",
    "replicas_needed_paper",
    "gpus_needed",
    "usd_per_hour",
    "usd_per_million_requests",
)
# What a cell's row adds to its parameters, in order; a failed row has them empty.
RESULT_FIELDS = (
    "status",
    "error",
    "simulated",
    "M",
    "mu_paper",
    "mu_engine_aware",
    "binding",
    "iteration_time",
    "delta",
    "lambda_lower",
    "lambda_upper",
    "lambda_star",
    "lambda_star_per_replica",
    "width",
    "reached",
    "stop_reason",
    "engine_seconds",
    *PROVISIONING_FIELDS,
    "cell_seconds",
)


def evaluate_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """The row of one cell (see kvbench.sweep.grid for its fields). Theories are per replica;
    λ* is the measured total over the cell's replicas (round-robin), and per replica."""
    started = time.perf_counter()
    profile = build_profile(
        cell["rule"], cell["profile"], kv_tokens=cell["kv_tokens"], **cell["settings"]
    )
    workload = load_workload(cell["workload"])
    prediction, paper = beside_paper(profile, workload)
    g, seed = cell["replicas"], cell["seed"]

    def backend(s: int) -> SimBackend:
        return SimBackend(profile, name=f"sim:{profile.policy}", replicas=g, seed=s)

    if cell["method"] == "backlog":
        result = measure_saturated_rate(
            backend(seed),
            workload,
            cell["workload"],
            precision=cell["precision"],
            confidence=cell["confidence"],
            max_engine_seconds=cell["max_engine_seconds"],
            seed=seed,
            replicas=g,
        )
        star = result.capacity_estimate
    else:
        result = find_boundary(
            backend,
            workload,
            cell["workload"],
            precision=cell["precision"],
            confidence=cell["confidence"],
            max_engine_seconds=cell["max_engine_seconds"],
            seed=seed,
            burstiness=cell["burstiness"],
            replicas=g,
        )
        star = (
            None
            if result.lower is None or result.upper is None
            else (result.lower + result.upper) / 2.0
        )
    row = {
        **cell,
        "status": "ok",
        "error": None,
        "simulated": True,
        "M": profile.kv_tokens,
        "mu_paper": paper.mu,
        "mu_engine_aware": prediction.mu,
        "binding": prediction.binding,
        "iteration_time": prediction.iteration_time,
        "delta": paper.delta,
        "lambda_lower": result.lower,
        "lambda_upper": result.upper,
        "lambda_star": star,
        "lambda_star_per_replica": None if star is None else star / g,
        "width": result.width,
        "reached": result.reached,
        "stop_reason": result.stop_reason,
        "engine_seconds": result.engine_seconds,
        **_provision(cell, None if star is None else star / g, prediction.mu, paper.mu),
    }
    row["cell_seconds"] = time.perf_counter() - started
    return row


def _provision(
    cell: dict[str, Any], per_replica: float | None, mu_engine: float, mu_paper: float
) -> dict[str, Any]:
    """Replicas for the target rate at the target utilisation, by the measured λ* and by each
    theory (kvbench.theory.replicas_needed), and what the measured count costs (kvbench.cost:
    per hour, and per million requests at the target rate)."""
    rate, rho = cell["target_rate"], cell["target_utilization"]
    out: dict[str, Any] = dict.fromkeys(PROVISIONING_FIELDS)
    if rate is None:
        return out
    out["replicas_needed_engine_aware"] = replicas_needed(rate, mu_engine, rho)
    out["replicas_needed_paper"] = replicas_needed(rate, mu_paper, rho)
    if per_replica is not None and per_replica > 0:
        replicas = replicas_needed(rate, per_replica, rho)
        out["replicas_needed"] = replicas
        out["gpus_needed"] = replicas * cell["gpus_per_replica"]
        if cell["gpu_price"] is not None:
            cost = at_rate(rate, None, gpus=out["gpus_needed"], gpu_price=cell["gpu_price"])
            out["usd_per_hour"] = cost["usd_per_hour"]
            out["usd_per_million_requests"] = cost["usd_per_million_requests"]
    return out


def failed_row(cell: dict[str, Any], error: str) -> dict[str, Any]:
    """The row of a cell that did not finish: its parameters, status "failed" and why."""
    row: dict[str, Any] = {**cell, **dict.fromkeys(RESULT_FIELDS)}
    row.update(status="failed", error=" ".join(error.split()), simulated=True)
    return row


def guarded(fn: CellFunction, cell: dict[str, Any]) -> dict[str, Any]:
    """`fn(cell)`, or the failed row naming the exception (a worker that dies is the
    executor's to retry; an exception is the cell's own answer, and re-running it gives the
    same one)."""
    try:
        return fn(cell)
    except KvbenchError as err:
        return failed_row(cell, str(err))
    except Exception as err:  # any error of one cell is its row, never the sweep's end
        return failed_row(cell, f"{type(err).__name__}: {err}")
