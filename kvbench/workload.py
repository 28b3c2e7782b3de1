"""Workloads: the joint law of (prompt length, output length), optionally with arrival timestamps.

A workload is named by a spec or a file (`load_workload`):

- `uniform:S_LO-S_HI,O_LO-O_HI`: s and o independent, discrete uniform on the inclusive ranges;
- `fixed:S,O`: every request has prompt S and output O;
- the paper's shorthands `pd-1:1`, `pd-2:1`, `pd-1:2` (prompt:decode ratios of the means);
- `prefix:N,P,SPEC`: the workload SPEC (any of these) with a P-token prefix before every
  prompt, one of N prefixes, drawn uniformly per request (`SharedPrefix`); requests naming the
  same prefix send the same tokens, so an engine's prefix cache can reuse their KV;
- `azure-conv`: the Azure LLM inference trace 2023, conversation service, shipped with kvbench
  (kvbench/data/, CC-BY 4.0);
- a trace file: CSV in the Azure schema (`TIMESTAMP,ContextTokens,GeneratedTokens`; the
  columns `timestamp,prompt_len,output_len` are accepted too) or JSONL with one object per line
  (`prompt_len`, `output_len`, optional `timestamp`);
- ShareGPT-style conversations: a JSON list of {"id", "conversations": [{"from": "human"|"gpt",
  "value"}, …]} (`_parse_sharegpt`), as a path or `sharegpt:FILE[,tokenizer=DIR]`; lengths from
  each turn's `num_tokens`, else counted by the local tokenizer DIR (needs `transformers`).

CSV traces over FAST_CSV_BYTES are read by pandas' C parser; a file it cannot read exactly as
the row-by-row reader would is read again by that reader, so errors always name the line.

Trace timestamps are seconds (a number) or a date-time like `2023-11-16 18:15:46.6805900`
(any number of fractional digits, optional `T`, optional `Z`/`±HH:MM`). They must not go
backwards; `Workload.timestamps` holds them in seconds from the first arrival.
Malformed input raises KvbenchError("<file>:<line>: <what is wrong>").
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import numpy as np

from kvbench import validate
from kvbench.errors import KvbenchError

MAX_TOKENS = validate.MAX_TOKENS

PAPER_SHORTHANDS: dict[str, str] = {
    "pd-1:1": "uniform:10-1600,10-1600",
    "pd-2:1": "uniform:10-2133,10-1066",
    "pd-1:2": "uniform:10-1066,10-2133",
}

AZURE_CONV = "azure-conv"
_PACKAGED_TRACES: dict[str, str] = {AZURE_CONV: "azure_llm_2023_conv.csv"}

_SPEC_HELP = (
    "expected uniform:S_LO-S_HI,O_LO-O_HI, fixed:S,O, prefix:N,P,SPEC, "
    + ", ".join(PAPER_SHORTHANDS)
    + ", "
    + ", ".join(_PACKAGED_TRACES)
    + ", a .csv/.jsonl trace file, or ShareGPT JSON (sharegpt:FILE[,tokenizer=DIR])"
)


@dataclass(frozen=True)
class SharedPrefix:
    """`count` prefixes of `length` tokens; each request opens with one, drawn uniformly. Its
    `length` is part of the request's prompt length everywhere (theory and simulator count it as
    ordinary prompt tokens: neither models reuse across requests); HTTP engines are sent the
    same tokens for the same prefix."""

    count: int
    length: int


@dataclass(frozen=True)
class UniformLengths:
    """Independent discrete uniform prompt and output lengths on inclusive ranges (a fixed
    length is a range of one value)."""

    prompt_min: int
    prompt_max: int
    output_min: int
    output_max: int

    def prompt_support(self) -> np.ndarray:
        return np.arange(self.prompt_min, self.prompt_max + 1, dtype=np.int64)

    def output_support(self) -> np.ndarray:
        return np.arange(self.output_min, self.output_max + 1, dtype=np.int64)


class Workload(ABC):
    """A source of (prompt_len, output_len) pairs; see the module docstring for the sources."""

    name: str
    #: seconds from the first arrival, one per row; None for synthetic laws and untimed traces
    timestamps: np.ndarray | None = None
    #: the prefixes its requests share (`prefix:N,P,SPEC`); None when prompts share nothing
    prefix: SharedPrefix | None = None

    def prefix_ids(self, n: int, seed: int) -> np.ndarray | None:
        """Which prefix each of n requests opens with (uniform over the prefixes, reproducible
        for a seed and independent of the lengths `draw` gives); None without prefixes."""
        if self.prefix is None:
            return None
        rng = np.random.default_rng([validate.seed(seed), _PREFIX_STREAM])
        return rng.integers(0, self.prefix.count, size=n, dtype=np.int64)

    @property
    @abstractmethod
    def is_trace(self) -> bool:
        """True when the workload is a table of recorded rows (`rows()` works)."""

    @property
    @abstractmethod
    def max_request_tokens(self) -> int:
        """The largest s + o a request can have (the theory's δ·M)."""

    @abstractmethod
    def draw(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """n i.i.d. (prompt_lens, output_lens), int64: from the law for synthetic workloads,
        resampled with replacement from the rows for traces. Reproducible for a seed."""

    @abstractmethod
    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The trace's (prompt_lens, output_lens) in file order, read-only; KvbenchError for a
        synthetic law, which has no rows (use `draw`)."""


@dataclass(frozen=True, eq=False)
class SyntheticWorkload(Workload):
    name: str
    law: UniformLengths
    prefix: SharedPrefix | None = None

    @property
    def is_trace(self) -> bool:
        return False

    @property
    def max_request_tokens(self) -> int:
        return self.law.prompt_max + self.law.output_max

    def draw(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n = validate.non_negative_int(n, "number of requests")
        rng = np.random.default_rng(validate.seed(seed))
        law = self.law
        prompts = rng.integers(
            law.prompt_min, law.prompt_max, size=n, endpoint=True, dtype=np.int64
        )
        outputs = rng.integers(
            law.output_min, law.output_max, size=n, endpoint=True, dtype=np.int64
        )
        return prompts, outputs

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        raise KvbenchError(f"workload {self.name} is a synthetic law with no rows; draw from it")


@dataclass(frozen=True, eq=False)
class TraceWorkload(Workload):
    name: str
    prompt_lens: np.ndarray
    output_lens: np.ndarray
    source: str
    timestamps: np.ndarray | None = None
    prefix: SharedPrefix | None = None

    @property
    def is_trace(self) -> bool:
        return True

    @property
    def max_request_tokens(self) -> int:
        return int((self.prompt_lens + self.output_lens).max())

    def draw(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n = validate.non_negative_int(n, "number of requests")
        rng = np.random.default_rng(validate.seed(seed))
        picks = rng.integers(0, len(self.prompt_lens), size=n)
        return self.prompt_lens[picks], self.output_lens[picks]

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Read-only views of the trace's lengths, in file order."""
        return self.prompt_lens, self.output_lens


def load_workload(spec_or_path: str) -> Workload:
    """The workload named by a spec, a shorthand, a packaged trace name or a trace file path."""
    text = spec_or_path.strip()
    if text.startswith(PREFIX_SPEC):
        return _with_prefix(text)
    if text in PAPER_SHORTHANDS:
        return SyntheticWorkload(text, _parse_spec(PAPER_SHORTHANDS[text]))
    if text.startswith(("uniform:", "fixed:")):
        return SyntheticWorkload(text, _parse_spec(text))
    if text in _PACKAGED_TRACES:
        return _packaged_trace(text)
    tokenizer = None
    sharegpt = text.startswith(SHAREGPT_PREFIX)
    if sharegpt:
        spec_or_path, tokenizer = _parse_sharegpt_spec(text)
    path = Path(spec_or_path)
    try:
        content = validate.input_bytes(path)
    except FileNotFoundError:
        raise KvbenchError(f"no such workload or file: {spec_or_path!r} ({_SPEC_HELP})") from None
    if sharegpt or content.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return _parse_sharegpt(content, label=str(path), name=path.stem, tokenizer=tokenizer)
    return _parse_trace(content, label=str(path), name=path.stem, suffix=path.suffix.lower())


@functools.cache
def _packaged_trace(name: str) -> TraceWorkload:
    """A trace shipped in kvbench/data, parsed once per process (its arrays are read-only)."""
    data = resources.files("kvbench").joinpath("data", _PACKAGED_TRACES[name])
    return _parse_trace(data.read_bytes(), label=f"{name} (kvbench/data/{data.name})", name=name)


# --- shared prefixes ---------------------------------------------------------------------------

PREFIX_SPEC = "prefix:"
# the prefix draw's own random stream beside the lengths' (np.random.default_rng([seed, tag]))
_PREFIX_STREAM = 0x70726566


def _with_prefix(spec: str) -> Workload:
    """`prefix:N,P,SPEC`: SPEC's workload with P tokens before every prompt, one of N prefixes."""
    form = "prefix:N,P,SPEC (e.g. prefix:8,512,uniform:10-1600,10-1600)"
    parts = spec[len(PREFIX_SPEC) :].split(",", 2)
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise KvbenchError(f"workload {spec!r}: expected {form}")
    count_text, length_text, inner_spec = (part.strip() for part in parts)
    if not (count_text.isascii() and count_text.isdigit() and int(count_text) >= 1):
        raise KvbenchError(f"workload {spec!r}: the number of prefixes N must be an integer ≥ 1")
    if not (length_text.isascii() and length_text.isdigit() and int(length_text) >= 1):
        raise KvbenchError(f"workload {spec!r}: the prefix length P must be an integer ≥ 1")
    prefix = SharedPrefix(int(count_text), int(length_text))
    if inner_spec.startswith(PREFIX_SPEC):
        raise KvbenchError(f"workload {spec!r}: one prefix: per workload")
    inner = load_workload(inner_spec)
    if inner.max_request_tokens + prefix.length > MAX_TOKENS:
        raise KvbenchError(
            f"workload {spec!r}: prefix {prefix.length} + the longest request "
            f"{inner.max_request_tokens} exceeds {MAX_TOKENS} tokens"
        )
    if isinstance(inner, SyntheticWorkload):
        law = inner.law
        shifted = UniformLengths(
            law.prompt_min + prefix.length,
            law.prompt_max + prefix.length,
            law.output_min,
            law.output_max,
        )
        return SyntheticWorkload(spec, shifted, prefix=prefix)
    assert isinstance(inner, TraceWorkload)
    prompt_lens = inner.prompt_lens + prefix.length
    prompt_lens.flags.writeable = False
    return TraceWorkload(
        name=spec,
        prompt_lens=prompt_lens,
        output_lens=inner.output_lens,
        source=inner.source,
        timestamps=inner.timestamps,
        prefix=prefix,
    )


# --- synthetic specs --------------------------------------------------------------------------

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def _parse_range(part: str, spec: str, what: str) -> tuple[int, int]:
    match = _RANGE.match(part)
    if not match:
        raise KvbenchError(f"workload {spec!r}: {what} range {part.strip()!r} is not N or LO-HI")
    lo = int(match.group(1))
    hi = int(match.group(2)) if match.group(2) is not None else lo
    if not 1 <= lo <= hi <= MAX_TOKENS:
        raise KvbenchError(
            f"workload {spec!r}: {what} range {lo}-{hi} must satisfy 1 <= LO <= HI <= {MAX_TOKENS}"
        )
    return lo, hi


def _parse_spec(spec: str) -> UniformLengths:
    kind, _, body = spec.partition(":")
    parts = body.split(",")
    if len(parts) != 2:
        form = "uniform:S_LO-S_HI,O_LO-O_HI" if kind == "uniform" else "fixed:S,O"
        raise KvbenchError(f"workload {spec!r}: expected {form}")
    if kind == "fixed" and "-" in body:
        raise KvbenchError(f"workload {spec!r}: fixed takes single lengths, e.g. fixed:512,128")
    (s_lo, s_hi), (o_lo, o_hi) = (
        _parse_range(parts[0], spec, "prompt"),
        _parse_range(parts[1], spec, "output"),
    )
    return UniformLengths(s_lo, s_hi, o_lo, o_hi)


# --- trace files ------------------------------------------------------------------------------

_PROMPT_COLUMNS = ("contexttokens", "prompt_len")
_OUTPUT_COLUMNS = ("generatedtokens", "output_len")
_TIMESTAMP_COLUMNS = ("timestamp",)

_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Numeric timestamps beyond this many seconds (about 30,000 years) are not times.
_MAX_SECONDS = Decimal(10**12)


def _parse_trace(content: bytes, *, label: str, name: str, suffix: str = "") -> TraceWorkload:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = content.count(b"\n", 0, err.start) + 1
        raise KvbenchError(f"{label}:{line}: not UTF-8 text") from None
    if suffix in (".jsonl", ".ndjson", ".json"):
        is_jsonl = True
    elif suffix == ".csv":
        is_jsonl = False
    else:
        is_jsonl = text.lstrip().startswith("{")
    fast = None
    if not is_jsonl and len(content) >= FAST_CSV_BYTES:
        fast = _read_csv_fast(content)
    if fast is not None:
        prompt_lens, output_lens, stamps = fast
        timestamps = None if stamps is None else (stamps - stamps[0]) / 1e9
    else:
        prompts, outputs, stamps_ns = (_read_jsonl if is_jsonl else _read_csv)(text, label)
        if not prompts:
            raise KvbenchError(f"{label}: no requests in the file")
        timestamps = None
        if stamps_ns is not None:
            first = stamps_ns[0]
            # Subtract in integer nanoseconds, so epoch-sized stamps keep their sub-microsecond
            # gaps.
            timestamps = np.array([(t - first) / 1e9 for t in stamps_ns], dtype=np.float64)
        prompt_lens = np.array(prompts, dtype=np.int64)
        output_lens = np.array(outputs, dtype=np.int64)
    # Read-only, so a workload can be shared (and cached) without one user changing another's.
    for array in (prompt_lens, output_lens, timestamps):
        if array is not None:
            array.flags.writeable = False
    return TraceWorkload(
        name=name,
        prompt_lens=prompt_lens,
        output_lens=output_lens,
        timestamps=timestamps,
        source=label,
    )


def _length(value: object, where: str, what: str) -> int:
    """A token count from a CSV cell (str) or a JSON value."""
    if isinstance(value, str):
        cell = value.strip()
        if not cell.isascii() or not cell.isdigit():
            raise KvbenchError(f"{where}: {what} {value!r} is not a non-negative integer")
        number = int(cell)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise KvbenchError(f"{where}: {what} {value!r} is not an integer")
    if number < 1:
        raise KvbenchError(f"{where}: {what} must be at least 1, got {number}")
    if number > MAX_TOKENS:
        raise KvbenchError(f"{where}: {what} {number} exceeds {MAX_TOKENS} tokens")
    return number


@functools.lru_cache(maxsize=4096)
def _midnight_seconds(year: str, month: str, day: str, zone: str | None) -> int:
    """Seconds from the Unix epoch to the start of a day in a zone; cached because a trace's
    rows share a few days. ValueError for an impossible date or offset."""
    tz = dt.UTC
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[-2:])))
    midnight = dt.datetime(int(year), int(month), int(day), tzinfo=tz)
    return (midnight - _EPOCH) // dt.timedelta(seconds=1)


def _timestamp_ns(value: object, where: str) -> int:
    """Integer nanoseconds since the Unix epoch (or since an arbitrary origin for plain seconds)."""
    if isinstance(value, bool) or value is None:
        raise KvbenchError(f"{where}: timestamp {value!r} is not a time")
    if isinstance(value, (int, float)):
        value = repr(value)
    if not isinstance(value, str):
        raise KvbenchError(f"{where}: timestamp {value!r} is not a time")
    cell = value.strip()
    match = _DATETIME.match(cell) if cell.isascii() else None
    if match:
        hour, minute, second = int(match.group(4)), int(match.group(5)), int(match.group(6))
        try:
            if hour > 23 or minute > 59 or second > 59:
                raise ValueError("time of day out of range")
            midnight = _midnight_seconds(
                match.group(1), match.group(2), match.group(3), match.group(8)
            )
        except ValueError as err:
            raise KvbenchError(
                f"{where}: timestamp {cell!r} is not a valid date-time: {err}"
            ) from None
        whole_seconds = midnight + 3600 * hour + 60 * minute + second
        return whole_seconds * 10**9 + int((match.group(7) or "")[:9].ljust(9, "0"))
    try:
        seconds = Decimal(cell)
    except InvalidOperation:
        seconds = None
    if seconds is None or not seconds.is_finite() or abs(seconds) > _MAX_SECONDS:
        raise KvbenchError(
            f"{where}: timestamp {cell!r} is neither seconds nor a date-time like "
            "2023-11-16 18:15:46.68059"
        )
    return int(seconds * 10**9)


def _check_order(stamps: list[int], where: str) -> None:
    if len(stamps) > 1 and stamps[-1] < stamps[-2]:
        raise KvbenchError(f"{where}: timestamp is earlier than the previous request's")


def _find_column(header: list[str], names: tuple[str, ...]) -> int | None:
    normalized = [cell.strip().lower() for cell in header]
    for name in names:
        if name in normalized:
            return normalized.index(name)
    return None


def _read_csv(text: str, label: str) -> tuple[list[int], list[int], list[int] | None]:
    reader = csv.reader(io.StringIO(text, newline=""))
    prompts: list[int] = []
    outputs: list[int] = []
    stamps: list[int] = []
    header: list[str] | None = None
    try:
        for row in reader:
            where = f"{label}:{reader.line_num}"
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = row
                prompt_col = _find_column(header, _PROMPT_COLUMNS)
                output_col = _find_column(header, _OUTPUT_COLUMNS)
                time_col = _find_column(header, _TIMESTAMP_COLUMNS)
                if prompt_col is None or output_col is None:
                    missing = [
                        what
                        for col, what in (
                            (prompt_col, "the prompt length (ContextTokens or prompt_len)"),
                            (output_col, "the output length (GeneratedTokens or output_len)"),
                        )
                        if col is None
                    ]
                    raise KvbenchError(
                        f"{where}: header lacks a column for {' and '.join(missing)}"
                    )
                columns = (prompt_col, output_col)
                continue
            if len(row) != len(header):
                raise KvbenchError(f"{where}: expected {len(header)} fields, found {len(row)}")
            prompts.append(_length(row[columns[0]], where, "prompt length"))
            outputs.append(_length(row[columns[1]], where, "output length"))
            if time_col is not None:
                stamps.append(_timestamp_ns(row[time_col], where))
                _check_order(stamps, where)
    except csv.Error as err:
        raise KvbenchError(f"{label}:{reader.line_num}: malformed CSV: {err}") from None
    if header is None:
        raise KvbenchError(f"{label}: empty file")
    return prompts, outputs, (stamps if time_col is not None else None)


# Below this size the row-by-row reader is quicker than importing pandas (~0.3 s).
FAST_CSV_BYTES = 1 << 20
# The Azure trace's timestamp form, which pandas parses in C; any other form takes the exact
# reader.
_AZURE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# Integer seconds beyond this overflow int64 nanoseconds.
_MAX_INT_SECONDS = 9 * 10**9


def _read_csv_fast(content: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """A well-formed CSV trace read by pandas' C parser: (prompt lens, output lens, int64
    nanosecond timestamps or None). None when any row is one `_read_csv` might reject or read
    differently (a missing, blank, fractional or out-of-range cell, a timestamp not in the Azure
    form, stamps going backwards); that reader then reads the file again and names the line."""
    import pandas as pd

    try:
        # index_col=False: a row one field longer than the header is no index; pandas warns of
        # it (and of any other row it had to guess at), and a warning is a row to reject
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            frame = pd.read_csv(
                io.BytesIO(content), encoding="utf-8-sig", low_memory=False, index_col=False
            )
    except (ValueError, Warning, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    header = [str(name) for name in frame.columns]
    prompt_col = _find_column(header, _PROMPT_COLUMNS)
    output_col = _find_column(header, _OUTPUT_COLUMNS)
    time_col = _find_column(header, _TIMESTAMP_COLUMNS)
    if prompt_col is None or output_col is None or frame.empty:
        return None
    lengths = []
    for col in (prompt_col, output_col):
        values = frame.iloc[:, col].to_numpy()
        if values.dtype != np.int64 or values.min() < 1 or values.max() > MAX_TOKENS:
            return None
        lengths.append(values)
    stamps = None
    if time_col is not None:
        column = frame.iloc[:, time_col]
        if column.dtype == np.int64:
            if np.abs(column.to_numpy()).max() > _MAX_INT_SECONDS:
                return None
            stamps = column.to_numpy() * 10**9
        elif column.dtype == np.float64:
            return None  # fractional seconds: the exact reader keeps their decimal digits
        else:
            try:
                parsed = pd.to_datetime(column, format=_AZURE_TIME_FORMAT)
            except (ValueError, TypeError):
                return None
            if parsed.isna().any():
                return None
            stamps = parsed.to_numpy().astype("datetime64[ns]").view(np.int64)
        if np.any(np.diff(stamps) < 0):
            return None
    return lengths[0], lengths[1], stamps


def _read_jsonl(text: str, label: str) -> tuple[list[int], list[int], list[int] | None]:
    prompts: list[int] = []
    outputs: list[int] = []
    stamps: list[int] = []
    timed: bool | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{label}:{number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
            raise KvbenchError(f"{where}: not a JSON object ({reason})") from None
        if not isinstance(record, dict):
            raise KvbenchError(f"{where}: expected a JSON object, found {type(record).__name__}")
        for key in ("prompt_len", "output_len"):
            if key not in record:
                raise KvbenchError(f"{where}: missing {key!r}")
        prompts.append(_length(record["prompt_len"], where, "prompt_len"))
        outputs.append(_length(record["output_len"], where, "output_len"))
        has_time = "timestamp" in record
        if timed is None:
            timed = has_time
        elif has_time != timed:
            raise KvbenchError(
                f"{where}: 'timestamp' must be on every line or on none "
                f"(the first request {'has' if timed else 'has none'})"
            )
        if has_time:
            stamps.append(_timestamp_ns(record["timestamp"], where))
            _check_order(stamps, where)
    return prompts, outputs, (stamps if timed else None)


# --- ShareGPT conversations ---------------------------------------------------------------------

SHAREGPT_PREFIX = "sharegpt:"
_COUNT_KEY = "num_tokens"


def _parse_sharegpt_spec(text: str) -> tuple[str, str | None]:
    """`sharegpt:FILE[,tokenizer=DIR]` → (FILE, DIR or None)."""
    body = text[len(SHAREGPT_PREFIX) :]
    path, sep, option = body.rpartition(",tokenizer=")
    if not sep:
        return body, None
    if not option:
        raise KvbenchError(f"workload {text!r}: tokenizer= needs a local tokenizer directory")
    return path, option


def _token_counter(tokenizer: str | None, label: str):
    """A function counting a turn's tokens with the local tokenizer `tokenizer` (transformers,
    local files only: kvbench never downloads), or None without one."""
    if tokenizer is None:
        return None
    try:
        from transformers import AutoTokenizer  # type: ignore[import-not-found]
    except ImportError:
        raise KvbenchError(
            f"{label}: counting tokens with tokenizer={tokenizer} needs transformers "
            "(pip install transformers), or give each turn a num_tokens count"
        ) from None
    try:
        loaded = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    except (OSError, ValueError) as err:
        raise KvbenchError(
            f"tokenizer {tokenizer!r}: cannot load it from local files (kvbench never "
            f"downloads one): {' '.join(str(err).split())}"
        ) from None
    return lambda text: len(loaded(text, add_special_tokens=False)["input_ids"])


def _parse_sharegpt(
    content: bytes, *, label: str, name: str, tokenizer: str | None
) -> TraceWorkload:
    """ShareGPT-style conversations (a JSON list of {"id", "conversations": [{"from", "value"},
    …]}, the shape of ShareGPT_V3_unfiltered_cleaned_split.json): one request per conversation
    that opens with a human turn answered by a gpt turn, the prompt the first turn and the output
    the answer, as vLLM's benchmark samples them; other conversations are skipped. Lengths are
    each turn's `num_tokens` where the file gives it, else counted by `tokenizer`."""
    try:
        data = json.loads(content.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        line = content.count(b"\n", 0, err.start) + 1
        raise KvbenchError(f"{label}:{line}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise KvbenchError(f"{label}:{err.lineno}: not JSON ({err.msg})") from None
    except RecursionError:
        raise KvbenchError(f"{label}: JSON nested too deeply") from None
    if not isinstance(data, list):
        raise KvbenchError(f"{label}: expected a JSON list of conversations")
    count = _token_counter(tokenizer, label)
    prompts: list[int] = []
    outputs: list[int] = []
    for index, item in enumerate(data):
        ident = item.get("id") if isinstance(item, dict) else None
        where = f"{label}: conversation {index}" + (f" (id {ident!r})" if ident else "")
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            raise KvbenchError(f"{where}: expected an object with a 'conversations' list")
        if len(turns) < 2:
            continue
        pair = turns[:2]
        if not all(isinstance(turn, dict) for turn in pair):
            raise KvbenchError(f"{where}: a turn is not a JSON object")
        if (pair[0].get("from"), pair[1].get("from")) != ("human", "gpt"):
            continue
        lengths = []
        for turn, what in zip(pair, ("prompt", "output"), strict=True):
            if _COUNT_KEY in turn:
                lengths.append(_length(turn[_COUNT_KEY], where, f"{what} {_COUNT_KEY}"))
            elif count is None:
                raise KvbenchError(
                    f"{where}: the {what} turn has no {_COUNT_KEY}; give a local tokenizer to "
                    f"count it: --workload sharegpt:{label},tokenizer=DIR (needs transformers)"
                )
            elif not isinstance(turn.get("value"), str):
                raise KvbenchError(f"{where}: the {what} turn has no text 'value'")
            else:
                lengths.append(count(turn["value"]))
        if min(lengths) < 1:
            continue  # an empty turn asks for nothing; vLLM's benchmark drops them too
        if max(lengths) > MAX_TOKENS:
            raise KvbenchError(f"{where}: a turn of {max(lengths)} tokens exceeds {MAX_TOKENS}")
        prompts.append(lengths[0])
        outputs.append(lengths[1])
    if not prompts:
        raise KvbenchError(f"{label}: no conversation opens with a human turn answered by gpt")
    prompt_lens = np.array(prompts, dtype=np.int64)
    output_lens = np.array(outputs, dtype=np.int64)
    for array in (prompt_lens, output_lens):
        array.flags.writeable = False
    return TraceWorkload(name=name, prompt_lens=prompt_lens, output_lens=output_lens, source=label)
