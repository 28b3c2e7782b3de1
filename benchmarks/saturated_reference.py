"""Reference λ* of the simulated engines with iteration-time noise: the long-run departure rate
of a deep, never-empty queue, per engine rule and workload.

    python benchmarks/saturated_reference.py > tests/data/saturated_reference.json

Definition: λ* is the rate at which an engine serves a queue that never empties, i.e. the
stability boundary of queueing theory. Measured here as completions per second of SEEDS
independent runs (seeds 1000…) of DURATION simulated seconds each, with a backlog of
DEEP = 256 requests kept sent but not started (deep enough that no rule's service depends on it:
K = 32 and 256 give identical runs) and the first WARMUP seconds dropped; the reference is the
pooled rate, its standard error from the spread between seeds. It is an independent oracle for
benchmarks/search_cost.py: a completion count (not served work), ~100× a search's engine time,
seeds disjoint from the searches'. Iteration times carry lognormal noise σ = NOISE_SIGMA (the
H200 eager-mode fit in benchmarks/results/). Results are SIMULATED.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np

from kvbench.backends.backlog import SimBacklogRun
from kvbench.profile import POLICIES, EngineProfile, build_profile
from kvbench.workload import load_workload

WORKLOADS = ("pd-1:1", "pd-2:1", "pd-1:2", "azure-conv")
NOISE_SIGMA = 0.37
DEEP = 256
WARMUP = 1000.0


def noisy_profile(policy: str, sigma: float = NOISE_SIGMA) -> EngineProfile:
    p = build_profile(policy)
    return dataclasses.replace(
        p, iteration_time=dataclasses.replace(p.iteration_time, noise_sigma=sigma)
    )


def reference(policy: str, workload: str, seeds: int, duration: float) -> dict:
    w = load_workload(workload)
    rates = []
    for k in range(seeds):
        bins = SimBacklogRun(noisy_profile(policy), w, backlog=DEEP, seed=1000 + k).advance(
            duration
        )
        first = int(WARMUP / bins.bin_width)
        rates.append(float(bins.finishes[first:].sum()) / (duration - WARMUP))
    r = np.array(rates)
    return {
        "policy": policy,
        "workload": workload,
        "capacity": float(r.mean()),
        "stderr": float(r.std(ddof=1) / math.sqrt(r.size)),
        "per_seed": [round(x, 5) for x in rates],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20000.0)
    args = ap.parse_args()
    out = [reference(p, w, args.seeds, args.duration) for p in POLICIES for w in WORKLOADS]
    meta = {
        "definition": "completions per second of a never-empty queue (bounded backlog K=256)",
        "noise_sigma": NOISE_SIGMA,
        "seeds": args.seeds,
        "duration": args.duration,
        "warmup": WARMUP,
        "simulated": True,
    }
    print(json.dumps({**meta, "references": out}, indent=1))


if __name__ == "__main__":
    main()
