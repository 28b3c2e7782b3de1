"""A sweep's directory: rows appended as cells finish, and the table written at the end.

`cells.jsonl` is the incremental record (one line per finished cell, flushed as it is written:
a killed kvbench loses none, only a crash of the machine can lose what the OS had not yet
written), so a sweep stopped at any point keeps every cell that finished; `--resume` reads
it back and skips those cells by key. At the end the rows of the grid (a re-run cell's latest
row) become `cells.parquet` when pyarrow is installed, else `cells.csv`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from kvbench.errors import KvbenchError
from kvbench.jsonable import to_jsonable

ROWS_FILE = "cells.jsonl"
GRID_FILE = "grid.json"


class SweepStore:
    def __init__(self, directory: Path, *, resume: bool) -> None:
        self.directory = directory
        self.rows_path = directory / ROWS_FILE
        self.rows: dict[str, dict[str, Any]] = {}
        if self.rows_path.exists() and not resume:
            raise KvbenchError(
                f"{self.rows_path} exists: pass --resume to continue that sweep, or choose "
                "another --output"
            )
        if resume:
            if not self.rows_path.exists():
                raise KvbenchError(
                    f"--resume: no sweep to continue in {directory} ({ROWS_FILE} missing)"
                )
            self._read()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._file = self.rows_path.open("a", encoding="utf-8")
        except OSError as err:
            raise KvbenchError(f"{directory}: cannot write: {err.strerror or err}") from None

    def _read(self) -> None:
        """The rows already there; a last line cut short by a kill is dropped (and cut off the
        file, so the next row starts on a line of its own)."""
        data = self.rows_path.read_bytes()
        good = 0
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            try:
                row = json.loads(line)
                if not line.endswith(b"\n"):
                    raise ValueError("no newline")
            except ValueError:
                if good + len(line) == len(data):
                    break
                raise KvbenchError(f"{self.rows_path}:{number}: not a JSON row") from None
            self.rows[row["key"]] = row
            good += len(line)
        if good < len(data):
            with self.rows_path.open("r+b") as f:
                f.truncate(good)

    def finished(self) -> set[str]:
        """Keys of the cells that finished (a failed cell is run again)."""
        return {k for k, r in self.rows.items() if r["status"] == "ok"}

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(to_jsonable(row), sort_keys=False, ensure_ascii=False)
        self._file.write(line + "\n")
        self._file.flush()
        self.rows[row["key"]] = row

    def close(self) -> None:
        self._file.close()

    def write_grid(self, grid: dict[str, Any]) -> None:
        (self.directory / GRID_FILE).write_text(json.dumps(to_jsonable(grid), indent=2) + "\n")

    def table(self, keys: list[str]) -> pd.DataFrame:
        """The rows of these cells, in grid order (engine settings as JSON text)."""
        frame = pd.DataFrame([self.rows[k] for k in keys if k in self.rows])
        if "settings" in frame:
            frame["settings"] = [json.dumps(s, sort_keys=True) for s in frame["settings"]]
        return frame

    def write_table(self, frame: pd.DataFrame) -> Path:
        """cells.parquet with pyarrow, else cells.csv; the path written."""
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            path = self.directory / "cells.csv"
            frame.to_csv(path, index=False)
            return path
        from kvbench.export.parquet import write_frames

        return write_frames(self.directory, {"cells": frame})[0]
