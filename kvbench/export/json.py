"""JSON output: one object per command, printed to stdout or written to a file (values as
kvbench.jsonable converts them, so any result can be passed as is)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from kvbench.jsonable import dumps


def write_json(value: Any, path: str | Path | None = None, *, stream: TextIO | None = None) -> None:
    """Write `value` as one JSON object: to `path` if given, else to `stream` (stdout)."""
    text = dumps(value) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
        return
    out = stream or sys.stdout
    out.write(text)
    out.flush()
