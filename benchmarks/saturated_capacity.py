"""Reference stability boundaries of the simulated engines: the departure rate of one long
saturated run per engine rule and workload (λ* = the rate a never-empty backlog is served at).

    python benchmarks/saturated_capacity.py [--duration 40000] > tests/data/saturated_capacity.json

The boundary-search tests check their brackets against these intervals. They are an independent
oracle: one very long run at 1.5× the theory's rate, judged by the same departure-rate statistics
but with ~40× the engine time a search spends.
"""

from __future__ import annotations

import argparse
import json
import math

from kvbench.arrivals import arrival_times
from kvbench.benchmark.search import theory_rate
from kvbench.benchmark.stability import stability_verdict
from kvbench.profile import POLICIES, build_profile
from kvbench.simulator import simulate
from kvbench.workload import load_workload

WORKLOADS = ("pd-1:1", "pd-2:1", "pd-1:2", "azure-conv")


def saturated_capacity(policy: str, workload: str, duration: float, seed: int = 12345) -> dict:
    w = load_workload(workload)
    profile = build_profile(policy)
    rate = 1.5 * theory_rate(profile, w)
    n = int(rate * duration + 10 * math.sqrt(rate * duration) + 16)
    t = arrival_times(rate, n, seed=seed)
    t = t[t < duration]
    s, o = w.draw(t.size, seed)
    r = simulate(profile, s, o, t, seed=seed, until=duration)
    v = stability_verdict(t, r.records["finished"].to_numpy(), rate=rate, end=duration)
    return {
        "policy": policy,
        "workload": workload,
        "offered": rate,
        "duration": duration,
        "verdict": v.verdict.value,
        "capacity": v.departure_rate,
        "capacity_lo": v.departure_lo,
        "capacity_hi": v.departure_hi,
        "seed": seed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=40000.0)
    args = ap.parse_args()
    out = [saturated_capacity(p, w, args.duration) for p in POLICIES for w in WORKLOADS]
    print(json.dumps({"confidence": 0.95, "references": out}, indent=1))


if __name__ == "__main__":
    main()
