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
