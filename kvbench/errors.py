"""The one error type users see: a single line naming the file, line or endpoint at fault.

Every module raises `KvbenchError` (or a subclass) for bad input or a failed engine; the CLI
turns it into `error: <message>` on stderr and a non-zero exit, never a traceback.
"""


class KvbenchError(Exception):
    """A user-facing failure; `str(err)` is the whole one-line message."""

    exit_code = 2


class EngineError(KvbenchError):
    """The engine failed (died, stopped answering, refused the run): not the user's input, so
    the exit status is 1, as for any measurement that could not be made."""

    exit_code = 1


class ClientLagError(KvbenchError):
    """kvbench's own client could not send on schedule, so the load was not offered as asked:
    no verdict can be drawn, and the measurement could not be made (exit status 1)."""

    exit_code = 1
