"""Python front of the Rust engine simulator (`rust/sim/`): numpy in, pandas out.

The simulator runs an arrival schedule through G replicas of one engine profile in virtual time,
one engine iteration at a time (see `kvbench._core.simulate` for the model). Results are
SIMULATED: they say what the scheduler rule and the iteration-time model imply, never what a GPU
measured.

Conventions of the model: a request's last prefill chunk samples its first output token, so a
request runs ⌈s/ŝ⌉ prefill iterations and o − 1 decode iterations (one fewer than the paper's
g(s, o) counts; the difference is one iteration of s + o tokens, about 0.15% of E[g] on pd-1:1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from kvbench import _core
from kvbench.errors import KvbenchError
from kvbench.profile import EngineProfile

DISPATCH = ("round_robin", "jsq")


@dataclass(frozen=True)
class SimulationResult:
    """One simulated run.

    records: one row per request, in schedule order: arrival, admitted (first admission),
      first_token, finished (NaN where it did not happen before the clock stopped), preemptions,
      replica (−1 if not dispatched), prompt_len, output_len, and the derived latencies
      queueing_delay = admitted − arrival, ttft = first_token − arrival, e2e = finished − arrival,
      tpot = (finished − first_token) / (output_len − 1) (NaN for one-token outputs).
    timeseries: one row per iteration (time = its start; waiting and running as scheduled,
      kv_used = KV tokens allocated during it) or, with a sample interval, one row per sample time
      and replica (the iteration in flight gives batch_tokens and iteration_time; 0 when idle);
      sorted by time, then replica.
    summary: requests, dispatched, completed, end_time, iterations, preemptions, busy_time,
      peak_kv_tokens, kv_capacity (per replica), replicas, sampled, plus simulated=True, the rule
      and the profile name.
    """

    records: pd.DataFrame
    timeseries: pd.DataFrame
    summary: dict
    profile: EngineProfile = field(repr=False)
    simulated: bool = True


def simulate(
    profile: EngineProfile,
    prompt_len: np.ndarray,
    output_len: np.ndarray,
    arrivals: np.ndarray,
    *,
    replicas: int = 1,
    dispatch: str = "round_robin",
    seed: int = 0,
    until: float | None = None,
    sample_interval: float | None = None,
) -> SimulationResult:
    """Simulates requests with the given lengths arriving at `arrivals` (sorted seconds).

    until: stop the simulated clock there (requests still waiting or running keep NaN times);
      None drains every request. sample_interval: record the queue every Δt seconds instead of
      every iteration (far smaller for long runs). seed: the iteration-time noise (replica r uses
      seed + r); runs are reproducible for a seed."""
    import pandas as pd

    if dispatch not in DISPATCH:
        raise KvbenchError(f"unknown dispatch {dispatch!r}; choose one of {', '.join(DISPATCH)}")
    if replicas < 1:
        raise KvbenchError(f"replicas must be at least 1, got {replicas}")
    s = np.ascontiguousarray(prompt_len, dtype=np.int64)
    o = np.ascontiguousarray(output_len, dtype=np.int64)
    t = np.ascontiguousarray(arrivals, dtype=np.float64)
    try:
        raw = _core.simulate(
            profile,
            s,
            o,
            t,
            replicas=int(replicas),
            dispatch=dispatch,
            seed=int(seed),
            until=None if until is None else float(until),
            sample_interval=None if sample_interval is None else float(sample_interval),
        )
    except ValueError as err:
        raise KvbenchError(f"simulator: {err}") from None

    # Derived columns in numpy, then one frame: adding pandas columns one by one costs several
    # times the simulation itself on a million requests.
    r = raw["records"]
    decode_steps = (o - 1).astype(np.float64)
    decode_steps[decode_steps == 0] = np.nan
    columns = dict(r)
    columns.update(
        prompt_len=s.copy(),  # the frame must not share memory with the caller's arrays
        output_len=o.copy(),
        queueing_delay=r["admitted"] - r["arrival"],
        ttft=r["first_token"] - r["arrival"],
        e2e=r["finished"] - r["arrival"],
        tpot=(r["finished"] - r["first_token"]) / decode_steps,
    )
    records = pd.DataFrame(columns, copy=False)

    timeseries = pd.DataFrame(raw["timeseries"])
    if replicas > 1:
        timeseries = timeseries.sort_values(["time", "replica"], kind="stable", ignore_index=True)

    summary = dict(raw["summary"])
    summary.update(simulated=True, rule=profile.policy, profile=profile.name)
    return SimulationResult(records, timeseries, summary, profile)
