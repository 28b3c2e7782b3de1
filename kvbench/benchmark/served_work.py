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
first life). The interval is the batch-means one with control variates: the steady window in
24 to 48 equal batches of at least a quarter life each, and per batch three quantities whose mean
is known to be zero —

- starts per second less the batch's served rate (both estimate λ),
- Σ (s − E[s]) and Σ (o − E[o]) over the requests that started in the batch, per second (the
  stream is i.i.d. with exactly known means).

The served rate of a saturated engine moves with the mix it was given: over 180 s windows of the
Azure trace on the simulator its correlation with the mean prompt length of the requests that
started is −0.56 to −0.82, with the mean output +0.54 to +0.87 (prefill costs time that decode
of the same work does not). That is the whole-window error batch means cannot see, and it left
the plain interval covering the Azure trace's λ* in 24–25 of 30 seeds. The estimator is
ȳ − β'c̄ with β the least-squares slope of the batch rates on the controls, its variance
s²·(1/n + c̄'S⁻¹c̄) with Student t at n − q − 1 degrees of freedom (Lavenberg & Welch 1981;
Nelson 1990 for batch means), q the controls' rank (a fixed length's control never moves).

The search looks every few seconds and stops at the first look narrow enough, and stopping on a
narrow interval picks the ones whose spread came out small: so each look's interval is taken at
1 − (1 − c)/2 for a stated confidence c, and 24 batches, not 16, before the first look. Measured
over 4 rules × 4 workloads × 30 seeds (docs/benchmarks.md): with the controls, looks at 95% and
16 batches, coverage was 90.8–97.5% per rule; with both changes it is 96.7–99.2% in every rule
over seeds 0–59, for a median of 185 engine-seconds (p90 270) against 392 (720) without the
controls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kvbench import _core
from kvbench.engine_theory import paged_lifetime_memory
from kvbench.workload import SyntheticWorkload, Workload

MIN_BATCHES = 24
MAX_BATCHES = 48
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


def mean_lengths(workload: Workload) -> tuple[float, float]:
    """E[s] and E[o] of the requests a probe draws, exactly (as `mean_work`)."""
    if isinstance(workload, SyntheticWorkload):
        return (
            float(workload.law.prompt_support().mean()),
            float(workload.law.output_support().mean()),
        )
    s, o = workload.rows()
    return float(s.mean()), float(o.mean())


@dataclass(frozen=True)
class Started:
    """Per bin, the requests that started (first token) and their prompt and output tokens, with
    the stream's exact mean lengths: the estimator's control variates."""

    count: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    mean_prompt: float
    mean_output: float


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
    started: Started | None = None,
    finishes: np.ndarray | None = None,
) -> ServedRate | None:
    """The estimate from a served-work series `work` (per bin of `bin_width` seconds, from t = 0)
    given E[g] = `mean_g`, with the control variates of `started` (plain batch means without);
    None while the steady window holds fewer than MIN_BATCHES batches of a quarter life."""
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

    def batch_means(series: np.ndarray) -> np.ndarray:
        return np.asarray(series[start:n], np.float64).reshape(batches, size).mean(axis=1)

    means = batch_means(x)
    controls = [] if started is None else _controls(started, means, batch_means, bin_width)
    c = np.array(controls).reshape(len(controls), batches).T  # batches × q
    cc = c - c.mean(axis=0)
    yc = means - means.mean()
    # lstsq's rank and pinv: a control that never moves (a fixed length) counts for nothing, two
    # that move together (prompts as long as outputs) count once
    beta, _, rank, _ = np.linalg.lstsq(cc, yc, rcond=None)
    cbar = c.mean(axis=0)
    rate = float(means.mean() - cbar @ beta)
    dof = batches - int(rank) - 1
    resid = yc - cc @ beta
    inflation = 1.0 / batches + float(cbar @ np.linalg.pinv(cc.T @ cc) @ cbar)
    var = float(resid @ resid) / dof * inflation
    # each look at 1 − (1 − c)/2: the search stops at the first narrow look (module docstring)
    q = 1.0 - (1.0 - confidence) / 4.0
    half = _core.student_t_quantile(q, dof) * math.sqrt(var)
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


def _controls(
    started: Started,
    rates: np.ndarray,
    batch_means: Callable[[np.ndarray], np.ndarray],
    bin_width: float,
) -> list[np.ndarray]:
    """Per batch, the known-zero-mean controls (module docstring), scaled to rates."""
    starts = batch_means(started.count) / bin_width
    controls = [starts - rates]
    for tokens, mean in (
        (started.prompt, started.mean_prompt),
        (started.output, started.mean_output),
    ):
        controls.append(batch_means(tokens / mean) / bin_width - starts)
    return controls
