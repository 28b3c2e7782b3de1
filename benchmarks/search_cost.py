"""Engine-seconds the boundary search spends to bracket λ* to 5%, against a grid sweep.

    python benchmarks/search_cost.py [--seeds 3]

Baseline: a 10-rate grid of 120 s runs, 1,200 engine-seconds, the usual way to look for a
capacity by hand. Target: a median ≤ 240 engine-seconds over the presets. Every search here runs
on the simulator (engine-seconds are simulated seconds of load); each is checked against the
saturated-run reference in tests/data/saturated_capacity.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from kvbench.backends.registry import resolve_backend
from kvbench.benchmark.search import find_boundary
from kvbench.workload import load_workload

GRID_ENGINE_SECONDS = 10 * 120.0
REFS = Path(__file__).resolve().parent.parent / "tests" / "data" / "saturated_capacity.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--precision", type=float, default=0.05)
    args = ap.parse_args()
    refs = json.loads(REFS.read_text())["references"]
    costs: dict[str, list[float]] = {}
    misses = 0
    print(f"{'rule':<8} {'workload':<11} {'λ* ref':>7} {'median cost':>12} {'probes':>7}  brackets")
    for ref in refs:
        runs = []
        for seed in range(args.seeds):
            r = find_boundary(
                lambda s, policy=ref["policy"]: resolve_backend(f"sim:{policy}", seed=s),
                load_workload(ref["workload"]),
                ref["workload"],
                precision=args.precision,
                seed=seed,
            )
            ok = r.reached and r.lower <= ref["capacity_hi"] and r.upper >= ref["capacity_lo"]
            misses += not ok
            runs.append(
                (
                    r.engine_seconds,
                    len(r.probes),
                    f"[{r.lower:.3f}, {r.upper:.3f}]{'' if ok else ' MISS'}",
                )
            )
        costs.setdefault(ref["workload"], []).extend(c for c, _, _ in runs)
        print(
            f"{ref['policy']:<8} {ref['workload']:<11} {ref['capacity']:>7.3f} {statistics.median(c for c, _, _ in runs):>12,.0f}"
            f" {statistics.median(n for _, n, _ in runs):>7.0f}  {' '.join(b for _, _, b in runs)}"
        )
    every = [c for v in costs.values() for c in v]
    median = statistics.median(every)
    print()
    for w, v in costs.items():
        print(f"median over rules and seeds, {w:<11} {statistics.median(v):>8,.0f} engine-s")
    print(
        f"median over all presets            {median:>8,.0f} engine-s  "
        f"({median / GRID_ENGINE_SECONDS:.2f}× the 1,200 engine-s grid; target ≤ 240)"
    )
    print(f"brackets missing the reference: {misses} of {len(every)}")


if __name__ == "__main__":
    main()
