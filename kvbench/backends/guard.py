"""The watchdog beside every server kvbench starts: it ends the server's whole process group when
kvbench goes, however kvbench goes (`python -P -m kvbench.backends.guard`, started by launch.py).

kvbench starts the guard with a pipe on its stdin, then the server in a session (and process
group) of its own, and writes the group's id down the pipe. The guard then waits on the pipe:
- a `q` is kvbench's own clean stop (it has already stopped the group itself): exit quietly;
- end of file means kvbench is gone without a stop: the kernel closes a dead process's pipes
  whatever killed it, SIGKILL included. The guard sends SIGTERM to the whole group (an engine's
  API server, its engine core and workers alike, as a terminal's Ctrl-C reaches a foreground
  group), waits up to the grace period for the group to empty, then SIGKILLs what is left.
A signal to the guard itself stops the group the same way.

Why a pipe and not Linux's parent-death signal (PR_SET_PDEATHSIG): the pipe closes when the
process dies, on every POSIX system, while the death signal fires when the *thread* that started
the child ends (kvbench may start servers from worker threads) and exists on Linux only. Why a
separate process and not a thread in the server: the server is an engine's own program, run with
the engine's interpreter, which kvbench cannot change.

Standard library only, and nothing from kvbench, so it starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(group: int, grace: float, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM every process of `group`, then SIGKILL whatever is left after `grace` seconds.
    `reap` collects the caller's own exited child (the group's leader), which would otherwise
    stay in the group as a zombie."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not _alive(group):
            return
        time.sleep(0.1)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    grace = float(argv[0]) if argv else 20.0

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    pipe = sys.stdin.buffer
    try:
        line = pipe.readline()
    except SystemExit as stopped:
        return int(stopped.code or 0)
    if not line.strip().isdigit():
        return 0  # kvbench went before it started the server: nothing to guard
    group = int(line)
    try:
        if pipe.read(1) == b"q":
            return 0
        why, code = "kvbench exited without stopping it", 0
    except SystemExit as stopped:
        why, code = "the guard was signalled", int(stopped.code or 0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # finish the stop whatever arrives now
    print(f"kvbench guard: {why}; stopping process group {group}", flush=True)
    stop_group(group, grace)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
