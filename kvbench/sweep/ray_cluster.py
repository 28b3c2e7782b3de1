"""The Ray executor: each cell a Ray task on a local or remote cluster (the `kvbench[ray]` extra;
the session: kvbench.ray_session). A task whose worker dies (killed, out of memory, node lost) is retried by Ray
up to `max_retries` times; one that still fails gets a failed row. A cell's own error is a row
already (kvbench.sweep.cell.guarded), so it is not retried: it would fail the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from kvbench.ray_session import finished, ray_session
from kvbench.sweep.cell import CellFunction, evaluate_cell, failed_row, guarded
from kvbench.sweep.pool import DEFAULT_RETRIES


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
    with ray_session(address, num_cpus) as ray:
        task = ray.remote(num_cpus=1, max_retries=max_retries)(guarded)
        shared_fn = ray.put(fn)
        pending = {task.remote(shared_fn, cell): cell for cell in cells}
        with contextlib.closing(finished(ray, pending)) as rows:
            for cell, row, failure in rows:
                if failure is not None:
                    row = failed_row(
                        cell, f"Ray task failed after {max_retries + 1} attempts: {failure}"
                    )
                on_row(row)
