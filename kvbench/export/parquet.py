"""Parquet files: pandas frames written column-typed and compressed, one file per frame.

pyarrow writes them; it is the optional extra `kvbench[parquet]`, so it is imported only here
and only when a frame is written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kvbench.errors import KvbenchError

if TYPE_CHECKING:
    import pandas as pd

MISSING_PYARROW = (
    "writing parquet needs pyarrow: pip install 'kvbench[parquet]' (or pip install pyarrow)"
)


def require_pyarrow() -> None:
    """KvbenchError naming the extra when pyarrow is not installed; a command that will write
    parquet calls this before its work, not after."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise KvbenchError(MISSING_PYARROW) from None


def write_frames(directory: str | Path, frames: dict[str, pd.DataFrame]) -> list[Path]:
    """Write each frame to DIRECTORY/<name>.parquet (creating the directory); the paths written."""
    require_pyarrow()
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, frame in frames.items():
            path = out / f"{name}.parquet"
            frame.to_parquet(path, index=False, engine="pyarrow")
            paths.append(path)
    except OSError as err:
        raise KvbenchError(f"{directory}: cannot write: {err.strerror or err}") from None
    return paths
