"""The KV-cache queueing model of Nie, Si & Zhou (ICML 2026, arXiv 2605.04595), SPEC §1.

A request with prompt s and output o holds min(kŝ, s) KV tokens during its k-th prefill
iteration (chunks of ŝ) and s + j during its j-th decode iteration, then frees them all. Its
lifetime memory g(s, o), in token·iterations, is the area under that curve. One replica with
KV capacity M and iteration time b̄ serves at most μ = M / (b̄·E[g]) requests per second:

- λ > μ: the queue grows without bound under any policy (Thm 4.1), UNSTABLE;
- λ < μ(1 − δ), δ = max(s + o) / M: a work-conserving policy keeps it bounded (Thm 4.2), STABLE;
- in between the theory does not decide: UNDETERMINED, with the band [μ(1 − δ), μ].

The paper evaluates E[g] with a closed form that assumes ŝ divides s. With the paper's discrete
uniform laws it reproduces the published μ (3.263, 3.956, 2.902 req/s) to every digit. For
s = qŝ + r with 0 < r < ŝ the exact ⌈s/ŝ⌉ sum is larger by q(ŝ − r) + r(ŝ − r)/(2ŝ) < s + ŝ/8,
which moves μ in the fourth digit (3.262, 3.954, 2.901 req/s).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kvbench import validate
from kvbench.errors import KvbenchError
from kvbench.workload import SyntheticWorkload, Workload

# The paper's setting: Llama-3-8B on an A100 with vLLM v1 (SPEC §1). b̄ was measured per
# workload (median iteration time near saturation), so each shorthand has its own.
PAPER_WORKLOAD = "pd-1:1"
PAPER_KV_TOKENS = 131_000
PAPER_CHUNK_SIZE = 512
PAPER_BATCH_TIMES: dict[str, float] = {"pd-1:1": 0.0372, "pd-2:1": 0.0430, "pd-1:2": 0.0337}
PAPER_BATCH_TIME = PAPER_BATCH_TIMES[PAPER_WORKLOAD]


def lifetime_memory(s, o, chunk_size: int) -> np.ndarray:
    """Exact g(s, o) = Σ_{k=1..⌈s/ŝ⌉} min(kŝ, s) + Σ_{j=1..o} (s + j), int64, elementwise."""
    chunk = validate.positive_int(chunk_size, "chunk size")
    s = np.asarray(s, dtype=np.int64)
    o = np.asarray(o, dtype=np.int64)
    full, rest = np.divmod(s, chunk)
    # Full chunks contribute ŝ, 2ŝ, …, qŝ; a partial last chunk brings the footprint to s.
    prefill = chunk * full * (full + 1) // 2 + np.where(rest > 0, s, 0)
    decode = o * s + o * (o + 1) // 2
    return prefill + decode


def lifetime_memory_closed_form(s, o, chunk_size: int) -> np.ndarray:
    """The paper's g(s, o) = [(1 + s/ŝ)·s + 2·o·s + (1 + o)·o] / 2 (exact when ŝ divides s)."""
    chunk = validate.positive_int(chunk_size, "chunk size")
    s = np.asarray(s, dtype=np.float64)
    o = np.asarray(o, dtype=np.float64)
    return ((1.0 + s / chunk) * s + 2.0 * o * s + (1.0 + o) * o) / 2.0


@dataclass(frozen=True)
class Estimate:
    """A mean and its standard error (0 when computed exactly from a law)."""

    mean: float
    stderr: float


def expected_lifetime_memory(workload: Workload, chunk_size: int, *, closed_form: bool) -> Estimate:
    """E[g(s, o)]: exact over a synthetic law's support; for a trace, the sample mean over its
    rows with the standard error of that mean (the trace is one sample of the workload's law)."""
    g = lifetime_memory_closed_form if closed_form else lifetime_memory
    if isinstance(workload, SyntheticWorkload):
        law = workload.law
        s = law.prompt_support()
        o = law.output_support()
        # s and o are independent: E[g] = E_s[prefill(s)] + E[s]·E[o] + E[o(o+1)]/2, so the
        # sum over the support splits into one pass over s and one over o.
        prefill = g(s, np.zeros_like(s), chunk_size)
        mean = (
            float(np.mean(prefill))
            + float(np.mean(s)) * float(np.mean(o))
            + float(np.mean(o * (o + 1))) / 2.0
        )
        return Estimate(mean, 0.0)
    s, o = workload.rows()
    values = np.asarray(g(s, o, chunk_size), dtype=np.float64)
    stderr = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return Estimate(float(np.mean(values)), stderr)


def service_rate(kv_tokens: float, batch_time: float, expected_g: float) -> float:
    """μ = M / (b̄·E[g]) requests per second."""
    kv_tokens = validate.positive_number(kv_tokens, "KV capacity")
    batch_time = validate.positive_number(batch_time, "batch time")
    expected_g = validate.positive_number(expected_g, "E[g]")
    return kv_tokens / (batch_time * expected_g)


def delta(max_request_tokens: int, kv_tokens: float) -> float:
    """δ = max(s + o) / M, the largest request's share of KV memory."""
    kv_tokens = validate.positive_number(kv_tokens, "KV capacity")
    largest = validate.positive_number(max_request_tokens, "largest request")
    return largest / kv_tokens


class Stability(enum.Enum):
    STABLE = "STABLE"
    UNSTABLE = "UNSTABLE"
    UNDETERMINED = "UNDETERMINED"


@dataclass(frozen=True)
class Verdict:
    """What the theory says about arrival rate `rate`: the band [mu_lower, mu] is where it is
    silent (mu_lower = μ(1 − δ), 0 when δ ≥ 1: no request mix is then guaranteed to fit)."""

    stability: Stability
    rate: float
    mu_lower: float
    mu: float


def stability_verdict(rate: float, mu: float, delta: float) -> Verdict:
    rate = validate.positive_number(rate, "request rate")
    mu = validate.positive_number(mu, "service rate")
    if not delta >= 0:
        raise KvbenchError(f"δ must be non-negative, got {delta!r}")
    mu_lower = mu * max(0.0, 1.0 - delta)
    if rate > mu:
        stability = Stability.UNSTABLE
    elif rate < mu_lower:
        stability = Stability.STABLE
    else:
        stability = Stability.UNDETERMINED
    return Verdict(stability, rate, mu_lower, mu)


def mixture_rate(mus: Sequence[float], shares: Sequence[float]) -> float:
    """μ of a piecewise-stationary mix: (Σ q_ℓ / μ_ℓ)^-1 with request shares q_ℓ (normalised
    to sum to 1)."""
    if len(mus) != len(shares) or not mus:
        raise KvbenchError("a mixture needs one share per service rate, and at least one")
    mus = [validate.positive_number(mu, "service rate") for mu in mus]
    shares = [validate.positive_number(q, "mixture share") for q in shares]
    total = sum(shares)
    return 1.0 / sum(q / total / mu for q, mu in zip(shares, mus, strict=True))


def replicas_needed(rate: float, mu: float, target_utilization: float = 0.9) -> int:
    """G = ⌈λ / (ρ·μ)⌉: the replicas that keep each one at utilisation ρ or below."""
    rate = validate.positive_number(rate, "request rate")
    mu = validate.positive_number(mu, "service rate")
    rho = validate.positive_number(target_utilization, "target utilisation")
    if rho > 1:
        raise KvbenchError(f"target utilisation must be at most 1, got {rho}")
    # A hair of tolerance so λ = 2·ρ·μ, computed in floating point as 2.0000000000000004, is 2.
    return max(1, math.ceil(rate / (rho * mu) * (1 - 1e-12)))


@dataclass(frozen=True)
class TheoryResult:
    """The paper's model evaluated for one workload on one replica."""

    workload: str
    kv_tokens: int
    chunk_size: int
    batch_time: float
    closed_form: bool
    expected_g: Estimate
    mu: float
    mu_stderr: float
    #: μ with the other form of g (exact if closed_form, closed form otherwise)
    mu_other_form: float
    delta: float
    mu_lower: float
    verdict: Verdict | None

    @property
    def mu_exact(self) -> float:
        return self.mu_other_form if self.closed_form else self.mu

    @property
    def mu_closed_form(self) -> float:
        return self.mu if self.closed_form else self.mu_other_form

    def as_record(self) -> dict:
        """Flat, JSON-ready fields (the `--json` output of `kvbench theory`)."""
        record = {
            "model": "paper",
            "workload": self.workload,
            "kv_tokens": self.kv_tokens,
            "chunk_size": self.chunk_size,
            "batch_time": self.batch_time,
            "g": "closed-form" if self.closed_form else "exact",
            "expected_g": self.expected_g.mean,
            "expected_g_stderr": self.expected_g.stderr,
            "mu": self.mu,
            "mu_stderr": self.mu_stderr,
            "mu_closed_form": self.mu_closed_form,
            "mu_exact": self.mu_exact,
            "delta": self.delta,
            "mu_lower": self.mu_lower,
        }
        if self.verdict is not None:
            record["request_rate"] = self.verdict.rate
            record["verdict"] = self.verdict.stability.value
        return record


def evaluate(
    workload: Workload,
    *,
    kv_tokens: int = PAPER_KV_TOKENS,
    chunk_size: int = PAPER_CHUNK_SIZE,
    batch_time: float = PAPER_BATCH_TIME,
    rate: float | None = None,
    closed_form: bool = True,
) -> TheoryResult:
    """μ, δ, the undecided band and (for a rate) the verdict. μ's standard error comes from
    E[g]'s by the delta method: se(μ) = μ·se(E[g]) / E[g]."""
    kv_tokens = validate.positive_int(kv_tokens, "KV capacity")
    expected_g = expected_lifetime_memory(workload, chunk_size, closed_form=closed_form)
    other_g = expected_lifetime_memory(workload, chunk_size, closed_form=not closed_form)
    mu = service_rate(kv_tokens, batch_time, expected_g.mean)
    d = delta(workload.max_request_tokens, kv_tokens)
    return TheoryResult(
        workload=workload.name,
        kv_tokens=kv_tokens,
        chunk_size=chunk_size,
        batch_time=batch_time,
        closed_form=closed_form,
        expected_g=expected_g,
        mu=mu,
        mu_stderr=mu * expected_g.stderr / expected_g.mean,
        mu_other_form=service_rate(kv_tokens, batch_time, other_g.mean),
        delta=d,
        mu_lower=mu * max(0.0, 1.0 - d),
        verdict=None if rate is None else stability_verdict(rate, mu, d),
    )
