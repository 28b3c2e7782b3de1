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
    departure_rate: float  # completions per second in the steady window
    departure_lo: float
    departure_hi: float
    arrival_rate: float  # sends per second in the steady window
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
    the departure/arrival rates get t-intervals from per-batch counts."""

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
