"""The run directory: an append-only record of one run, written as it happens.

Layout of a run directory:

    run.jsonl     line 1: {"type": "header", "format": "kvbench-run/1", ...} — the full
                  configuration, versions, seed, backend name and kind ("simulated", "emulated",
                  "real"), written before the first request is sent;
                  then one line per event, in the order the backend reported them:
                  {"type": "request", <RequestRecord fields>} when a request is done (finished,
                  failed, or still unfinished at the end of the run), and
                  {"type": "sample", <QueueSample fields>} for each sample of server state;
                  last, if the run ended in an orderly way (also on Ctrl-C or an engine error):
                  {"type": "end", "status": "completed" | "interrupted" | "failed",
                   "error": str | null}.
    summary.json  the summary the runner computed (`kvbench report DIR` rebuilds it from
                  run.jsonl alone).

Every line is flushed when written, so a killed process loses at most the line being written;
`read_run` ignores a torn last line and reports the run as truncated when no "end" line exists.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from kvbench import __version__
from kvbench.backends.base import QueueSample, RequestRecord
from kvbench.errors import KvbenchError

RUN_FORMAT = "kvbench-run/1"
RUN_FILE = "run.jsonl"
SUMMARY_FILE = "summary.json"

_REQUEST_FIELDS = {f.name for f in fields(RequestRecord)}
_SAMPLE_FIELDS = {f.name for f in fields(QueueSample)}


def versions() -> dict[str, str]:
    """Versions recorded in every header, so a result can be traced to the code that made it."""
    return {
        "kvbench": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _clean(value: Any) -> Any:
    """JSON has no NaN: unknown floats are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunRecorder:
    """An `EventSink` that keeps every record and sample in memory and, given a directory, also
    appends each one to `run.jsonl` as it arrives."""

    def __init__(self, directory: Path | str | None, header: dict[str, Any]) -> None:
        self.records: list[RequestRecord] = []
        self.samples: list[QueueSample] = []
        self.directory = Path(directory) if directory is not None else None
        self._file: IO[str] | None = None
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._file = open(self.directory / RUN_FILE, "x", encoding="utf-8")
            except FileExistsError:
                raise KvbenchError(
                    f"{self.directory / RUN_FILE}: already exists; choose a new --output directory"
                ) from None
            except OSError as err:
                raise KvbenchError(f"{self.directory}: cannot write run: {err.strerror}") from None
            self._write({"type": "header", "format": RUN_FORMAT, **header})

    def _write(self, obj: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in obj.items()}) + "\n")
        self._file.flush()

    def request(self, record: RequestRecord) -> None:
        self.records.append(record)
        self._write({"type": "request", **asdict(record)})

    def sample(self, sample: QueueSample) -> None:
        self.samples.append(sample)
        self._write({"type": "sample", **asdict(sample)})

    def close(self, status: str = "completed", error: str | None = None) -> None:
        """Write the end line and close the file (idempotent)."""
        if self._file is None:
            return
        self._write({"type": "end", "status": status, "error": error})
        self._file.close()
        self._file = None

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.directory is not None:
            write_summary(self.directory, summary)


def write_summary(directory: Path | str, summary: dict[str, Any]) -> None:
    path = Path(directory) / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=_clean) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a summary


@dataclass
class RunData:
    """What a run directory holds; `end` is None when the run was cut off (killed)."""

    header: dict[str, Any]
    records: list[RequestRecord] = field(default_factory=list)
    samples: list[QueueSample] = field(default_factory=list)
    end: dict[str, Any] | None = None
    torn_last_line: bool = False

    @property
    def truncated(self) -> bool:
        return self.end is None

    @property
    def status(self) -> str:
        return "killed" if self.end is None else str(self.end.get("status"))


def read_run(directory: Path | str) -> RunData:
    """Rebuild records and samples from a run directory, complete or cut off."""
    path = Path(directory) / RUN_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KvbenchError(f"{path}: no such run file (is {directory} a kvbench run directory?)") from None
    except OSError as err:
        raise KvbenchError(f"{path}: cannot read: {err.strerror}") from None
    lines = text.split("\n")
    # A file written to the end finishes with "\n"; anything after the last newline is a line
    # torn by a kill and is dropped.
    torn = lines[-1] != ""
    lines = lines[:-1]
    data: RunData | None = None
    for lineno, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
            kind = obj.pop("type")
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise KvbenchError(f"{path}:{lineno}: not a kvbench run record") from None
        if lineno == 1:
            if kind != "header" or obj.get("format") != RUN_FORMAT:
                raise KvbenchError(f"{path}:1: not a {RUN_FORMAT} header")
            data = RunData(header=obj)
            continue
        assert data is not None
        try:
            if kind == "request":
                data.records.append(RequestRecord(**{k: v for k, v in obj.items() if k in _REQUEST_FIELDS}))
            elif kind == "sample":
                data.samples.append(QueueSample(**{k: v for k, v in obj.items() if k in _SAMPLE_FIELDS}))
            elif kind == "end":
                data.end = obj
            else:
                raise KvbenchError(f"{path}:{lineno}: unknown record type {kind!r}")
        except TypeError as err:
            raise KvbenchError(f"{path}:{lineno}: malformed {kind} record ({err})") from None
    if data is None:
        raise KvbenchError(f"{path}: empty run file")
    data.torn_last_line = torn
    return data

