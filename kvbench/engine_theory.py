"""Engine-aware stability rate: the paper's memory bound made specific to one engine's scheduler.

The paper's μ = M / (b̄·E[g]) is one number per workload. An engine's own boundary also depends on
how it admits and preempts, how it rounds memory to pages, its per-iteration token budget, its
cap on running requests, and an iteration time that grows with the batch. This module takes an
`EngineProfile` and a length law p(s, o) and returns the minimum over:

- **memory** (admission by current need: `ideal`, `vllm`): requests hold page-rounded KV, so
  λ_it · E[g_page] ≤ M − gap, where λ_it is completions per iteration and the gap is memory the
  head-of-line request cannot use; vLLM also loses memory and batch tokens to preemption churn;
- **reservation** (`trtllm`, GUARANTEED_NO_EVICT): a request reserves R = page(s + max_tokens)
  at admission and holds it for its whole life of L iterations, so λ_it · E[R·L] ≤ M − gap;
- **token budget** (Li, Dai and Peng's condition): a request needs s + o − 1 batch tokens and an
  iteration carries at most K, so λ_it · E[s + o − 1] ≤ K;
- **running cap**: a request occupies one of B running slots for L iterations: λ_it · E[L] ≤ B.

Lives follow the engines: ⌈s/ŝ⌉ prefill chunks, the last of which samples the first output
token, then o − 1 decode iterations, so L = ⌈s/ŝ⌉ + o − 1 (the paper counts o decode steps).

Every bound is a rate in completions per *iteration*. Converting it to completions per second
needs the *mean* iteration time at that operating point (μ = λ_it / E[b]; the median, which the
paper used, is a decode-only iteration's and misses the prefill work). The attended KV tokens
and prefill-attention pairs per iteration follow from λ_it by Little's law over iterations and
enter linearly. The batch-token part of the model is not linear when it has a knee, so its mean
is taken over the iterations as the engine runs them: D = λ_it·E[o − 1] decodes in every
iteration, and a fraction λ_it·E[chunks] of them also carry one prefill chunk (⌈s/ŝ⌉ − 1 chunks
of ŝ and the rest). λ_it/E[b](λ_it) increases with λ_it, so the smallest λ_it is also the
smallest μ and the binding constraint is the same in either unit. No saturation run is needed.

SGLang runs prefill and decode as separate batches by default (`separate_prefill_decode`), with
its own admission reserve; `_separate_bounds` explains how that changes the count.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from kvbench import theory as paper_model
from kvbench.calibration import IterationTimeFit
from kvbench.errors import KvbenchError
from kvbench.profile import UNLIMITED, EngineProfile, IterationTimeModel
from kvbench.workload import SyntheticWorkload, Workload


@dataclass(frozen=True)
class LengthLaw:
    """A joint law of (prompt, output) lengths as weighted support points.

    `exact` laws (synthetic specs) list their whole support, so expectations are exact; sample
    laws (traces) list observed rows with equal weight, and expectations carry a standard error."""

    prompt: np.ndarray
    output: np.ndarray
    weight: np.ndarray
    exact: bool
    name: str = ""
    # Per-(chunk, page) request quantities, computed once per law: the support can be millions
    # of points (pd-1:1 has 1591²).
    _lives: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def sample(cls, prompt, output, name: str = "") -> LengthLaw:
        s = np.asarray(prompt, dtype=np.int64)
        o = np.asarray(output, dtype=np.int64)
        if s.shape != o.shape or s.ndim != 1 or s.size == 0:
            raise KvbenchError(
                f"{name or 'workload'}: needs equally long, non-empty length columns"
            )
        return cls(s, o, np.full(s.size, 1.0 / s.size), exact=False, name=name)

    @classmethod
    def uniform(cls, s_lo: int, s_hi: int, o_lo: int, o_hi: int, name: str = "") -> LengthLaw:
        """s and o independent and discrete-uniform on the inclusive ranges: the whole grid."""
        if not (0 < s_lo <= s_hi and 0 < o_lo <= o_hi):
            raise KvbenchError(f"{name or 'uniform law'}: empty or non-positive length range")
        s, o = np.meshgrid(
            np.arange(s_lo, s_hi + 1, dtype=np.int64), np.arange(o_lo, o_hi + 1, dtype=np.int64)
        )
        return cls(s.ravel(), o.ravel(), np.full(s.size, 1.0 / s.size), exact=True, name=name)

    @classmethod
    def fixed(cls, s: int, o: int, name: str = "") -> LengthLaw:
        return cls.uniform(s, s, o, o, name=name)

    @classmethod
    def from_workload(cls, workload: Workload) -> LengthLaw:
        """A synthetic workload's whole support, or a trace's rows."""
        if isinstance(workload, SyntheticWorkload):
            u = workload.law
            return cls.uniform(
                u.prompt_min, u.prompt_max, u.output_min, u.output_max, workload.name
            )
        s, o = workload.rows()
        return cls.sample(s, o, name=workload.name)

    def mean(self, values: np.ndarray) -> float:
        return float(np.dot(self.weight, values))

    def stderr(self, values: np.ndarray) -> float:
        """Standard error of `mean(values)`: zero for an exact law."""
        if self.exact or values.size < 2:
            return 0.0
        return float(np.std(values, ddof=1) / math.sqrt(values.size))


def paged(tokens: np.ndarray, page: int) -> np.ndarray:
    """Tokens rounded up to whole pages of `page` tokens: what a paged KV cache allocates."""
    return -(-tokens // page) * page


def _paged_prefix_sum(n: np.ndarray, page: int) -> np.ndarray:
    """Σ_{t=1..n} paged(t): with n = q·page + r, full pages k = 1..q each contribute page·k·page
    and the r tokens of the last, partial page each hold page·(q+1)."""
    q, r = np.divmod(n, page)
    return page * page * q * (q + 1) // 2 + r * page * (q + 1)


def paged_lifetime_memory(s: np.ndarray, o: np.ndarray, chunk: int, page: int) -> np.ndarray:
    """Lifetime memory g in token·iterations with page rounding: the paper's g(s, o) (prefill
    chunks min(kŝ, s) for k = 1..⌈s/ŝ⌉, then s+1, …, s+o while decoding) with every footprint
    rounded up to whole pages. page = 1 gives the paper's exact g."""
    s = np.asarray(s, dtype=np.int64)
    o = np.asarray(o, dtype=np.int64)
    n_chunks = -(-s // chunk)
    prefill = np.zeros_like(s)
    for k in range(1, int(n_chunks.max(initial=0)) + 1):
        prefill += np.where(k <= n_chunks, paged(np.minimum(k * chunk, s), page), 0)
    decode = _paged_prefix_sum(s + o, page) - _paged_prefix_sum(s, page)
    return prefill + decode


def head_of_line_gap(need: np.ndarray, law: LengthLaw) -> float:
    """Mean memory left idle because the head of the queue needs more than is free.

    At saturation admissions stack footprints `need` onto memory until the next one does not fit,
    and completions move the free level by amounts unrelated to the stack's grid. The idle part is
    then the age of a renewal process with steps `need` at a random point: E[need²] / (2·E[need])."""
    m1 = law.mean(need.astype(np.float64))
    return law.mean(need.astype(np.float64) ** 2) / (2.0 * m1) if m1 > 0 else 0.0


@dataclass(frozen=True)
class Bound:
    """One constraint's operating point: completions per iteration, the mean batch tokens and KV
    tokens held per iteration there, the iteration time the model gives, and the rate μ = λ_it/b."""

    name: str
    per_iteration: float
    batch_tokens: float
    kv_tokens: float
    iteration_time: float
    mu: float
    detail: str


@dataclass(frozen=True)
class EngineAwarePrediction:
    """The engine-aware stability rate of one replica and every bound behind it."""

    engine: str
    mu: float
    mu_stderr: float
    binding: str
    bounds: tuple[Bound, ...]
    iteration_model: IterationTimeModel

    @property
    def iteration_time(self) -> float:
        return self.binding_bound.iteration_time

    @property
    def binding_bound(self) -> Bound:
        return next(b for b in self.bounds if b.name == self.binding)

    def to_json(self) -> dict:
        return {
            "engine": self.engine,
            "mu": self.mu,
            "mu_stderr": self.mu_stderr,
            "binding": self.binding,
            "iteration_time": self.iteration_time,
            "iteration_model": {
                "c0": self.iteration_model.c0,
                "c1": self.iteration_model.c1,
                "c2": self.iteration_model.c2,
                "noise_sigma": self.iteration_model.noise_sigma,
            },
            "bounds": [
                {
                    "name": b.name,
                    "mu": b.mu,
                    "per_iteration": b.per_iteration,
                    "iteration_time": b.iteration_time,
                    "batch_tokens": b.batch_tokens,
                    "kv_tokens": b.kv_tokens,
                    "detail": b.detail,
                }
                for b in self.bounds
            ],
        }


@dataclass(frozen=True)
class RequestLives:
    """Per-request quantities over a law's support, as an engine runs a request: ⌈s/ŝ⌉ prefill
    chunks, the last of which samples the first output token, then o − 1 decode iterations.

    tokens: batch tokens the request uses (s prefill + o − 1 decode);
    iterations: iterations it runs (holding KV and a running slot) in mixed batches;
    area: Σ over those iterations of its page-rounded KV (token·iterations): memory it occupies;
    attended: the same without page rounding: the KV its batches attend to (the c2 term);
    prefill_area / decode_area: `attended` split at the end of prefill;
    prefill_pairs: Σ over prefill chunks of chunk·(cached + chunk), prefill attention's work;
    decode_area_paged: the page-rounded decode part;
    remaining_area: Σ over decode iterations of its remaining output (SGLang's reserve);
    chunks: ⌈s/ŝ⌉."""

    tokens: np.ndarray
    iterations: np.ndarray
    area: np.ndarray
    attended: np.ndarray
    prefill_area: np.ndarray
    prefill_pairs: np.ndarray
    decode_area_paged: np.ndarray
    remaining_area: np.ndarray
    chunks: np.ndarray


def request_lives(law: LengthLaw, chunk: int, page: int) -> RequestLives:
    cached = law._lives.get((chunk, page))
    if cached is None:
        cached = law._lives[(chunk, page)] = _request_lives(law, chunk, page)
    return cached


def _request_lives(law: LengthLaw, chunk: int, page: int) -> RequestLives:
    s, o = law.prompt, law.output
    decodes = o - 1
    chunks = -(-s // chunk)
    # One pass over the chunks for both the paged and the exact prefill area.
    prefill_paged = np.zeros_like(s)
    prefill = np.zeros_like(s)
    pairs = np.zeros(s.shape, dtype=np.float64)
    previous = np.zeros_like(s)
    for k in range(1, int(chunks.max(initial=0)) + 1):
        held = np.where(k <= chunks, np.minimum(k * chunk, s), 0)
        prefill += held
        prefill_paged += paged(held, page)
        pairs += np.where(k <= chunks, (held - previous) * held.astype(np.float64), 0.0)
        previous = np.where(k <= chunks, held, previous)
    decode_paged = _paged_prefix_sum(s + decodes, page) - _paged_prefix_sum(s, page)
    decode = decodes * s + decodes * (decodes + 1) // 2
    f = np.float64
    return RequestLives(
        tokens=(s + decodes).astype(f),
        iterations=(chunks + decodes).astype(f),
        area=(prefill_paged + decode_paged).astype(f),
        attended=(prefill + decode).astype(f),
        prefill_area=prefill.astype(f),
        prefill_pairs=pairs,
        decode_area_paged=decode_paged.astype(f),
        remaining_area=(decodes * o / 2).astype(f),  # Σ_{j=1..o−1} (o − j)
        chunks=chunks.astype(f),
    )


def _batch_time(model: IterationTimeModel, tokens):
    """The batch-token part of the model (c0 and the c1 terms), elementwise."""
    t = np.asarray(tokens, dtype=np.float64)
    below = t if model.knee is None else np.minimum(t, model.knee)
    return model.c0 + model.c1 * below + model.c1_above * (t - below)


@dataclass(frozen=True)
class _Work:
    """What one completed request adds to the iterations it runs in: its own decodes and prefill
    chunks, plus `recompute` tokens re-prefilled after preemption (in chunks of ŝ, each attending
    to about `recompute_context` cached tokens)."""

    law: LengthLaw
    lives: RequestLives
    chunk: int
    recompute: float = 0.0
    recompute_context: float = 0.0


def _mean_iteration_time(model: IterationTimeModel, per_it: float, work: _Work, kv: float) -> float:
    """E[b] over the iterations at `per_it` completions per iteration: D = per_it·E[o − 1]
    decodes in each, one prefill chunk in a fraction per_it·E[chunks] of them (all of them, at
    the mean batch, when that fraction reaches 1), plus the linear KV and prefill-attention
    terms."""
    law, lives, chunk = work.law, work.lives, work.chunk
    decodes = per_it * law.mean(law.output.astype(np.float64) - 1.0)
    extra_chunks = work.recompute / chunk
    with_chunk = per_it * (law.mean(lives.chunks) + extra_chunks)
    if with_chunk >= 1.0:
        tokens = per_it * (law.mean(lives.tokens) + work.recompute)
        batch = float(_batch_time(model, tokens))
    else:
        s = law.prompt.astype(np.float64)
        last = s - (lives.chunks - 1.0) * chunk
        full = float(_batch_time(model, decodes + chunk))
        own = law.mean((lives.chunks - 1.0) * full + _batch_time(model, decodes + last))
        batch = (1.0 - with_chunk) * float(_batch_time(model, decodes)) + per_it * (
            own + extra_chunks * full
        )
    pairs = per_it * (law.mean(lives.prefill_pairs) + work.recompute * work.recompute_context)
    return batch + model.c2 * kv + model.c3 * pairs


def _mixed_point(
    name: str,
    per_it: float,
    batch: float,
    kv: float,
    model: IterationTimeModel,
    detail: str,
    work: _Work,
    full_batches: bool = False,
) -> Bound:
    """One bound's operating point. full_batches: every iteration carries `batch` tokens (the
    token budget binds), instead of the decode/prefill mix of `_mean_iteration_time`."""
    if full_batches:
        pairs = per_it * law_pairs(work)
        b = float(_batch_time(model, batch)) + model.c2 * kv + model.c3 * pairs
    else:
        b = _mean_iteration_time(model, per_it, work, kv)
    if b <= 0:
        raise KvbenchError(f"iteration-time model gives {b:.3g} s at the {name} operating point")
    return Bound(name, per_it, batch, kv, b, per_it / b, detail)


def law_pairs(work: _Work) -> float:
    """Prefill-attention pairs per completed request, its recompute included."""
    return work.law.mean(work.lives.prefill_pairs) + work.recompute * work.recompute_context


def _mixed_bounds(
    profile: EngineProfile,
    law: LengthLaw,
    lives: RequestLives,
    model: IterationTimeModel,
    waste: float | None,
) -> list[Bound]:
    """Engines whose every iteration carries prefill chunks and decodes together."""
    M = profile.usable_kv_tokens
    e_tokens = law.mean(lives.tokens)
    e_attended = law.mean(lives.attended)
    own = _Work(law, lives, profile.chunk_size)
    bounds: list[Bound] = []
    if profile.policy == "trtllm":
        max_tokens = (
            law.output
            if profile.max_tokens_cap is None
            else np.maximum(law.output, profile.max_tokens_cap)
        )
        reserve = paged(law.prompt + max_tokens, profile.block_size)
        reserved_area = law.mean(reserve.astype(np.float64) * lives.iterations)
        gap = head_of_line_gap(reserve, law)
        per_it = (M - gap) / reserved_area
        bounds.append(
            _mixed_point(
                "reservation",
                per_it,
                per_it * e_tokens,
                per_it * e_attended,
                model,
                f"E[page(s+max_tokens)·life] = {reserved_area:,.0f} token·iterations, "
                f"head-of-line gap {gap:,.0f} tokens",
                own,
            )
        )
    else:
        first = paged(np.minimum(law.prompt, profile.chunk_size), profile.block_size)
        gap = head_of_line_gap(first, law)
        e_area = law.mean(lives.area)
        # A recomputed token sits, on average, halfway through a request's decode.
        context = law.mean(law.prompt.astype(np.float64)) + law.mean(law.output) / 2.0
        # Completions per iteration the budget and the running cap allow: when one of them is
        # lower than memory's, memory never fills and nothing is preempted.
        others = [profile.token_budget / e_tokens] if profile.token_budget < UNLIMITED else []
        if profile.max_running < UNLIMITED:
            others.append(profile.max_running / law.mean(lives.iterations))
        if waste is None and profile.policy == "vllm":
            # A priori: memory is full, the head request is admitted with one chunk whenever
            # pages free up and preempted at the next step that runs short, so about half a
            # first chunk per iteration is held by a request that will not keep it.
            held = law.mean(first.astype(np.float64)) / 2.0
            per_it = (M - gap - held) / e_area
            if others and min(others) < (M - gap) / e_area:
                recompute = 0.0
                how = "memory never fills (another limit binds first): no recompute"
            elif profile.prefix_caching:
                # The preempted request's freed pages wait at the back of the free queue and
                # only the decoders' growth (one token per decode, all taken from the queue's
                # front once memory is full) evicts them: about E[o − 1] tokens per completed
                # request are recomputed, the rest of each preempted prefix is hit.
                recompute = law.mean(law.output.astype(np.float64) - 1.0)
                how = "prefix-cached recompute ≈ E[o − 1]"
            else:
                recompute = held / per_it
                how = "recompute from scratch ≈ half a first chunk per iteration"
            if recompute and profile.full_sequence_admission:
                # Admitting only whole prompts preempts less (simulated pd-1:1: 629 recomputed
                # tokens per request against E[o − 1] = 804); there is no a-priori term for it
                # yet, so the first-chunk figure stands as an upper bound.
                how += " (an upper bound: full-sequence admission preempts less)"
            waste_note = f", {how}" + (
                f" = {recompute:,.0f} tokens/request (a priori)" if recompute else ""
            )
        else:
            # A measured waste of w recomputed tokens per request: each is held about one
            # iteration before its request is preempted.
            recompute = waste or 0.0
            per_it = (M - gap) / (e_area + recompute)
            waste_note = (
                f", measured preemption waste {recompute:,.0f} tokens/request" if recompute else ""
            )
        churn = per_it * recompute
        page_note = f", pages of {profile.block_size}" if profile.block_size > 1 else ""
        bounds.append(
            _mixed_point(
                "memory",
                per_it,
                per_it * e_tokens + churn,
                per_it * e_attended + churn,
                model,
                f"E[g] = {e_area:,.0f} token·iterations{page_note}, head-of-line gap "
                f"{gap:,.0f} tokens{waste_note}",
                _Work(law, lives, profile.chunk_size, recompute, context),
            )
        )
    if profile.token_budget < UNLIMITED:
        per_it = profile.token_budget / e_tokens
        bounds.append(
            _mixed_point(
                "token budget",
                per_it,
                float(profile.token_budget),
                per_it * e_attended,
                model,
                f"{profile.token_budget} tokens per iteration / E[s+o−1] = {e_tokens:,.1f}",
                own,
                full_batches=True,
            )
        )
    if profile.max_running < UNLIMITED:
        e_iters = law.mean(lives.iterations)
        per_it = profile.max_running / e_iters
        bounds.append(
            _mixed_point(
                "running cap",
                per_it,
                per_it * e_tokens,
                per_it * e_attended,
                model,
                f"{profile.max_running} running / E[life] = {e_iters:,.1f} iterations",
                own,
            )
        )
    return bounds


def _expected_max(values: np.ndarray, law: LengthLaw, k: float) -> float:
    """E[max of k i.i.d. draws] of `values` under the law, with CDF F^k (k need not be whole)."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], law.weight[order]
    cdf = np.minimum(np.cumsum(w), 1.0)
    prev = np.concatenate(([0.0], cdf[:-1]))
    return float(np.sum(v * (cdf**k - prev**k)))


# Requests admitted in the admission-cascade model: the mean group size is then stable to about
# 0.5% seed to seed, in tens of milliseconds whatever the law.
CASCADE_REQUESTS = 100_000


def admission_group(law: LengthLaw, r: float, d: float, *, seed: int = 0) -> float:
    """Mean requests per prefill batch of SGLang at saturation, when memory binds.

    SGLang admits a request when its prompt plus its whole remaining output fits in the free
    memory less r times the running requests' remaining output, and charges it at r from the next
    iteration on. Call the free memory less that reserve the slack X. A decode batch finishes
    Poisson(1/d) requests, each freeing s + o, while its decoders grow by one token each against
    r of a token of reserve: X gains Σ(s + o) − (1 − r)·E[o − 1]/d. A prefill batch then admits
    requests in order while their charge s + o fits in X; from the next iteration they are charged
    s + r·o, so (1 − r)·o of each returns to X and, when that lets the next request in, another
    prefill batch follows at once. This one-dimensional slack process (not a simulation of the
    engine: no batches, pages or times) gives the mean group; the earlier closed form, the
    requests one decode batch frees admitted as one group, overestimated it twofold on short
    outputs (5.6 against 2.5 simulated on compare's embedded default)."""
    rng = np.random.default_rng(seed)
    p = law.weight / law.weight.sum()
    n = CASCADE_REQUESTS
    queue = rng.choice(law.prompt.size, size=n + 1, p=p)
    # charges and returns of the queue in order, as running sums: a group is one bisection
    charged = np.concatenate(([0.0], np.cumsum((law.prompt + law.output)[queue], dtype=np.float64)))
    returned = np.concatenate(([0.0], np.cumsum((1.0 - r) * law.output[queue], dtype=np.float64)))
    batches = int(n * d * 1.5) + 16
    finishers = rng.poisson(1.0 / d, batches)
    freed = (law.prompt + law.output)[rng.choice(law.prompt.size, size=int(finishers.sum()), p=p)]
    # what each decode batch's finishers free: differences of the running sum at batch ends
    total = np.concatenate(([0], np.cumsum(freed)))
    ends = np.cumsum(finishers)
    gains = total[ends] - total[ends - finishers] - (1.0 - r) * law.mean(law.output - 1.0) / d
    # plain lists and bisect: one scalar lookup per prefill batch is the whole cost
    c, b = charged.tolist(), returned.tolist()
    x, head, groups = 0.0, 0, 0
    for gain in gains.tolist():
        x += gain
        while head < n:
            end = bisect.bisect_right(c, c[head] + x) - 1
            if end <= head:
                break
            x -= c[end] - c[head] - (b[end] - b[head])
            head, groups = end, groups + 1
        if head >= n:
            break
    return head / groups if groups else 1.0


def _separate_bounds(
    profile: EngineProfile,
    law: LengthLaw,
    lives: RequestLives,
    model: IterationTimeModel,
    waste: float | None,
    batch_times: tuple[float, float] | None = None,
) -> list[Bound]:
    """SGLang's default: a batch is either prefill chunks (preferred whenever one can be formed)
    or one decode step of every decoding request.

    Per completed request the engine runs d decode batches and p prefill batches, so
    μ = 1 / (d·b_decode + p·b_prefill). Decoders hold their KV through both kinds of batch, but
    only decode batches advance them, so Little's law over decode batches alone gives
    d = (E[decode area] + r·E[remaining-output area]) / (M − gap): memory holds the decoders plus
    SGLang's reserve of new_token_ratio r (at its floor at saturation) times their remaining
    output, less the head request's unfilled need s + o. The running cap B forces d ≥ E[o−1]/B.
    Admission waits for that whole need, so requests are admitted in groups as decode batches
    free memory: k per group from the slack cascade of `admission_group` (with the running cap
    binding, max(2, 1 + 1/d): the requests one decode batch finishes). A group prefills side by
    side, one chunk of each per batch, so it takes E[max of k chunk counts] batches: p is that
    over k, and at least E[s]/K when the prefill budget K (chunked_prefill_size) binds. A
    measured retraction waste of w recomputed tokens per request adds w prefill tokens (and w
    token·iterations of memory) per request."""
    M = profile.usable_kv_tokens
    r = profile.sglang_min_ratio
    e_decodes = law.mean(law.output.astype(np.float64) - 1.0)
    wanted = law.prompt + np.minimum(law.output, 4096)
    gap = head_of_line_gap(wanted, law)
    w = waste or 0.0
    e_dec_paged = law.mean(lives.decode_area_paged) + w
    e_dec_attended = law.mean(lives.attended - lives.prefill_area)
    e_prefill_area = law.mean(lives.prefill_area)
    e_pairs = law.mean(lives.prefill_pairs)
    e_s = law.mean(law.prompt.astype(np.float64)) + w
    d_mem = (e_dec_paged + r * law.mean(lives.remaining_area)) / (M - gap)
    d_cap = e_decodes / profile.max_running if profile.max_running < UNLIMITED else 0.0
    # With the running cap binding, slots (not memory) free up as a decode batch finishes its
    # requests, and those admitted together finish together on equal lengths: at least pairs.
    group = max(2.0, 1.0 + 1.0 / d_cap) if d_cap > d_mem else admission_group(law, r, d_mem)
    p_groups = _expected_max(lives.chunks, law, group) / group
    p_budget = e_s / profile.token_budget if profile.token_budget < UNLIMITED else 0.0

    def point(name: str, d: float, p: float, detail: str) -> Bound:
        if batch_times is not None:
            b_dec, b_pre = batch_times
        else:
            b_dec = model.mean_time(e_decodes / d, e_dec_attended / d) if d > 0 else 0.0
            b_pre = model.mean_time(e_s / p, e_prefill_area / p, e_pairs / p)
        time = d * b_dec + p * b_pre
        per_it = 1.0 / (d + p)
        # Report the iteration-averaged batch and KV, and the mean iteration time.
        batch = (e_decodes + e_s) * per_it
        kv = (e_dec_attended + e_prefill_area) * per_it
        return Bound(name, per_it, batch, kv, time * per_it, 1.0 / time, detail)

    d, p = max(d_mem, d_cap), max(p_groups, p_budget)
    split = (
        f"{d_mem:.2f} decode + {p:.2f} prefill batches per request (admitted {group:.1f} at a time)"
    )
    bounds = [
        point(
            "memory",
            d_mem,
            p,
            f"{split}; reserve ratio {r:g}, head-of-line gap {gap:,.0f} tokens",
        )
    ]
    if d_cap > 0:
        bounds.append(
            point(
                "running cap",
                d_cap,
                p,
                f"{profile.max_running} running: ≥ {d_cap:.2f} decode batches per request",
            )
        )
    if p_budget > 0:
        bounds.append(
            point(
                "token budget",
                d,
                p_budget,
                f"{profile.token_budget} prefill tokens per batch: ≥ {p_budget:.2f} prefill batches per request",
            )
        )
    return bounds


def engine_aware_mu(
    profile: EngineProfile,
    law: LengthLaw,
    *,
    iteration_model: IterationTimeModel | None = None,
    iteration_fit: IterationTimeFit | None = None,
    preemption_waste: float | None = None,
    batch_times: tuple[float, float] | None = None,
) -> EngineAwarePrediction:
    """The engine-aware stable service rate of one replica of `profile` on `law`.

    iteration_model: overrides the profile's (e.g. a calibrated fit); iteration_fit: the fit it
      came from, whose covariance goes into `mu_stderr`.
    preemption_waste: batch tokens recomputed per completed request because of preemption or
      retraction, measured on the engine (e.g. from a short overloaded run, or vLLM's token
      counters); None uses the rule's a-priori estimate.
    batch_times: (decode, prefill) batch times measured at saturation on an engine that runs
      them as separate batches (`kvbench.benchmark.separate_batches`), which then replace the
      iteration-time model's; ignored for mixed batches."""
    if iteration_fit is not None and iteration_model is None:
        iteration_model = iteration_fit.model()
    model = iteration_model or profile.iteration_time
    if profile.kv_tokens <= 0 or profile.chunk_size <= 0 or profile.block_size <= 0:
        raise KvbenchError("engine profile needs positive kv_tokens, chunk_size and block_size")
    M = profile.usable_kv_tokens
    largest = int(paged(law.prompt + law.output, profile.block_size).max())
    if largest > M:
        usable = ""
        if profile.policy == "vllm":
            usable = f" ({M} usable: vLLM's null block takes one page)"
        raise KvbenchError(
            f"a request of {largest} tokens does not fit in M = {profile.kv_tokens} KV tokens"
            f"{usable}: no rate is stable"
        )
    lives = request_lives(law, profile.chunk_size, profile.block_size)
    if profile.separate_prefill_decode:
        bounds = _separate_bounds(profile, law, lives, model, preemption_waste, batch_times)
    else:
        bounds = _mixed_bounds(profile, law, lives, model, preemption_waste)
    binding = min(bounds, key=lambda b: b.mu)
    rel_var = _relative_variance(law, lives, binding, iteration_fit)
    return EngineAwarePrediction(
        engine=profile.policy,
        mu=binding.mu,
        mu_stderr=binding.mu * math.sqrt(rel_var),
        binding=binding.name,
        bounds=tuple(bounds),
        iteration_model=model,
    )


def beside_paper(
    profile: EngineProfile,
    workload: Workload,
    *,
    rate: float | None = None,
    closed_form: bool = True,
    iteration_fit: IterationTimeFit | None = None,
    preemption_waste: float | None = None,
) -> tuple[EngineAwarePrediction, paper_model.TheoryResult]:
    """The engine-aware μ of one replica of `profile` and the paper's μ beside it, the paper's
    b̄ taken as the iteration time at the engine-aware operating point (with the profile's M and
    ŝ), so the two differ only by what the paper's model leaves out of the scheduler."""
    prediction = engine_aware_mu(
        profile,
        LengthLaw.from_workload(workload),
        iteration_fit=iteration_fit,
        preemption_waste=preemption_waste,
    )
    paper = paper_model.evaluate(
        workload,
        kv_tokens=profile.kv_tokens,
        chunk_size=profile.chunk_size,
        batch_time=prediction.iteration_time,
        rate=rate,
        closed_form=closed_form,
    )
    return prediction, paper


def _relative_variance(
    law: LengthLaw, lives: RequestLives, binding: Bound, fit: IterationTimeFit | None
) -> float:
    """(se(μ)/μ)² from the sampling error of a trace law's mean (of the quantity the binding
    bound divides by) and the fit's covariance at the operating point; independent, so summed."""
    divisor = {
        "memory": lives.area,
        "reservation": lives.area,
        "token budget": lives.tokens,
        "running cap": lives.iterations,
    }[binding.name]
    m = law.mean(divisor)
    rel = (law.stderr(divisor) / m) ** 2 if m > 0 else 0.0
    if fit is not None:
        se_b = fit.mean_time_stderr(binding.batch_tokens, binding.kv_tokens)
        rel += (se_b / binding.iteration_time) ** 2
    return rel
