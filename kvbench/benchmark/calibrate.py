"""Short calibration runs: the data `kvbench calibrate` fits an iteration-time model to, taken
from a simulated engine (SIMULATED). A real engine's own records are read from a file instead
(`kvbench.calibration.load_windows`).

The runs sweep the load across the engine's range — half, four fifths and just above the
engine-aware μ a priori — so batch sizes and KV use vary enough to separate c0, c1 and c2; the
last, overloaded run also measures the batch tokens recomputed per request (preemption waste).
"""

from __future__ import annotations

import numpy as np

from kvbench.arrivals import arrival_times
from kvbench.benchmark.saturation import saturated_run
from kvbench.calibration import Calibration, IterationWindows, fit_iteration_time
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile
from kvbench.simulator import simulate
from kvbench.workload import Workload

LOADS = (0.5, 0.8, 1.1)


def calibrate_simulated(
    profile: EngineProfile, workload: Workload, *, num_prompts: int = 3_000, seed: int = 0
) -> Calibration:
    if num_prompts < 300:
        raise KvbenchError(f"a calibration needs at least 300 requests, got {num_prompts}")
    mu = engine_aware_mu(profile, LengthLaw.from_workload(workload)).mu
    per_load = num_prompts // len(LOADS)
    tokens, kv, times = [], [], []
    for i, load in enumerate(LOADS):
        prompt, output = workload.draw(per_load, seed + i)
        arrivals = arrival_times(load * mu, per_load, seed=seed + i)
        series = simulate(profile, prompt, output, arrivals, seed=seed + i).timeseries
        tokens.append(series["batch_tokens"].to_numpy())
        kv.append(series["kv_used"].to_numpy())
        times.append(series["iteration_time"].to_numpy())
    windows = IterationWindows.per_iteration(
        np.concatenate(tokens),
        np.concatenate(kv),
        np.concatenate(times),
        source=f"simulated {profile.name}, {workload.name}, {per_load} requests at "
        + ", ".join(f"{f:g}" for f in LOADS)
        + "×μ",
    )
    waste = saturated_run(profile, workload, num_prompts=max(per_load, 200), seed=seed + len(LOADS))
    return Calibration(
        fit=fit_iteration_time(windows),
        preemption_waste=waste.preemption_waste,
        backend=f"sim:{profile.policy}",
        simulated=True,
    )
