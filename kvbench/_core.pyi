"""Type stub for `kvbench._core`, the Rust extension: the whole Rust surface, documented.

Conventions: times are float64 seconds; lengths are int64 tokens; every random function takes an
explicit `seed` and is reproducible across platforms for a given seed.
"""

from typing import Protocol

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

def replay_arrivals(
    timestamps: npt.NDArray[np.float64], time_scale: float
) -> npt.NDArray[np.float64]:
    """A recorded schedule (non-decreasing seconds) shifted so the first arrival is at 0, then
    divided by `time_scale`: 2.0 replays twice as fast (double the rate), 0.5 at half speed."""

# --- HTTP driver (rust/driver/) ----------------------------------------------------------------
# The timed send/receive loop of the HTTP load generator. A dedicated OS thread sleeps until
# 500 µs before each intended send and hands the request to a tokio runtime (`workers`
# threads), whose task spins to the instant, POSTs it over pooled keep-alive connections (plain
# http:// only) and reads its server-sent events. Per chunk it parses choices[].finish_reason and
# usage.{completion,prompt}_tokens; a chunk with non-empty choices is a token event, timed on
# arrival; counts come from the final chunk with empty choices plus usage (TensorRT-LLM's is a
# chat object), never from the number of chunks. Failure kinds on records: http_<status>,
# timeout, connection_refused, connection_reset, bad_stream (also a line over 1 MiB),
# truncated_stream, missing_usage,
# short_output, long_output (these two keep finished and output_tokens), engine_down. A
# refused connection means the engine is gone: sending stops and requests in flight end as
# engine_down. Requests in flight at `duration` or at stop() are unfinished: sent, no finish,
# no error. Its threads never take the GIL; Python polls for records.

class DriverRecord:
    """One request's record. Times are seconds since the run's t0."""

    index: int  # position in the schedule given to HttpDriver
    sent: float  # when its task started sending (intended + client-side schedule lag)
    first_token: float | None
    finished: float | None  # `data: [DONE]` after a final usage chunk
    output_tokens: int | None  # the server's usage.completion_tokens
    prompt_tokens: int | None
    # one time per output token: the first chunk's arrival once, then each later chunk's k
    # tokens (from continuous usage; 1 without it) spread evenly over the gap before it
    token_times: list[float]
    error: str | None  # failure kind, see above
    # what the failure said: an HTTP error body's first 2,000 characters (kvbench.benchmark.
    # failures takes its JSON message, trims and masks it), a stream error naming the payload, ...
    message: str | None

class DriverProgress:
    """A bounded-backlog run's events since the last `HttpDriver.poll_progress()`, as arrays
    (int64 request indexes, float64 seconds since t0, int64 counts)."""

    @property
    def sent(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(index, time) per request sent."""
    @property
    def chunks(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """(index, arrival, output tokens so far) per chunk that carried output, in arrival
        order per request; the count grows by the chunk's running usage count (by 1 where the
        engine gives none, so a final usage above the last count means merged chunks)."""
    @property
    def unstarted(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(index, time) per request that ended without a first token (failed or cut off)."""

PROMPT_SLOT: int
"""Where a body template holds the prompt: `[PROMPT_SLOT]`, exactly once."""
OUTPUT_SLOT: int
"""Where a body template holds the output length (every occurrence)."""

class HttpDriver:
    """Sends one schedule to one completions URL.

    `send_times` (seconds from t0, non-decreasing, ≥ 0), `prompt_lens` (≥ 1) and `output_lens`
    (tokens each request asks for, checked against the server's count) are one per request.
    `body_template` is the engine adapter's JSON body with the prompt written as `[PROMPT_SLOT]`
    and the output length as `OUTPUT_SLOT`; each body is rendered as its request comes due, with
    fresh prompt ids drawn uniformly from `token_range` by a generator seeded with (`seed`, the
    request's index), so memory stays flat however long the run. Requests at or after
    `duration` are dropped, and nothing is sent at or after it even by a client that fell
    behind; `duration = inf` runs until every request has ended. `headers` (name, value) go on
    every request; values are never echoed. `request_timeout` bounds a whole request (None: no
    bound). `prefix_ids` and `prefix_lens` (together, one per request; a shared-prefix
    workload's) make a prompt open with its prefix's ids, drawn by a generator seeded with
    (`seed`, the prefix id), so requests naming one prefix send the same first tokens.
    Invalid input raises ValueError.
    """

    def __init__(
        self,
        url: str,
        send_times: npt.NDArray[np.float64],
        prompt_lens: npt.NDArray[np.int64],
        output_lens: npt.NDArray[np.int64],
        body_template: str,
        duration: float,
        *,
        seed: int = 0,
        token_range: tuple[int, int] = (1000, 30000),
        headers: list[tuple[str, str]] = ...,
        request_timeout: float | None = None,
        workers: int = 2,
        prefix_ids: npt.NDArray[np.int64] | None = None,
        prefix_lens: npt.NDArray[np.int64] | None = None,
    ) -> None: ...
    @staticmethod
    def backlog(
        url: str,
        prompt_lens: npt.NDArray[np.int64],
        output_lens: npt.NDArray[np.int64],
        body_template: str,
        *,
        backlog: int,
        seed: int = 0,
        token_range: tuple[int, int] = (1000, 30000),
        headers: list[tuple[str, str]] = ...,
        request_timeout: float | None = None,
        workers: int = 2,
    ) -> HttpDriver:
        """A bounded-backlog run instead of a schedule: from `start()` on, `backlog` requests
        are kept sent and not started (no first token). The first `backlog` of the stream
        (`prompt_lens`, `output_lens`, one pair per request, in order; `extend` appends) are
        sent at once; then the task that reads a request's first chunk, or sees it end without
        one, sends the next itself, so a top-up follows a start by microseconds. When the stream
        runs dry the places owed are sent on `extend`. It runs until `stop()`; records and
        failure kinds are as for a schedule (index = position in the stream), and
        `poll_progress()` gives its events. Invalid input raises ValueError."""
    def extend(
        self, prompt_lens: npt.NDArray[np.int64], output_lens: npt.NDArray[np.int64]
    ) -> None:
        """Append requests to a bounded-backlog run's stream (RuntimeError on a schedule)."""
    @property
    def remaining(self) -> int:
        """Requests of a bounded-backlog run's stream not yet sent (0 for a schedule)."""
    def poll_progress(self) -> DriverProgress:
        """A bounded-backlog run's events since the last call (empty for a schedule); poll()
        first, and every chunk of a request it reports is in this."""
    def start(self, elapsed: float) -> None:
        """Start sending; `elapsed` = time.monotonic() − t0 (negative while t0 is ahead), so the
        driver's times line up with Python's monotonic clock. Once only (RuntimeError after)."""
    def poll(self) -> list[DriverRecord]:
        """Records of the requests that ended since the last call (cheap; call every ~10 ms)."""
    def stop(self, wait: float = 5.0) -> None:
        """End the run now: send nothing more, report requests in flight unfinished; returns
        when every record is ready to poll (at most `wait` seconds)."""
    @property
    def in_flight(self) -> int:
        """Requests sent and not yet reported."""
    @property
    def sent(self) -> int:
        """Requests sent so far."""
    @property
    def engine_down_at(self) -> float | None:
        """Seconds since t0 when the engine first refused a connection; None while it answers."""
    @property
    def finished(self) -> bool:
        """Sending is over and every sent request has its record (poll once more after)."""

# --- engine simulator (rust/sim/) ---------------------------------------------------------------
# An iteration-level continuous-batching engine with a KV cache of `profile.kv_tokens` tokens in
# pages of `block_size`. Each iteration schedules running requests first (every decoding request
# steps one token; prefill chunks of at most `chunk_size` tokens share what the decodes leave of
# `token_budget`), then admits waiting requests FCFS (no overtaking) up to `max_running`, by the
# profile's rule:
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
# Iteration time = c0 + c1·min(batch tokens, knee) + c1_above·(the rest) + c2·(KV tokens the
# batch attends over) + c3·Σ prefill chunk·(cached + chunk), times a lognormal factor with mean 1
# when noise_sigma > 0 (no knee: c1 for every token). The vllm rule with prefix_caching keeps a
# preempted request's freed pages reusable until reallocated (vLLM v1's LRU free queue); with
# full_sequence_admission it admits a waiting request only when pages for its whole known sequence
# are free (vLLM's --scheduler-reserve-full-isl), else when its first chunk fits. Arrivals during
# an iteration wait for the next. Invalid input raises ValueError naming the request or field;
# `kvbench.simulator` turns it into KvbenchError.

class _IterationTimeModelLike(Protocol):
    @property
    def c0(self) -> float: ...
    @property
    def c1(self) -> float: ...
    @property
    def c2(self) -> float: ...
    @property
    def noise_sigma(self) -> float: ...
    @property
    def knee(self) -> int | None: ...
    @property
    def c1_above(self) -> float: ...
    @property
    def c3(self) -> float: ...

class _EngineProfileLike(Protocol):
    """`kvbench.profile.EngineProfile`: read attribute by attribute."""

    @property
    def policy(self) -> str: ...
    @property
    def kv_tokens(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def token_budget(self) -> int: ...
    @property
    def max_running(self) -> int: ...
    @property
    def iteration_time(self) -> _IterationTimeModelLike: ...
    @property
    def max_tokens_cap(self) -> int | None: ...
    @property
    def separate_prefill_decode(self) -> bool: ...
    @property
    def sglang_init_ratio(self) -> float: ...
    @property
    def sglang_min_ratio(self) -> float: ...
    @property
    def sglang_decay_steps(self) -> int: ...
    @property
    def prefix_caching(self) -> bool: ...
    @property
    def full_sequence_admission(self) -> bool: ...

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
    def abort(self, request_id: int) -> None:
        """Drops a request whose client went away, as engines abort on disconnect: a waiting one
        leaves the queue at once, a running one when the iteration in flight ends (freeing its
        KV before the next batch). No further event is reported for it; unknown ids are ignored."""
    def next_event_time(self) -> float | None:
        """End of the iteration in flight; when idle, when the next iteration would start (the
        first waiting request's arrival); None when there is nothing to do."""
    def state(self) -> dict:
        """time, waiting, running, kv_used_tokens, kv_total, preemptions_total, completed_total,
        iteration (count of completed iterations), last_iteration_time, batch_tokens,
        decode_requests, prefill_requests and prefill_tokens (of the last iteration started: its
        composition), in_flight, new_token_ratio (SGLang)."""

class BacklogSim:
    """The bounded-backlog saturation probe (rust/sim/backlog.rs): `replicas` engines, each kept
    with exactly `backlog` requests sent but not yet started (no first token). When a request's
    first token comes, the next request of the stream is sent to the same replica at that
    instant (it waits for the next iteration). Replica r draws its noise from seed + r. Results
    are per bin of `bin_width` seconds from t = 0."""

    def __init__(
        self,
        profile: _EngineProfileLike,
        prompt_len: npt.NDArray[np.int64],
        output_len: npt.NDArray[np.int64],
        *,
        backlog: int,
        replicas: int = 1,
        seed: int = 0,
        bin_width: float = 0.25,
    ) -> None: ...
    def extend(self, prompt_len: npt.NDArray[np.int64], output_len: npt.NDArray[np.int64]) -> None:
        """Appends requests to the stream the client sends from."""
    def advance(self, until: float) -> dict:
        """Runs every iteration that ends by `until`; returns the bins that ended since the last
        call: first (index of the first), work (served work, see `served_work`), starts (first
        tokens), start_prompt and start_output (the prompt and output tokens of the requests
        those first tokens started), finishes, backlog (sent-not-started, all replicas, at each bin's end), waiting
        (the engines' waiting queues there). ValueError if the stream runs out (extend first)."""
    remaining: int  # requests of the stream not yet sent
    sent: int
    clock: float

# --- served work (rust/served.rs) ---------------------------------------------------------------

def served_work(
    prompt_len: npt.NDArray[np.int64],
    chunk: int,
    request: npt.NDArray[np.int64],
    time: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    *,
    bin_width: float,
    bins: int,
) -> npt.NDArray[np.float64]:
    """Served work per bin from streamed-token events. Event e says request `request[e]` had
    streamed `tokens[e]` tokens in all at `time[e]` (per request in time order; a chunk may carry
    several tokens); it adds G(s, k_e) − G(s, k_before) to the bin holding its time, where
    G(s, k) = g_pre(s) + (k − 1)s + k(k − 1)/2 and g_pre(s) = Σ_{j=1..⌈s/ŝ⌉} min(j·ŝ, s) with
    ŝ = `chunk`. Events at or after bins·bin_width are dropped. ValueError on a count that goes
    back, an unknown request, or a negative time."""

# --- queue statistics (rust/stats.rs) -----------------------------------------------------------

_F64 = npt.NDArray[np.float64]

class QueueAnalysis:
    """Everything the stability verdict needs from one run (see `analyze_queue`).

    Intervals are two-sided at `confidence`; rates are requests per second.
    """

    warmup_end: float  # end of the warm-up MSER-5 removed; steady window is [warmup_end, end)
    end: float
    mean_in_system: float  # time-weighted mean of requests in system over the steady window
    max_in_system: float
    final_in_system: float  # requests in system at `end`
    slope: float  # growth of requests in system over the steady window (requests/s)
    slope_lo: float
    slope_hi: float
    slope_batches: int  # batch count the interval used (32, 16 or 10)
    slope_lag1: float  # lag-1 autocorrelation of the batch values behind the interval
    # "batch-means regression", or "batch slopes" when the batch means stayed correlated at 10
    # batches (random-walk-like queue: the mean of within-batch OLS slopes, t on k − 1 dof)
    slope_method: str
    # start of the window the rates use: MSER-5 on per-interval departure counts (in an overloaded
    # run that ends at the KV-cache fill, not half-way like the trend in requests in system)
    rate_window_start: float
    departure_rate: float  # completions per second over [rate_window_start, end)
    departure_lo: float
    departure_hi: float
    arrival_rate: float  # sends per second over the same window
    arrival_lo: float
    arrival_hi: float
    confidence: float

def analyze_queue(enter: _F64, leave: _F64, end: float, confidence: float = 0.95) -> QueueAnalysis:
    """Queue statistics of one run from each request's enter (send) and leave (finish) time;
    leave is NaN for a request still in the system at `end`. Requests in system form a step
    function; MSER-5 on 200 equal-interval means picks the warm-up; over the rest, the slope is
    the OLS slope of batch means with a Student-t interval (batch count chosen LBatch-style, the
    standard error inflated by sqrt((1+r1)/(1−r1)) for leftover lag-1 autocorrelation r1; when
    even 10 batch means stay correlated, the mean of 10 within-batch slopes instead), and
    the departure/arrival rates get t-intervals from per-batch counts over the window MSER-5
    leaves of the per-interval departure counts."""

def step_mean_max(
    times: _F64, values: _F64, start: float, end: float, initial: float = 0.0
) -> tuple[float, float]:
    """Time-weighted mean and maximum over [start, end) of the step function that takes
    values[i] from times[i] (sorted) on, and `initial` before times[0]. NaN for an empty window."""

def interval_means(times: _F64, values: _F64, edges: _F64, initial: float = 0.0) -> _F64:
    """Time-weighted mean of the same step function over each [edges[i], edges[i+1])."""

def in_system_steps(enter: _F64, leave: _F64) -> tuple[_F64, _F64]:
    """Requests in system as a step function: (distinct event times, count just after each);
    NaN leave times never leave."""

def mser5(observations: _F64) -> int:
    """MSER-5 warm-up truncation: how many leading observations to drop (a multiple of 5)."""

def student_t_quantile(p: float, dof: float) -> float:
    """Quantile of Student's t distribution with `dof` degrees of freedom."""

def batch_means_slope(
    times: _F64, values: _F64, start: float, end: float, confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """(slope, lo, hi, batches) of a step function over [start, end) by OLS on batch means."""

def event_rate(
    event_times: _F64, start: float, end: float, confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """(rate, lo, hi, batches) of events in [start, end), interval from per-batch counts."""
