"""Read one run directory's per-request records and queue samples into data frames."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from kvbench.backends.base import QueueSample, RequestRecord
from kvbench.errors import KvbenchError

REQUESTS_FILE = "requests.jsonl"
SAMPLES_FILE = "samples.jsonl"
REQUEST_COLUMNS = [f.name for f in fields(RequestRecord) if f.name != "token_times"]
SAMPLE_FIELDS = [f.name for f in fields(QueueSample)]


@dataclass
class RunData:
    requests: pd.DataFrame  # REQUEST_COLUMNS
    samples: pd.DataFrame  # SAMPLE_FIELDS


def _read_jsonl(path: Path, columns: list[str]) -> pd.DataFrame:
    rows = []
    try:
        with path.open() as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    # a run killed mid-write leaves a partial last line: keep what came before
                    if not f.readline():
                        break
                    raise KvbenchError(f"{path}:{lineno}: invalid JSON: {err.msg}") from None
                if not isinstance(row, dict):
                    raise KvbenchError(f"{path}:{lineno}: expected a JSON object")
                rows.append(row)
    except FileNotFoundError:
        raise KvbenchError(f"{path}: missing") from None
    frame = pd.DataFrame(rows).reindex(columns=columns)
    return frame.astype({c: float for c in columns if c not in ("error", "request_id")})


def read_run(directory: Path) -> RunData:
    return RunData(
        requests=_read_jsonl(directory / REQUESTS_FILE, REQUEST_COLUMNS),
        samples=_read_jsonl(directory / SAMPLES_FILE, SAMPLE_FIELDS),
    )
