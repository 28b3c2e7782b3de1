"""The served-work estimator of a saturated engine's service rate.

A request with prompt s that has streamed k tokens has been served G(s, k) = g_pre(s) + (k − 1)s
+ k(k − 1)/2 token·iterations of KV (`kvbench._core.served_work`; g_pre is the chunked prefill),
and G(s, o) is its whole lifetime memory g. Summed over requests, P(t) = Σ_i G_i(t) counts
requests still in flight (at either end of a window) by the part of their work done in it. A
saturated engine serves its binding resource, KV memory, at a nearly constant rate, so

    λ̂ = ΔP / (Δt · E[g])

over the steady window varies 4–6× less between seeds than the completion count does (issue 13's
measurement), and it needs no request to finish inside the window. E[g] is exact: over a
synthetic law's support, or over a trace's rows, which the probe resamples uniformly.

Warm-up is the larger of MSER-5 on the series and two request lives (the cache fills over the
first life). The interval is the batch-means one: the steady window in ≥ 16 equal batches of at
least a quarter life each (at most 32), Student t quantiles on the batch rates. Sixteen, not
eight: the search stops at the first look whose interval is narrow enough, and with 8 batches a
chance small spread stopped it early often enough that coverage of the reference λ* fell to
92.5% (trtllm) and 93.3% (vllm) over 4 workloads × 30 seeds; with 16 it is ≥ 95% in every rule
(docs/benchmarks.md). More, smaller batches (up to 64) lowered vLLM's coverage again: quarter-life
batches are correlated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kvbench import _core
from kvbench.engine_theory import paged_lifetime_memory
from kvbench.workload import SyntheticWorkload, Workload

MIN_BATCHES = 16
MAX_BATCHES = 32
WARMUP_LIVES = 2.0
BATCH_LIVES = 0.25


def mean_work(workload: Workload, chunk: int) -> float:
    """E[g] with g = G(s, o), a whole request's served work, exactly: over a synthetic law's
    support (s and o independent, so by marginals) or a trace's rows (`draw` resamples them)."""
    if isinstance(workload, SyntheticWorkload):
        u = workload.law
        s, o = u.prompt_support(), u.output_support()
        # G(s, o) = g_pre(s) + (o − 1)s + o(o − 1)/2; g_pre is g with no decode step
        pre = paged_lifetime_memory(s, np.zeros_like(s), chunk, 1).astype(np.float64)
        of = o.astype(np.float64)
        sf = s.astype(np.float64)
        g = pre.mean() + (of - 1).mean() * sf.mean() + (of * (of - 1) / 2).mean()
        return float(g)
    s, o = workload.rows()
    return float(paged_lifetime_memory(s, o - 1, chunk, 1).astype(np.float64).mean())


@dataclass(frozen=True)
class ServedRate:
    """λ̂ with its interval [lo, hi] at `confidence`, over the window [start, end) seconds,
    from `batches` batch means of `batch_seconds` each; `departures`: completions per second in
    the same window, for comparison (the count the served work replaces)."""

    rate: float
    lo: float
    hi: float
    confidence: float
    start: float
    end: float
    warmup_mser: float
    batches: int
    batch_seconds: float
    departures: float

    @property
    def width(self) -> float:
        return self.hi / self.lo - 1.0 if self.lo > 0 else math.inf


def served_rate(
    work: np.ndarray,
    bin_width: float,
    mean_g: float,
    *,
    life: float,
    confidence: float,
    finishes: np.ndarray | None = None,
) -> ServedRate | None:
    """The estimate from a served-work series `work` (per bin of `bin_width` seconds, from t = 0)
    given E[g] = `mean_g`; None while the steady window holds fewer than
    MIN_BATCHES batches of a quarter life."""
    x = np.asarray(work, dtype=np.float64) / (bin_width * mean_g)
    n = x.size
    mser = _core.mser5(x) if n >= 10 else 0
    warm = max(mser, math.ceil(WARMUP_LIVES * life / bin_width))
    per_batch = max(1, math.ceil(BATCH_LIVES * life / bin_width))
    batches = min(MAX_BATCHES, (n - warm) // per_batch)
    if batches < MIN_BATCHES:
        return None
    size = (n - warm) // batches
    start = n - batches * size  # the remainder goes to the warm-up, not the newest data
    means = x[start:].reshape(batches, size).mean(axis=1)
    rate = float(means.mean())
    q = (1.0 + confidence) / 2.0
    half = _core.student_t_quantile(q, batches - 1) * float(means.std(ddof=1)) / math.sqrt(batches)
    departures = (
        float(np.sum(finishes[start:n]) / ((n - start) * bin_width))
        if finishes is not None
        else math.nan
    )
    return ServedRate(
        rate=rate,
        lo=rate - half,
        hi=rate + half,
        confidence=confidence,
        start=start * bin_width,
        end=n * bin_width,
        warmup_mser=mser * bin_width,
        batches=batches,
        batch_seconds=size * bin_width,
        departures=departures,
    )
