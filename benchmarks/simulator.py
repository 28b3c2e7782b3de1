"""Engine simulator speed: simulated requests per second of CPU time, one core, per rule.

Setting (issue 3): `pd-1:1` at 0.95·μ with the paper's constant b̄ = 0.0372 s (μ = 3.263 req/s,
M = 131,000, ŝ = 512), 1,000,000 Poisson arrivals, each rule's engine preset, the queue sampled
every second (per-iteration rows would be ~8.7 million). Timed: the Rust core
(`kvbench._core.simulate`), and the whole Python front (`kvbench.simulator.simulate`, which adds
building the pandas frames). Target: ≥ 1,000,000 requests/s for `ideal` and `vllm`. The baseline is real time: "× real time" is simulated seconds per second of
CPU, i.e. how much faster than an engine serving the same load the simulator runs. CPU time
(process_time) is reported beside wall time because shared machines inflate the latter.

Also prints the calibration check of the `paper-a100-llama3-8b` preset: the median iteration of
a saturated `pd-1:1` run of the vllm rule without prefix caching, the setting its c0 was tuned
in (target 0.0372 s).

    maturin develop --release && python benchmarks/simulator.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kvbench import _core
from kvbench.arrivals import arrival_times
from kvbench.profile import POLICIES, IterationTimeModel, build_profile
from kvbench.simulator import simulate
from kvbench.theory import PAPER_BATCH_TIME, evaluate
from kvbench.workload import load_workload


def timed(fn) -> tuple[float, float, object]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=float, default=0.95, help="fraction of μ")
    args = parser.parse_args()

    workload = load_workload("pd-1:1")
    mu = evaluate(workload).mu
    rate = args.load * mu
    prompt, output = workload.draw(args.n, seed=1)
    arrivals = arrival_times(rate, args.n, seed=1)
    constant = IterationTimeModel.constant(PAPER_BATCH_TIME)
    print(
        f"{args.n:,} requests, pd-1:1 at {args.load:g}·μ = {rate:.3f} req/s, b̄ = {PAPER_BATCH_TIME} s, "
        f"median of {args.repeats} runs"
    )
    print(f"  {'rule':<8} {'core, CPU':>14} {'core, wall':>14} {'front, CPU':>14}   × real time")
    for policy in POLICIES:
        profile = build_profile(policy, iteration_time=constant)
        core = [
            timed(
                lambda p=profile: _core.simulate(p, prompt, output, arrivals, sample_interval=1.0)
            )
            for _ in range(args.repeats)
        ]
        front = [
            timed(lambda p=profile: simulate(p, prompt, output, arrivals, sample_interval=1.0))
            for _ in range(args.repeats)
        ]
        cpu = statistics.median(r[0] for r in core)
        wall = statistics.median(r[1] for r in core)
        front_cpu = statistics.median(r[0] for r in front)
        summary = core[0][2]["summary"]
        print(
            f"  {policy:<8} {args.n / cpu:>10,.0f} r/s {args.n / wall:>10,.0f} r/s "
            f"{args.n / front_cpu:>10,.0f} r/s   {summary['end_time'] / cpu:>9,.0f}×   "
            f"({summary['iterations'] / args.n:.2f} iterations, {summary['preemptions'] / args.n:.3f} "
            f"preemptions per request)"
        )

    n_sat = 60_000
    s, o = workload.draw(n_sat, seed=2)
    vllm = build_profile("vllm", "paper-a100-llama3-8b", prefix_caching=False)
    result = simulate(vllm, s, o, np.zeros(n_sat), until=3000.0)
    ts = result.timeseries
    median = float(ts.loc[ts["time"] > 500.0, "iteration_time"].median())
    print(
        f"calibration: saturated pd-1:1, vllm rule, {vllm.name}: median iteration {median:.4f} s "
        f"(target {PAPER_BATCH_TIME} s)"
    )


if __name__ == "__main__":
    main()
