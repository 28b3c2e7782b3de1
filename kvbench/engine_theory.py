"""Engine-aware stability rate: the paper's memory bound made specific to one engine's scheduler.

The paper's μ = M / (b̄·E[g]) is one number per workload. An engine's own boundary also depends on
how it admits requests, how it rounds memory to pages, its per-iteration token budget, its cap on
running requests, and an iteration time that grows with the batch. This module takes an
`EngineProfile` and a length law p(s, o) and returns the minimum over:

- **memory** (admission by current need: `ideal`, `vllm`, `sglang`): requests hold page-rounded
  KV, so λ_it · E[g_page(s, o)] ≤ M − gap, where λ_it is completions per iteration and the gap is
  the memory the head-of-line request cannot use (it needs a whole first chunk);
- **reservation** (`trtllm`, GUARANTEED_NO_EVICT): a request reserves R = page(s + max_tokens)
  at admission and holds it for its whole life of L = ⌈s/ŝ⌉ + o iterations, so
  λ_it · E[R·L] ≤ M − gap, the gap being the reservation the head request cannot fit;
- **token budget** (Li, Dai and Peng's condition): a request needs s + o batch tokens over its
  life and an iteration carries at most K, so λ_it · E[s + o] ≤ K;
- **running cap**: a request occupies one of B running slots for L iterations: λ_it · E[L] ≤ B.

Every bound is a rate in completions per *iteration*. Converting to completions per second needs
the iteration time at that operating point, b = c0 + c1·T̄ + c2·K̄V̄, where the iteration-averaged
batch tokens T̄ = λ_it·E[s+o] and KV held K̄V̄ = λ_it·E[g_page] follow from λ_it by Little's law
over iterations. Because the model is linear, the fixed point b = b(μ·b) is solved exactly, and
μ = λ_it / b. λ_it/b(λ_it) increases with λ_it, so the smallest λ_it is also the smallest μ: the
binding constraint is the same in either unit. No saturation run is needed to know b̄.

SGLang runs prefill and decode as separate batches by default (`separate_prefill_decode`): a
decoding request then also holds its KV through other requests' prefill batches, and its life is
⌈s/ŝ⌉ prefill batches plus o decode batches, interleaved with everyone else's prefill batches.
The bounds below account for that (see `_lives`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kvbench.calibration import IterationTimeFit
from kvbench.errors import KvbenchError
from kvbench.profile import UNLIMITED, EngineProfile, IterationTimeModel


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

    @classmethod
    def sample(cls, prompt, output, name: str = "") -> LengthLaw:
        s = np.asarray(prompt, dtype=np.int64)
        o = np.asarray(output, dtype=np.int64)
        if s.shape != o.shape or s.ndim != 1 or s.size == 0:
            raise KvbenchError(f"{name or 'workload'}: needs equally long, non-empty length columns")
        return cls(s, o, np.full(s.size, 1.0 / s.size), exact=False, name=name)

    @classmethod
    def uniform(cls, s_lo: int, s_hi: int, o_lo: int, o_hi: int, name: str = "") -> LengthLaw:
        """s and o independent and discrete-uniform on the inclusive ranges: the whole grid."""
        if not (0 < s_lo <= s_hi and 0 < o_lo <= o_hi):
            raise KvbenchError(f"{name or 'uniform law'}: empty or non-positive length range")
        s, o = np.meshgrid(
            np.arange(s_lo, s_hi + 1, dtype=np.int64), np.arange(o_lo, o_hi + 1, dtype=np.int64)
        )
        s, o = s.ravel(), o.ravel()
        return cls(s, o, np.full(s.size, 1.0 / s.size), exact=True, name=name)

    @classmethod
    def fixed(cls, s: int, o: int, name: str = "") -> LengthLaw:
        return cls.uniform(s, s, o, o, name=name)

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
    notes: tuple[str, ...] = field(default=())

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
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Lives:
    """Per-request quantities over the law's support, in the engine's iteration structure.

    tokens: batch tokens the request consumes (s prefill + o decode);
    iterations: iterations the request is running (holding KV and a running slot);
    kv_area: Σ over those iterations of its page-rounded KV held (token·iterations);
    own_kv_area: the same, over the iterations that process it (what its own batches attend to)."""

    tokens: np.ndarray
    iterations: np.ndarray
    kv_area: np.ndarray
    own_kv_area: np.ndarray


def _lives(profile: EngineProfile, law: LengthLaw) -> _Lives:
    s, o = law.prompt, law.output
    chunk = profile.chunk_size
    n_chunks = -(-s // chunk)
    area = paged_lifetime_memory(s, o, chunk, profile.block_size).astype(np.float64)
    return _Lives(
        tokens=(s + o).astype(np.float64),
        iterations=(n_chunks + o).astype(np.float64),
        kv_area=area,
        own_kv_area=area,
    )


def _operating_point(
    name: str, per_iteration: float, tokens: float, kv_area: float, model: IterationTimeModel, detail: str
) -> Bound:
    batch = per_iteration * tokens
    kv = per_iteration * kv_area
    b = model.mean_time(batch, kv)
    if b <= 0:
        raise KvbenchError(f"iteration-time model gives {b:.3g} s at the {name} operating point")
    return Bound(name, per_iteration, batch, kv, b, per_iteration / b, detail)


def engine_aware_mu(
    profile: EngineProfile,
    law: LengthLaw,
    *,
    iteration_model: IterationTimeModel | None = None,
    iteration_fit: IterationTimeFit | None = None,
    waste_per_request: float = 0.0,
) -> EngineAwarePrediction:
    """The engine-aware stable service rate of one replica of `profile` on `law`.

    iteration_model: overrides the profile's (e.g. a calibrated fit); iteration_fit: the fit it
      came from, whose covariance goes into `mu_stderr`.
    waste_per_request: token·iterations of KV area lost per request to preemption or retraction
      (recomputed work), measured from the engine's preemption counters; 0 when unknown."""
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
    lives = _lives(profile, law)
    e_tokens = law.mean(lives.tokens)
    e_iters = law.mean(lives.iterations)
    e_area = law.mean(lives.kv_area) + waste_per_request
    notes: list[str] = []
    bounds: list[Bound] = []

    if profile.policy == "trtllm":
        max_tokens = law.output if profile.max_tokens_cap is None else np.maximum(
            law.output, profile.max_tokens_cap
        )
        reserve = paged(law.prompt + max_tokens, profile.block_size)
        reserved_area = reserve.astype(np.float64) * lives.iterations
        gap = head_of_line_gap(reserve, law)
        per_it = (M - gap) / law.mean(reserved_area)
        bounds.append(
            _operating_point(
                "reservation", per_it, e_tokens, e_area, model,
                f"E[page(s+max_tokens)·life] = {law.mean(reserved_area):,.0f} token·iterations, "
                f"head-of-line gap {gap:,.0f} tokens",
            )
        )
    else:
        first_need = paged(np.minimum(law.prompt, profile.chunk_size), profile.block_size)
        gap = head_of_line_gap(first_need, law)
        per_it = (M - gap) / e_area
        page_note = f", pages of {profile.block_size}" if profile.block_size > 1 else ""
        bounds.append(
            _operating_point(
                "memory", per_it, e_tokens, e_area, model,
                f"E[g] = {e_area:,.0f} token·iterations{page_note}, head-of-line gap {gap:,.0f} tokens",
            )
        )
    if profile.token_budget < UNLIMITED:
        per_it = profile.token_budget / e_tokens
        bounds.append(
            _operating_point(
                "token budget", per_it, e_tokens, e_area, model,
                f"{profile.token_budget} tokens per iteration / E[s+o] = {e_tokens:,.1f}",
            )
        )
    if profile.max_running < UNLIMITED:
        per_it = profile.max_running / e_iters
        bounds.append(
            _operating_point(
                "running cap", per_it, e_tokens, e_area, model,
                f"{profile.max_running} running / E[life] = {e_iters:,.1f} iterations",
            )
        )
    binding = min(bounds, key=lambda b: b.mu)
    rel_var = _relative_variance(law, lives, binding, profile, model, iteration_fit)
    if waste_per_request == 0.0 and profile.policy in ("vllm", "sglang"):
        notes.append("no preemption waste supplied: memory bound assumes no recomputed work")
    return EngineAwarePrediction(
        engine=profile.policy,
        mu=binding.mu,
        mu_stderr=binding.mu * math.sqrt(rel_var),
        binding=binding.name,
        bounds=tuple(bounds),
        iteration_model=model,
        notes=tuple(notes),
    )


def _relative_variance(
    law: LengthLaw,
    lives: _Lives,
    binding: Bound,
    profile: EngineProfile,
    model: IterationTimeModel,
    fit: IterationTimeFit | None,
) -> float:
    """(se(μ)/μ)² from the sampling error of a trace law's mean (of the quantity the binding
    bound divides by) and the fit's covariance at the operating point; independent, so summed."""
    divisor = {
        "memory": lives.kv_area,
        "token budget": lives.tokens,
        "running cap": lives.iterations,
    }.get(binding.name)
    rel = 0.0
    if divisor is not None:
        m = law.mean(divisor)
        rel += (law.stderr(divisor) / m) ** 2 if m > 0 else 0.0
    elif binding.name == "reservation":
        # The reserved area's sampling error; the same order as the memory one.
        m = law.mean(lives.kv_area)
        rel += (law.stderr(lives.kv_area) / m) ** 2 if m > 0 else 0.0
    if fit is not None:
        se_b = fit.mean_time_stderr(binding.batch_tokens, binding.kv_tokens)
        rel += (se_b / binding.iteration_time) ** 2
    return rel
