"""Decode and prefill batch times of an engine that runs them as separate batches (SGLang), from
what its streams show the client.

Such an engine alternates batches of prefill chunks with decode steps of every running request,
so a request's time per output token holds one decode batch plus whatever prefill batches ran
in between, and a single b̄ prices both kinds of batch alike: the engine-aware model, which
counts the prefill batches itself, then counted them twice (−80% on compare's embedded default).
The two times separate in the client's data:

- the requests admitted by one prefill batch get their first tokens together, at its end, and
  two prefill batches are at least one batch apart, so clustering first-token times (gaps
  under half the shortest typical inter-token time) counts the prefill batches that ended in
  any span;
- a request's decode, from its first token to its last, took its o − 1 decode batches and the
  P prefill batches that ended meanwhile: D = (o − 1)·b_decode + P·b_prefill.

Least squares over the requests of a saturated run gives both times at its operating point,
which is where the engine-aware μ evaluates them. Long spans make the client's reading jitter
(a few milliseconds on a loaded machine, as long as a batch) negligible, where reconstructing
each iteration from token clusters was not (it merged a third of them here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvbench.backends.base import RequestRecord
from kvbench.calibration import least_squares_hc1
from kvbench.errors import KvbenchError

SOURCE = (
    "decode and prefill batch times from per-request decode spans and first-token clusters "
    "in {where} (client)"
)
# Below this many requests the two-parameter fit is not worth reporting.
MIN_REQUESTS = 40
# First tokens closer than this share of the 10th percentile of inter-token times end the same
# prefill batch (measured on the SGLang emulator: within a batch < 2 ms, between batches ≥ 8 ms
# against ≈ 13 ms decode batches).
CLUSTER_SHARE = 0.5


@dataclass(frozen=True)
class SeparateBatchTimes:
    decode: float
    prefill: float
    decode_stderr: float
    prefill_stderr: float
    requests: int
    prefill_batches_per_decode: float  # P over o − 1 across the requests: the mix measured
    source: str


def separate_batch_times(
    records: list[RequestRecord], *, after: float = 0.0, source: str = ""
) -> SeparateBatchTimes | None:
    """The decode and prefill batch times behind `records` (requests whose decode started at or
    after `after` and ended by the last first token, while the engine still had requests
    waiting), or None with fewer than MIN_REQUESTS such requests or a fit that is not positive."""
    done = [r for r in records if r.error is None and len(r.token_times) >= 1]
    streams = [np.diff(r.token_times) for r in done if len(r.token_times) > 1]
    if not streams:
        return None
    gaps = np.concatenate(streams)
    eps = CLUSTER_SHARE * float(np.quantile(gaps, 0.1))
    firsts = np.sort([r.token_times[0] for r in done])
    ends = firsts[np.concatenate(([True], np.diff(firsts) > eps))]
    last_admission = float(firsts[-1])
    spans = [
        r.token_times
        for r in done
        if len(r.token_times) > 1
        and r.token_times[0] >= after
        and r.token_times[-1] <= last_admission
    ]
    if len(spans) < MIN_REQUESTS:
        return None
    decodes = np.array([len(t) - 1 for t in spans], dtype=np.float64)
    first = np.array([t[0] for t in spans])
    last = np.array([t[-1] for t in spans])
    prefills = (
        np.searchsorted(ends, last, side="right") - np.searchsorted(ends, first, side="right")
    ).astype(np.float64)
    try:
        coef, cov, _, _ = least_squares_hc1([decodes, prefills], last - first, decodes.size)
    except KvbenchError:  # collinear: no prefill batch ended inside any decode
        return None
    if not np.all(coef > 0):
        return None
    se = np.sqrt(np.diag(cov))
    return SeparateBatchTimes(
        decode=float(coef[0]),
        prefill=float(coef[1]),
        decode_stderr=float(se[0]),
        prefill_stderr=float(se[1]),
        requests=int(decodes.size),
        prefill_batches_per_decode=float(prefills.sum() / decodes.sum()),
        source=source,
    )
