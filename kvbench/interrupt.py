"""Stopping kvbench: SIGTERM (a job runner's timeout, `kill PID`) is handled exactly like Ctrl-C.

Every command already stops cleanly on KeyboardInterrupt: the run directory gets its end.json,
the servers kvbench started are stopped, what was measured is summarised. Rather than teach each
command about SIGTERM, `sigterm_as_ctrl_c` makes a SIGTERM take that same path: it hands the
signal to whatever handles SIGINT at that moment (Python's KeyboardInterrupt, or asyncio's
handler, which cancels the running task first) and remembers which signal it was, so the exit
status can follow the shell's convention, 128 + the signal's number: 130 for Ctrl-C, 143 for
SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_terminated = False
_shielded = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminated
    _terminated = True
    if _shielded:
        # the command is finishing what it must not lose (a report); exit_code() still says it
        # was terminated once it is done
        return
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        # SIG_DFL, or SIG_IGN inherited: a shell without job control starts background
        # commands with SIGINT ignored, and a SIGTERM must stop them all the same
        raise KeyboardInterrupt


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Within the block neither Ctrl-C (ignored) nor SIGTERM (remembered for the exit status)
    interrupts: for work that only saves what was already measured."""
    global _shielded
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    _shielded = True
    try:
        yield
    finally:
        _shielded = False
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM acts as Ctrl-C (a no-op outside the main thread, where Python
    cannot install signal handlers)."""
    global _terminated
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _terminated = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def terminated() -> bool:
    """True once a SIGTERM arrived inside `sigterm_as_ctrl_c`."""
    return _terminated


def exit_code() -> int:
    """The exit status of a command stopped by a signal: 143 after SIGTERM, else 130 (SIGINT)."""
    return 128 + (signal.SIGTERM if _terminated else signal.SIGINT)


def stopped_by() -> str:
    """What stopped the command, for messages: "SIGTERM" or "Ctrl-C"."""
    return "SIGTERM" if _terminated else "Ctrl-C"
