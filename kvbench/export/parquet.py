"""Parquet files: pandas frames written column-typed and compressed, one file per frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvbench.errors import KvbenchError


def write_frames(directory: str | Path, frames: dict[str, pd.DataFrame]) -> list[Path]:
    """Write each frame to DIRECTORY/<name>.parquet (creating the directory); the paths written."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, frame in frames.items():
            path = out / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            paths.append(path)
    except OSError as err:
        raise KvbenchError(f"{directory}: cannot write: {err.strerror or err}") from None
    return paths
