"""The local executor: cells on this machine's cores, one process per job.

`jobs=1` evaluates the cells one after another in this process. Otherwise a process pool runs
them (forkserver: workers start from a clean process with kvbench imported, not a fork of one
that may hold threads); a worker that dies breaks the pool, so the cells it held are given to a
new pool, each up to `max_retries` more times, then recorded as failed.

Each worker is one core's job, so its BLAS runs one thread (as Ray's workers do), unless the
user set the thread count: OpenBLAS's threads on the theory's small dot products cost a cell ten
times its single-thread time on a busy 2-core machine (22 ms against 245 ms, measured), and N
workers each starting N threads oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from kvbench.sweep.cell import CellFunction, evaluate_cell, failed_row, guarded

DEFAULT_RETRIES = 3
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_local(
    cells: list[dict[str, Any]],
    on_row: Callable[[dict[str, Any]], None],
    *,
    jobs: int,
    fn: CellFunction = evaluate_cell,
    max_retries: int = DEFAULT_RETRIES,
) -> None:
    """Evaluate every cell with `fn`, handing each row to `on_row` as it finishes."""
    if jobs == 1:
        for cell in cells:
            on_row(guarded(fn, cell))
        return
    with one_blas_thread():
        _run_pool(cells, on_row, jobs=jobs, fn=fn, max_retries=max_retries)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """The environment the pool's processes start with (the forkserver, and so its workers,
    keep it): one BLAS thread each, where the user has not chosen."""
    unset = [v for v in THREAD_VARIABLES if v not in os.environ]
    os.environ.update(dict.fromkeys(unset, "1"))
    try:
        yield
    finally:
        for v in unset:
            os.environ.pop(v, None)


def _run_pool(
    cells: list[dict[str, Any]],
    on_row: Callable[[dict[str, Any]], None],
    *,
    jobs: int,
    fn: CellFunction,
    max_retries: int,
) -> None:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["kvbench.sweep.cell"])
    attempts = dict.fromkeys((c["key"] for c in cells), 0)
    todo = list(cells)
    while todo:
        lost: list[dict[str, Any]] = []
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context)
        running: dict[Future, dict[str, Any]] = {}
        try:
            running.update({pool.submit(guarded, fn, cell): cell for cell in todo})
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    cell = running.pop(future)
                    try:
                        on_row(future.result())
                    except BrokenProcessPool:
                        lost.append(cell)
        except KeyboardInterrupt:
            # cells not started are dropped; those running finish (a Ctrl-C at a terminal
            # stops them too) and what they computed is kept
            pool.shutdown(wait=True, cancel_futures=True)
            for future in running:
                if not future.cancelled() and future.exception() is None:
                    on_row(future.result())
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        todo = []
        for cell in lost:
            attempts[cell["key"]] += 1
            if attempts[cell["key"]] > max_retries:
                on_row(
                    failed_row(
                        cell,
                        f"worker process lost on each of {attempts[cell['key']]} attempts",
                    )
                )
            else:
                todo.append(cell)
