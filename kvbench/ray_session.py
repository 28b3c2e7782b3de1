"""A Ray session for kvbench's distributed work (`kvbench sweep --ray`, `kvbench compare
--ray`): the `kvbench[ray]` extra, imported only when asked for.

Without an address Ray is started here (over `num_cpus` cores) and shut down afterwards; with
one (`ray://HOST:10001` or `HOST:6379`) kvbench connects to that cluster, whose nodes need the
same kvbench installed. A session already open in this process (a test's cluster) is used as
is and left open.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator, Iterator
from typing import Any, TypeVar

from kvbench.errors import KvbenchError

EXTRA = "pip install 'kvbench[ray]'"
T = TypeVar("T")


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


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """The `ray` module with a session open: this process's own, a cluster's at `address`, or a
    local one started here and shut down on the way out."""
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
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def finished(ray: Any, pending: dict[Any, T]) -> Generator[tuple[T, Any, str | None], None, None]:
    """Each task of `pending` (its ref → what it was given) as it finishes, taken out of
    `pending`: (what it was given, its result, None), or (what it was given, None, why) when its
    Ray task failed. Stopped early (an interrupt, during the wait or the caller's handling), it
    cancels the tasks still running, which stay in `pending` for the caller to account for."""
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:
                    yield item, None, " ".join(str(err).split())[:300]
                else:
                    yield item, result, None
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
