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
needs the iteration time at that operating point, b = c0 + c1·T̄ + c2·K̄V̄, where the
iteration-averaged batch tokens T̄ and attended KV tokens K̄V̄ follow from λ_it by Little's law
over iterations. The model is linear, so the fixed point b = b(μ·b) has this closed form and
μ = λ_it / b; λ_it/b(λ_it) increases with λ_it, so the smallest λ_it is also the smallest μ and
the binding constraint is the same in either unit. No saturation run is needed to know b̄.

SGLang runs prefill and decode as separate batches by default (`separate_prefill_decode`), with
its own admission reserve; `_separate_bounds` explains how that changes the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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
    decode_area_paged: the page-rounded decode part;
    remaining_area: Σ over decode iterations of its remaining output (SGLang's reserve);
    chunks: ⌈s/ŝ⌉."""

    tokens: np.ndarray
    iterations: np.ndarray
    area: np.ndarray
    attended: np.ndarray
    prefill_area: np.ndarray
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
    for k in range(1, int(chunks.max(initial=0)) + 1):
        held = np.where(k <= chunks, np.minimum(k * chunk, s), 0)
        prefill += held
        prefill_paged += paged(held, page)
    decode_paged = _paged_prefix_sum(s + decodes, page) - _paged_prefix_sum(s, page)
    decode = decodes * s + decodes * (decodes + 1) // 2
    f = np.float64
    return RequestLives(
        tokens=(s + decodes).astype(f),
        iterations=(chunks + decodes).astype(f),
        area=(prefill_paged + decode_paged).astype(f),
        attended=(prefill + decode).astype(f),
        prefill_area=prefill.astype(f),
        decode_area_paged=decode_paged.astype(f),
        remaining_area=(decodes * o / 2).astype(f),  # Σ_{j=1..o−1} (o − j)
        chunks=chunks.astype(f),
    )


def _mixed_point(
    name: str, per_it: float, batch: float, kv: float, model: IterationTimeModel, detail: str
) -> Bound:
    b = model.mean_time(batch, kv)
    if b <= 0:
        raise KvbenchError(f"iteration-time model gives {b:.3g} s at the {name} operating point")
    return Bound(name, per_it, batch, kv, b, per_it / b, detail)


def _mixed_bounds(
    profile: EngineProfile,
    law: LengthLaw,
    lives: RequestLives,
    model: IterationTimeModel,
    waste: float | None,
) -> list[Bound]:
    """Engines whose every iteration carries prefill chunks and decodes together."""
    M = profile.kv_tokens
    e_tokens = law.mean(lives.tokens)
    e_attended = law.mean(lives.attended)
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
            )
        )
    else:
        first = paged(np.minimum(law.prompt, profile.chunk_size), profile.block_size)
        gap = head_of_line_gap(first, law)
        e_area = law.mean(lives.area)
        if waste is None and profile.policy == "vllm":
            # A priori: memory is full, the head request is admitted with one chunk whenever
            # pages free up and preempted (recompute) at the next step that runs short, so about
            # half a first chunk per iteration is computed and thrown away.
            churn = law.mean(first.astype(np.float64)) / 2.0
            per_it = (M - gap - churn) / e_area
            waste_note = f", preemption churn ≈ {churn:,.0f} tokens/iteration (a priori)"
        else:
            # A measured waste of w recomputed tokens per request: each is held about one
            # iteration before its request is preempted.
            w = waste or 0.0
            per_it = (M - gap) / (e_area + w)
            churn = per_it * w
            waste_note = f", measured preemption waste {w:,.0f} tokens/request" if w else ""
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


def _separate_bounds(
    profile: EngineProfile,
    law: LengthLaw,
    lives: RequestLives,
    model: IterationTimeModel,
    waste: float | None,
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
    free memory: k = max(2, 1/d) per group (at least pairs; more when one decode batch finishes
    several requests). A group prefills side by side, at most P = K/ŝ chunks per batch, so it
    takes max(E[max of k chunk counts], k·E[⌈s/ŝ⌉]/P) batches: p is that over k, and at least
    E[s]/K when the prefill budget K binds. A measured retraction waste of w recomputed tokens
    per request adds w prefill tokens (and w token·iterations of memory) per request."""
    M = profile.kv_tokens
    r = profile.sglang_min_ratio
    e_decodes = law.mean(law.output.astype(np.float64) - 1.0)
    wanted = law.prompt + np.minimum(law.output, 4096)
    gap = head_of_line_gap(wanted, law)
    w = waste or 0.0
    e_dec_paged = law.mean(lives.decode_area_paged) + w
    e_dec_attended = law.mean(lives.attended - lives.prefill_area)
    e_prefill_area = law.mean(lives.prefill_area)
    e_s = law.mean(law.prompt.astype(np.float64)) + w
    d_mem = (e_dec_paged + r * law.mean(lives.remaining_area)) / (M - gap)
    d_cap = e_decodes / profile.max_running if profile.max_running < UNLIMITED else 0.0
    group = max(2.0, 1.0 + 1.0 / max(d_mem, d_cap))
    parallel = max(1.0, profile.token_budget // profile.chunk_size)
    run = max(_expected_max(lives.chunks, law, group), group * law.mean(lives.chunks) / parallel)
    p_groups = run / group
    p_budget = e_s / profile.token_budget if profile.token_budget < UNLIMITED else 0.0

    def point(name: str, d: float, p: float, detail: str) -> Bound:
        b_dec = model.mean_time(e_decodes / d, e_dec_attended / d) if d > 0 else 0.0
        b_pre = model.mean_time(e_s / p, e_prefill_area / p)
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
) -> EngineAwarePrediction:
    """The engine-aware stable service rate of one replica of `profile` on `law`.

    iteration_model: overrides the profile's (e.g. a calibrated fit); iteration_fit: the fit it
      came from, whose covariance goes into `mu_stderr`.
    preemption_waste: batch tokens recomputed per completed request because of preemption or
      retraction, measured on the engine (e.g. from a short overloaded run, or vLLM's token
      counters); None uses the rule's a-priori estimate."""
    if iteration_fit is not None and iteration_model is None:
        iteration_model = iteration_fit.model()
    model = iteration_model or profile.iteration_time
    M = profile.kv_tokens
    if M <= 0 or profile.chunk_size <= 0 or profile.block_size <= 0:
        raise KvbenchError("engine profile needs positive kv_tokens, chunk_size and block_size")
    largest = int(paged(law.prompt + law.output, profile.block_size).max())
    if largest > M:
        raise KvbenchError(
            f"a request of {largest} tokens does not fit in M = {M} KV tokens: no rate is stable"
        )
    lives = request_lives(law, profile.chunk_size, profile.block_size)
    if profile.separate_prefill_decode:
        bounds = _separate_bounds(profile, law, lives, model, preemption_waste)
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
