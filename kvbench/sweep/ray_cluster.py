"""The Ray executor: each cell a Ray task on a local or remote cluster (the `kvbench[ray]` extra).

Without an address Ray is started here over `num_cpus` cores and shut down afterwards; with one
(`ray://HOST:10001` or `HOST:6379`) kvbench connects to that cluster, whose nodes need the same
kvbench installed. A task whose worker dies (killed, out of memory, node lost) is retried by Ray
up to `max_retries` times; one that still fails gets a failed row. A cell's own error is a row
already (kvbench.sweep.cell.guarded), so it is not retried: it would fail the same way.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.sweep.cell import CellFunction, evaluate_cell, failed_row, guarded
from kvbench.sweep.pool import DEFAULT_RETRIES

EXTRA = "pip install 'kvbench[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise KvbenchError(f"--ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """A cluster address kvbench can reach (a TCP connection to its head), checked before
    `ray.init`, which otherwise retries an unreachable head for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise KvbenchError(f"--ray {address}: give HOST:PORT or ray://HOST:PORT (or nothing)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise KvbenchError(
            f"--ray {address}: cannot reach the Ray cluster's head: {err.strerror or err}"
        ) from None


def run_ray(
    cells: list[dict[str, Any]],
    on_row: Callable[[dict[str, Any]], None],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    fn: CellFunction = evaluate_cell,
    max_retries: int = DEFAULT_RETRIES,
) -> None:
    """Evaluate every cell with `fn` as a Ray task, handing each row to `on_row` as it
    finishes. A Ray session already open in this process (a test's cluster) is used as is."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            if address is None:
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    logging_level="ERROR",
                    log_to_driver=False,
                )
            else:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except Exception as err:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise KvbenchError(f"cannot start {where}: {' '.join(str(err).split())}") from None
    pending: dict[Any, dict[str, Any]] = {}
    try:
        task = ray.remote(num_cpus=1, max_retries=max_retries)(guarded)
        shared_fn = ray.put(fn)
        pending.update({task.remote(shared_fn, cell): cell for cell in cells})
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as err:
                    reason = " ".join(str(err).split())[:300]
                    row = failed_row(
                        cell, f"Ray task failed after {max_retries + 1} attempts: {reason}"
                    )
                on_row(row)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
