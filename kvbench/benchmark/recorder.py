"""The run directory: an append-only record of one run, written as it happens.

    header.json     written (atomically) before the first request is sent:
                    {"format": "kvbench-run/1", "kind": "simulated"|"emulated"|"real",
                     "backend": ..., "config": {...}, "seed": ..., "versions": {...}, ...}
    requests.jsonl  one JSON object per request when it is done (finished, failed, or still
                    unfinished when the run stopped): the fields of `RequestRecord`
    samples.jsonl   one JSON object per sample of server state: the fields of `QueueSample`
    end.json        written when the run ends in an orderly way, Ctrl-C and engine errors
                    included: {"status": "completed"|"interrupted"|"failed", "error": str|null,
                    "scrape": what the state scraper reported (scrapes, errors by kind, their
                    first messages) or null}
    summary.json    the summary the runner computed; `kvbench report DIR` rebuilds it from the
                    files above alone

Every line is flushed when written, so a killed process loses at most the line being written;
`read_run` drops a torn last line and reports a run without end.json as killed. The JSONL files
are what `kvbench.report.build` reads for compare reports. NaN is written as null.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, get_args, get_origin, get_type_hints

import numpy as np

from kvbench import __version__, validate
from kvbench.backends.base import QueueSample, RequestRecord
from kvbench.benchmark.raw import write_json_atomic
from kvbench.errors import KvbenchError

RUN_FORMAT = "kvbench-run/1"
HEADER_FILE = "header.json"
REQUESTS_FILE = "requests.jsonl"
SAMPLES_FILE = "samples.jsonl"
END_FILE = "end.json"
SUMMARY_FILE = "summary.json"


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
    appends each one to the run directory as it arrives."""

    def __init__(self, directory: Path | str | None, header: dict[str, Any]) -> None:
        self.records: list[RequestRecord] = []
        self.samples: list[QueueSample] = []
        self.directory = Path(directory) if directory is not None else None
        self._requests: IO[str] | None = None
        self._samples: IO[str] | None = None
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if (self.directory / HEADER_FILE).exists():
                raise KvbenchError(
                    f"{self.directory}: already holds a run; choose a new --output directory"
                )
            write_json_atomic(self.directory / HEADER_FILE, {"format": RUN_FORMAT, **header})
            self._requests = open(self.directory / REQUESTS_FILE, "w", encoding="utf-8")
            self._samples = open(self.directory / SAMPLES_FILE, "w", encoding="utf-8")
        except OSError as err:
            raise KvbenchError(
                f"{self.directory}: cannot write run: {err.strerror or err}"
            ) from None

    @staticmethod
    def _append(file: IO[str] | None, obj: dict[str, Any]) -> None:
        if file is not None:
            file.write(json.dumps({k: _clean(v) for k, v in obj.items()}) + "\n")
            file.flush()

    def request(self, record: RequestRecord) -> None:
        self.records.append(record)
        if self._requests is not None:
            self._append(self._requests, vars(record))

    def sample(self, sample: QueueSample) -> None:
        self.samples.append(sample)
        if self._samples is not None:
            self._append(self._samples, vars(sample))

    def close(
        self,
        status: str = "completed",
        error: str | None = None,
        scrape: dict[str, Any] | None = None,
    ) -> None:
        """Write end.json and close the files (idempotent)."""
        if self._requests is None or self._samples is None or self.directory is None:
            return
        self._requests.close()
        self._samples.close()
        self._requests = self._samples = None
        write_json_atomic(
            self.directory / END_FILE, {"status": status, "error": error, "scrape": scrape}
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.directory is not None:
            write_summary(self.directory, summary)


def write_summary(directory: Path | str, summary: dict[str, Any]) -> None:
    write_json_atomic(Path(directory) / SUMMARY_FILE, summary)


@dataclass
class RunData:
    """What a run directory holds; `end` is None when the run was cut off (killed)."""

    header: dict[str, Any]
    records: list[RequestRecord] = field(default_factory=list)
    samples: list[QueueSample] = field(default_factory=list)
    end: dict[str, Any] | None = None
    torn_lines: int = 0

    @property
    def truncated(self) -> bool:
        return self.end is None

    @property
    def status(self) -> str:
        return "killed" if self.end is None else str(self.end.get("status"))

    @property
    def scrape(self) -> dict[str, Any] | None:
        """What the state scraper reported (None for a killed run or a simulated one)."""
        return None if self.end is None else self.end.get("scrape")


def _read_text(path: Path) -> str:
    try:
        return validate.input_text(path)
    except FileNotFoundError:
        raise KvbenchError(f"{path}: missing (is {path.parent} a kvbench run directory?)") from None


def _read_json(path: Path) -> dict[str, Any]:
    return validate.input_json_object(
        path, missing=f"missing (is {path.parent} a kvbench run directory?)"
    )


def _is(value: Any, kind: Any) -> bool:
    """Whether a JSON value fits a field's annotation (the recorder writes NaN as null, which
    only an optional field may hold)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    args = get_args(kind)
    if get_origin(kind) is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if type(None) in args:  # X | None
        return value is None or any(_is(value, a) for a in args if a is not type(None))
    return True


def _describe(kind: Any) -> str:
    names = {float: "number", int: "integer", str: "string"}
    if kind in names:
        return names[kind]
    args = get_args(kind)
    if get_origin(kind) is list:
        return f"list of {_describe(args[0])}s"
    return " or ".join("null" if a is type(None) else _describe(a) for a in args)


def _record(cls: type, obj: Any, where: str) -> Any:
    """A `cls` from one JSON object whose every known field has its annotated type, so that a
    damaged file is named here rather than failing later as a traceback in the arithmetic."""
    if not isinstance(obj, dict):
        raise KvbenchError(f"{where}: not a {cls.__name__} record (a JSON object)")
    hints = get_type_hints(cls)
    for name, value in obj.items():
        if name in hints and not _is(value, hints[name]):
            raise KvbenchError(f"{where}: {name} {value!r:.40} is not a {_describe(hints[name])}")
    try:
        return cls(**{k: v for k, v in obj.items() if k in hints})
    except TypeError as err:
        raise KvbenchError(f"{where}: not a {cls.__name__} record ({err})") from None


def _read_jsonl(path: Path, cls: type) -> tuple[list, int]:
    """Objects of `cls` from a JSONL file; a torn last line (no newline: the writer was killed
    mid-line) is dropped and counted."""
    if not path.exists():
        return [], 0
    lines = _read_text(path).split("\n")
    torn = int(lines[-1] != "")
    out = []
    for lineno, line in enumerate(lines[:-1], start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise KvbenchError(f"{path}:{lineno}: not a {cls.__name__} record ({err})") from None
        out.append(_record(cls, obj, f"{path}:{lineno}"))
    return out, torn


END_STATUSES = ("completed", "interrupted", "failed")


def _check_header(header: dict[str, Any], path: Path) -> dict[str, Any]:
    """The header fields a summary is computed from, each of the right type."""
    if header.get("format") != RUN_FORMAT:
        raise KvbenchError(f"{path}: not a {RUN_FORMAT} header")
    config = header.get("config")
    if not isinstance(config, dict):
        raise KvbenchError(f"{path}: config is not a JSON object")
    for key in ("kind", "backend"):
        if not isinstance(header.get(key), str):
            raise KvbenchError(f"{path}: {key} {header.get(key)!r:.40} is not a string")
    rate: Any = config.get("request_rate")
    if rate != "inf":  # --request-rate inf, recorded as typed
        validate.positive_number(rate, f"{path}: config.request_rate")
    window_end = header.get("window_end")
    if not _is(window_end, float) or window_end is None or not math.isfinite(window_end):
        raise KvbenchError(f"{path}: window_end {window_end!r:.40} is not a number")
    if "scheduled_in_window" in header:
        validate.non_negative_int(header["scheduled_in_window"], f"{path}: scheduled_in_window")
    for key in ("confidence", "tolerance"):
        if key in config:
            validate.in_range(config[key], f"{path}: config.{key}", 0, 1, low_open=True)
    return header


def _check_end(end: dict[str, Any], path: Path) -> dict[str, Any]:
    if end.get("status") not in END_STATUSES or not _is(end.get("error"), str | None):
        raise KvbenchError(
            f"{path}: not an end record (expected status {', '.join(END_STATUSES)} and an error)"
        )
    return end


def read_samples(directory: Path | str) -> list[QueueSample]:
    """A run directory's engine-state samples alone, in time order: what a burst (whose header
    is not a run's) recorded of the engine's gauges."""
    samples, _ = _read_jsonl(Path(directory) / SAMPLES_FILE, QueueSample)
    return sorted(samples, key=lambda s: s.time)


def read_run(directory: Path | str) -> RunData:
    """Rebuild records and samples from a run directory, complete or cut off."""
    directory = Path(directory)
    header_path = directory / HEADER_FILE
    header = _check_header(_read_json(header_path), header_path)
    records, torn_r = _read_jsonl(directory / REQUESTS_FILE, RequestRecord)
    samples, torn_s = _read_jsonl(directory / SAMPLES_FILE, QueueSample)
    samples.sort(key=lambda s: s.time)  # as the summary's step statistics need them
    end = None
    if (directory / END_FILE).exists():
        end = _check_end(_read_json(directory / END_FILE), directory / END_FILE)
    return RunData(
        header=header, records=records, samples=samples, end=end, torn_lines=torn_r + torn_s
    )
