"""Trace loading: pandas' C parser against the row-by-row reader, on a 10^6-row Azure trace.

Baseline: kvbench's row-by-row reader (Python's csv module, one regex-checked timestamp and two
checked lengths per row), which was the only loader before the pandas path and still reads every
file the fast path declines (small files, any row it would reject) so that errors name the line.
The trace is synthetic but in the Azure schema and timestamp form (`2023-11-16 18:15:46.6805900`).
Each loader runs in a fresh interpreter, so the new loader's time includes importing pandas;
the two alternate, so a busy machine slows both alike. Reported are median times and the median
per-repeat ratio old / new (> 1 means the new loader is faster).

    python benchmarks/trace_loading.py [--rows 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LOAD = """
import sys, time
start = time.perf_counter()
import kvbench.workload as w
if sys.argv[2] == "old":
    w.FAST_CSV_BYTES = float("inf")
trace = w.load_workload(sys.argv[1])
assert trace.timestamps is not None
print(time.perf_counter() - start)
"""


def write_trace(path: Path, rows: int) -> None:
    rng = np.random.default_rng(1)
    start = dt.datetime(2023, 11, 16, 18, 15, 46)
    offsets = np.cumsum(rng.exponential(0.05, rows))
    prompts = rng.integers(1, 8000, rows)
    outputs = rng.integers(1, 1000, rows)
    with path.open("w") as out:
        out.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for offset, s, o in zip(offsets, prompts, outputs, strict=True):
            stamp = start + dt.timedelta(seconds=float(offset))
            out.write(f"{stamp:%Y-%m-%d %H:%M:%S.%f}0,{s},{o}\n")


def load_seconds(path: Path, which: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(path), which], check=True, capture_output=True, text=True
    )
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.csv"
        write_trace(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        pairs = [
            (load_seconds(path, "old"), load_seconds(path, "new")) for _ in range(args.repeats)
        ]
    old = statistics.median(o for o, _ in pairs)
    new = statistics.median(n for _, n in pairs)
    ratio = statistics.median(o / n for o, n in pairs)
    print(f"{args.rows:,}-row trace ({size_mb:.0f} MB), median of {args.repeats} fresh processes")
    print(f"  row-by-row reader {old:6.2f} s   pandas {new:6.2f} s   old/new = {ratio:.1f}×")


if __name__ == "__main__":
    main()
