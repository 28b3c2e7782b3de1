"""Type stub for `kvbench._core`, the Rust extension: the whole Rust surface, documented.

Conventions: times are float64 seconds; lengths are int64 tokens; every random function takes an
explicit `seed` and is reproducible across platforms for a given seed.
"""

import numpy as np
import numpy.typing as npt

__version__: str

# --- arrival schedules (rust/arrivals.rs) -------------------------------------------------------
# Random schedules use rand_pcg::Pcg64 seeded with SeedableRng::seed_from_u64(seed). They return
# cumulative arrival times starting one gap after 0. Invalid parameters raise ValueError; the
# Python front `kvbench.arrivals` validates first and raises KvbenchError instead.

def poisson_arrivals(rate: float, n: int, seed: int) -> npt.NDArray[np.float64]:
    """n arrival times of a Poisson process of `rate` per second (exponential gaps, mean 1/rate)."""

def gamma_arrivals(rate: float, burstiness: float, n: int, seed: int) -> npt.NDArray[np.float64]:
    """n arrival times with Gamma(shape=burstiness, scale=1/(rate·burstiness)) gaps (vLLM's
    convention): mean gap 1/rate, coefficient of variation 1/√burstiness."""

def constant_arrivals(rate: float, n: int) -> npt.NDArray[np.float64]:
    """n evenly spaced arrival times k/rate, k = 1..n."""

def replay_arrivals(timestamps: npt.NDArray[np.float64], time_scale: float) -> npt.NDArray[np.float64]:
    """A recorded schedule (non-decreasing seconds) shifted so the first arrival is at 0, then
    divided by `time_scale`: 2.0 replays twice as fast (double the rate), 0.5 at half speed."""

# --- engine simulator (rust/sim/) ---------------------------------------------------------------
# An iteration-level continuous-batching engine with a KV cache of `profile.kv_tokens` tokens in
# pages of `block_size`. Each iteration schedules running requests first (one decode token each,
# or their next prefill chunk of at most `chunk_size` tokens, within `token_budget`), then admits
# waiting requests FCFS (no overtaking) up to `max_running`, by the profile's rule:
#   ideal:  admit by current need; on shortage swap the newest running request out at no cost,
#           keeping its KV progress; it returns first (front of the queue).
#   vllm:   admit by current need; on shortage preempt the newest running request, free its KV,
#           put it at the front of the queue to recompute prompt + generated tokens.
#   sglang: admit when (rest of prompt) + min(remaining output, 4096) fits beside Σ running
#           min(remaining output, 4096) × new_token_ratio; the ratio decays linearly from
#           sglang_init_ratio to sglang_min_ratio over sglang_decay_steps decode steps, resets
#           when idle; on decode shortage retract the requests with the fewest generated tokens
#           (recompute, back of the queue) until the rest can decode 20 steps, and re-estimate the
#           ratio; with separate_prefill_decode a prefill batch runs whenever one can be formed.
#   trtllm: GUARANTEED_NO_EVICT: admit only if pages for prompt + max_tokens (the request's own
#           output, or max(max_tokens_cap, output)) fit beside what running requests reserved.
# The last prefill chunk samples the first output token; then one token per decode iteration.
# Iteration time = c0 + c1·batch tokens + c2·(KV tokens the batch attends over), times a
# lognormal factor with mean 1 when noise_sigma > 0. Arrivals during an iteration wait for the
# next. Invalid input raises ValueError naming the request or field; `kvbench.simulator`
# turns it into KvbenchError.

class _IterationTimeModelLike:
    c0: float
    c1: float
    c2: float
    noise_sigma: float

class _EngineProfileLike:
    """`kvbench.profile.EngineProfile`: read attribute by attribute."""

    policy: str
    kv_tokens: int
    block_size: int
    chunk_size: int
    token_budget: int
    max_running: int
    iteration_time: _IterationTimeModelLike
    max_tokens_cap: int | None
    separate_prefill_decode: bool
    sglang_init_ratio: float
    sglang_min_ratio: float
    sglang_decay_steps: int

def simulate(
    profile: _EngineProfileLike,
    prompt_len: npt.NDArray[np.int64],
    output_len: npt.NDArray[np.int64],
    arrivals: npt.NDArray[np.float64],
    *,
    replicas: int = 1,
    dispatch: str = "round_robin",
    seed: int = 0,
    until: float | None = None,
    sample_interval: float | None = None,
) -> dict:
    """Runs the schedule (`arrivals` sorted) through `replicas` engines behind a dispatcher
    ("round_robin", or "jsq": fewest waiting + running, lowest index on ties) in virtual time.
    `until` stops the clock (arrivals after it are not dispatched); None drains every request.
    `sample_interval` records every replica's state at 0, Δt, 2Δt, … instead of every iteration.
    Replica r draws its iteration-time noise from seed + r.

    Returns {"records": {...}, "timeseries": {...}, "summary": {...}}:
      records (one entry per request, float64 seconds, NaN where it did not happen):
        arrival, admitted (first admission), first_token, finished; int64 preemptions,
        replica (−1 if not dispatched);
      timeseries (per iteration, time = its start, or per sample and replica): time, waiting,
        running, kv_used (KV tokens allocated), batch_tokens, iteration_time (s), replica;
      summary: requests, dispatched, completed, end_time, iterations, preemptions, busy_time,
        peak_kv_tokens, kv_capacity (per replica), replicas, sampled."""

class EngineSim:
    """One engine replica stepped on the caller's clock (the same engine as `simulate`), for the
    real-time emulators. Requests wait until an iteration starts at or after their `now`; nothing
    runs until `advance` is called."""

    def __init__(self, profile: _EngineProfileLike, seed: int = 0) -> None: ...
    def add_request(self, request_id: int, prompt_len: int, output_len: int, now: float) -> None:
        """Queues a request arriving at `now` (not before the engine's clock). ValueError if a
        length is < 1 or the request can never fit in the KV cache."""
    def advance(self, until: float) -> list[tuple[int, str, float, int]]:
        """Runs every iteration that completes by `until` (starting the next one at each end) and
        returns the events since the last call, in time order, as (request_id, kind, time,
        tokens_so_far): "admitted" (at an iteration's start; again after a preemption),
        "first_token", "token" (one per output token, the first included), "preempted", "finished"
        (tokens_so_far = output_len)."""
    def next_event_time(self) -> float | None:
        """End of the iteration in flight; when idle, when the next iteration would start (the
        first waiting request's arrival); None when there is nothing to do."""
    def state(self) -> dict:
        """time, waiting, running, kv_used_tokens, kv_total, preemptions_total, completed_total,
        iteration (count of completed iterations), last_iteration_time and batch_tokens (of the
        last iteration started), in_flight, new_token_ratio (SGLang)."""
