"""Engine-seconds the boundary search spends to bracket λ* to 5%, and how often its bracket holds
the reference λ*: the bounded-backlog search (the default) beside the open-loop search, in one run.

    python benchmarks/search_cost.py [--seeds 30] [--old-seeds 30] [--jobs 2] [--out results.jsonl]

Every search runs on the simulator (engine-seconds are simulated seconds of load; results are
SIMULATED) with lognormal iteration-time noise σ = 0.37 (the H200 eager-mode fit), all 4 rules ×
4 workloads, seeds 0…N−1 (each search draws its lengths and noise from its seed). Coverage is
against tests/data/saturated_reference.json (benchmarks/saturated_reference.py: long deep-backlog
runs on seeds disjoint from these). Targets (issue 13): median ≤ 240 engine-seconds, p90 ≤ 480,
coverage ≥ 95% in every rule.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from kvbench.backends.sim import SimBackend
from kvbench.benchmark.saturated_rate import measure_saturated_rate
from kvbench.benchmark.search import find_boundary
from kvbench.profile import POLICIES
from kvbench.workload import load_workload

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saturated_reference import NOISE_SIGMA, WORKLOADS, noisy_profile  # noqa: E402

REFS = Path(__file__).resolve().parent.parent / "tests" / "data" / "saturated_reference.json"


def one(method: str, policy: str, workload: str, seed: int, precision: float) -> dict:
    w = load_workload(workload)
    profile = noisy_profile(policy)
    t0 = time.process_time()
    if method == "backlog":
        r = measure_saturated_rate(
            SimBackend(profile, seed=seed),
            w,
            workload,
            precision=precision,
            max_engine_seconds=43200.0,
            seed=seed,
        )
    else:
        r = find_boundary(
            lambda s: SimBackend(profile, seed=s), w, workload, precision=precision, seed=seed
        )
    return {
        "method": method,
        "policy": policy,
        "workload": workload,
        "seed": seed,
        "engine_seconds": r.engine_seconds,
        "lower": r.lower,
        "upper": r.upper,
        "reached": r.reached,
        "cpu_seconds": time.process_time() - t0,
    }


def _one(args: tuple) -> dict:
    return one(*args)


def summarize(rows: list[dict], refs: dict[tuple[str, str], float]) -> None:
    def covered(r: dict) -> bool:
        ref = refs[(r["policy"], r["workload"])]
        return bool(r["reached"] and r["lower"] <= ref <= r["upper"])

    methods = sorted({r["method"] for r in rows})
    print(
        "| rule | workload | λ* ref | "
        + " | ".join(f"{m}: median / p90 engine-s, coverage" for m in methods)
        + " |"
    )
    print("|---|---|---:|" + "---:|" * len(methods))
    for (policy, workload), ref in refs.items():
        cells = []
        for m in methods:
            sel = [
                r
                for r in rows
                if (r["method"], r["policy"], r["workload"]) == (m, policy, workload)
            ]
            if not sel:
                cells.append("—")
                continue
            cost = [r["engine_seconds"] for r in sel]
            cov = sum(covered(r) for r in sel)
            cells.append(
                f"{np.median(cost):,.0f} / {np.percentile(cost, 90):,.0f}, {cov}/{len(sel)}"
            )
        print(f"| {policy} | {workload} | {ref:.3f} | " + " | ".join(cells) + " |")
    print()
    print("| method | rule | searches | median engine-s | p90 engine-s | coverage |")
    print("|---|---|---:|---:|---:|---:|")
    for m in methods:
        for policy in [*sorted({p for p, _ in refs}), "all"]:
            sel = [r for r in rows if r["method"] == m and policy in ("all", r["policy"])]
            if not sel:
                continue
            cost = [r["engine_seconds"] for r in sel]
            cov = sum(covered(r) for r in sel) / len(sel)
            print(
                f"| {m} | {policy} | {len(sel)} | {statistics.median(cost):,.0f} |"
                f" {np.percentile(cost, 90):,.0f} | {cov:.1%} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--old-seeds", type=int, default=30, help="seeds for the open-loop search")
    ap.add_argument("--precision", type=float, default=0.05)
    ap.add_argument("--jobs", type=int, default=1, help="searches run at once (processes)")
    ap.add_argument("--out", type=Path, help="append one JSON line per search here")
    ap.add_argument("--summary", type=Path, help="only summarize the searches in this file")
    args = ap.parse_args()
    data = json.loads(REFS.read_text())
    if data["noise_sigma"] != NOISE_SIGMA:
        sys.exit(f"error: {REFS} was made with σ = {data['noise_sigma']}, not {NOISE_SIGMA}")
    refs = {(r["policy"], r["workload"]): r["capacity"] for r in data["references"]}
    if args.summary:
        summarize([json.loads(x) for x in args.summary.read_text().splitlines()], refs)
        return
    rows = []
    out = args.out.open("a") if args.out else None
    presets = [(p, w) for p in POLICIES for w in WORKLOADS]
    # seeds outermost, so a run cut short still covers every preset evenly
    searches = [
        (method, policy, workload, seed, args.precision)
        for method, seeds in (("backlog", args.seeds), ("open-loop", args.old_seeds))
        for seed in range(seeds)
        for policy, workload in presets
    ]
    with multiprocessing.Pool(args.jobs) as pool:
        for r in pool.imap(_one, searches):
            rows.append(r)
            if out:
                out.write(json.dumps(r) + "\n")
                out.flush()
            if len(rows) % len(presets) == 0:
                print(f"{r['method']} seed {r['seed']} done", file=sys.stderr, flush=True)
    summarize(rows, refs)


if __name__ == "__main__":
    main()
