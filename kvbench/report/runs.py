"""One run directory's per-request records and queue samples as data frames, read with the
recorder's reader (kvbench/benchmark/recorder.py owns the run format)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from kvbench.backends.base import QueueSample, RequestRecord
from kvbench.benchmark.recorder import read_run as read_run_records

REQUEST_COLUMNS = [f.name for f in fields(RequestRecord) if f.name != "token_times"]
SAMPLE_FIELDS = [f.name for f in fields(QueueSample)]


@dataclass
class RunData:
    requests: pd.DataFrame  # REQUEST_COLUMNS
    samples: pd.DataFrame  # SAMPLE_FIELDS
    status: str  # "completed", "interrupted", "failed" or "killed"


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows).reindex(columns=columns)
    return frame.astype({c: float for c in columns if c not in ("error", "request_id")})


def read_run(directory: Path) -> RunData:
    run = read_run_records(directory)
    requests = [{k: v for k, v in asdict(r).items() if k != "token_times"} for r in run.records]
    return RunData(
        requests=_frame(requests, REQUEST_COLUMNS),
        samples=_frame([asdict(s) for s in run.samples], SAMPLE_FIELDS),
        status=run.status,
    )
