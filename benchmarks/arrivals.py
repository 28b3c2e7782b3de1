"""Arrival generation: kvbench's Rust generators against numpy, 10^7 arrivals.

Baseline: numpy's `default_rng(seed).exponential(1/rate, n)` (gamma: `.gamma(k, 1/(rate·k), n)`)
followed by `np.cumsum`, the usual way to build a Poisson schedule in Python (vLLM's benchmark
draws its gaps the same way). The two run alternately, so a busy machine slows both alike;
reported are the median times and the median of the per-repeat ratios numpy / Rust (> 1 means
Rust is faster). Run from a release build:

    maturin develop --release && python benchmarks/arrivals.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from kvbench import _core


def seconds(fn: Callable[[], np.ndarray]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(rust: Callable[[], np.ndarray], numpy: Callable[[], np.ndarray], repeats: int):
    """Median Rust time, median numpy time, median ratio numpy/Rust over alternating runs."""
    rust(), numpy()  # warm-up: page in the allocator and the code
    pairs = [(seconds(rust), seconds(numpy)) for _ in range(repeats)]
    return (
        statistics.median(r for r, _ in pairs),
        statistics.median(n for _, n in pairs),
        statistics.median(n / r for r, n in pairs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    n, rate, burstiness, seed = args.n, 10.0, 0.5, 1

    cases = {
        "poisson": (
            lambda: _core.poisson_arrivals(rate, n, seed),
            lambda: np.cumsum(np.random.default_rng(seed).exponential(1 / rate, n)),
        ),
        f"gamma (burstiness {burstiness})": (
            lambda: _core.gamma_arrivals(rate, burstiness, n, seed),
            lambda: np.cumsum(
                np.random.default_rng(seed).gamma(burstiness, 1 / (rate * burstiness), n)
            ),
        ),
    }
    print(f"{n:,} arrivals, median of {args.repeats} runs")
    for name, (rust, numpy) in cases.items():
        rust_s, numpy_s, ratio = compare(rust, numpy, args.repeats)
        print(
            f"  {name + ':':<26} Rust {rust_s * 1e3:7.1f} ms   numpy {numpy_s * 1e3:7.1f} ms   "
            f"numpy/Rust = {ratio:.2f}×"
        )


if __name__ == "__main__":
    main()
