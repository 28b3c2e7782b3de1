"""Engine profiles: everything the simulator and the theory need to know about one engine replica.

A profile is a scheduler rule with its settings (from the engine's defaults, see
../shared/docs/engines.md §5) combined with a hardware/model calibration (KV capacity M and an
iteration-time model). The Rust simulator reads the same fields from this dataclass (mirrored by
`rust/sim/profile.rs`), so a profile is data, never behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from kvbench.errors import KvbenchError

Policy = Literal["ideal", "vllm", "sglang", "trtllm"]
POLICIES: tuple[str, ...] = ("ideal", "vllm", "sglang", "trtllm")

# "No limit" for the ideal rule's budget and running cap; large enough never to bind, small
# enough to fit the Rust side's u64/i64 without overflow in sums.
UNLIMITED = 1 << 40


@dataclass(frozen=True)
class IterationTimeModel:
    """Duration of one engine iteration of T batch tokens attending K KV tokens:

        c0 + c1·min(T, knee) + c1_above·max(T − knee, 0) + c2·K + c3·Σ chunk·(cached + chunk)

    times a lognormal factor exp(N(−σ²/2, σ²)) whose mean is 1 when noise_sigma > 0. Without a
    knee, c1 applies to every token. Below the knee a GEMM's time is mostly reading the weights;
    above it the GEMMs are compute-bound. The c3 term is prefill attention: each prefill chunk
    attends to its cached tokens and itself."""

    c0: float
    c1: float = 0.0
    c2: float = 0.0
    noise_sigma: float = 0.0
    knee: int | None = None
    c1_above: float = 0.0
    c3: float = 0.0

    @classmethod
    def constant(cls, batch_time: float) -> IterationTimeModel:
        return cls(c0=batch_time)

    @classmethod
    def unknown(cls) -> IterationTimeModel:
        """A real engine's model before calibration (no server exposes one): NaN, so nothing
        computed from it by mistake looks like a figure."""
        return cls(c0=float("nan"))

    @property
    def known(self) -> bool:
        return math.isfinite(self.c0)

    def formula(self) -> str:
        """The model as one line (3 significant digits), e.g. for a report's profile row."""
        if self.c1 == 0 and self.c2 == 0 and self.c1_above == 0 and self.c3 == 0:
            return f"b = {self.c0:.3g} s"
        tokens = f"{self.c1:.3g}·tokens"
        if self.knee is not None:
            tokens = f"{self.c1:.3g}·min(tokens, {self.knee}) + {self.c1_above:.3g}·rest"
        prefill = f" + {self.c3:.3g}·prefill pairs" if self.c3 else ""
        return f"b = {self.c0:.3g} + {tokens} + {self.c2:.3g}·KV{prefill} s"

    def mean_time(self, batch_tokens: float, kv_tokens: float, prefill_pairs: float = 0.0) -> float:
        """The mean duration of one iteration (prefill_pairs: Σ chunk·(cached + chunk))."""
        below = batch_tokens if self.knee is None else min(batch_tokens, self.knee)
        return (
            self.c0
            + self.c1 * below
            + self.c1_above * (batch_tokens - below)
            + self.c2 * kv_tokens
            + self.c3 * prefill_pairs
        )


@dataclass(frozen=True)
class EngineProfile:
    """One replica's scheduler settings and hardware calibration.

    chunk_size: the most prefill tokens one request gets in one iteration (ŝ).
    token_budget: tokens per iteration, prefill chunks plus one per decoding request (vLLM's
      max_num_batched_tokens, TRT-LLM's max_num_tokens); for SGLang the prefill batch budget
      (chunked_prefill_size), since its decode batches run separately by default.
    max_tokens_cap: TensorRT-LLM reserves prompt + max_tokens at admission; None means each
      request's own output length is its max_tokens.
    sglang_*: SGLang's new_token_ratio schedule (starts at init, decays linearly to min over
      decay_steps decode steps, is raised again on a retraction).
    prefix_caching: vLLM's automatic prefix caching (on by default in vLLM v1): a preempted
      request's freed full pages stay hashed in the free queue until reallocated (unhashed
      pages are reused first, then the least recently freed), and its re-admission reuses the
      surviving full pages instead of recomputing them. Only the vllm
      rule reads it; False models an engine launched with --no-enable-prefix-caching.
    full_sequence_admission: vLLM's --scheduler-reserve-full-isl, its default since PR #37307
      (2026-03): a waiting or preempted request is admitted only when pages for its whole known
      sequence (prompt, plus what it generated before a preemption) are free; False admits it
      when its first chunk fits, as vLLM did before. Only the vllm rule reads it;
      benchmarks/real_vllm_scheduler.py measures both against the real scheduler.
    source: where the values came from, shown in reports ("illustrative" for the built-in
      calibrations).
    """

    policy: Policy
    kv_tokens: int
    block_size: int
    chunk_size: int
    token_budget: int
    max_running: int
    iteration_time: IterationTimeModel
    max_tokens_cap: int | None = None
    separate_prefill_decode: bool = False
    sglang_init_ratio: float = 0.7
    sglang_min_ratio: float = 0.1
    sglang_decay_steps: int = 600
    prefix_caching: bool = True
    full_sequence_admission: bool = True
    name: str = ""
    source: str = ""

    def replace(self, **changes) -> EngineProfile:
        return dataclasses.replace(self, **changes)

    @property
    def usable_kv_tokens(self) -> int:
        """The KV tokens requests can hold: vLLM's block pool keeps its first page as the null
        block, which the KV cache size it reports (kv_tokens) counts; the simulator's vllm rule
        leaves it out the same way (`Profile::total_pages`)."""
        pages = self.kv_tokens // self.block_size - (1 if self.policy == "vllm" else 0)
        return pages * self.block_size


@dataclass(frozen=True)
class HardwareCalibration:
    """KV capacity and iteration-time model of one model on one GPU."""

    name: str
    kv_tokens: int
    chunk_size: int
    iteration_time: IterationTimeModel
    description: str


# Every preset is named after the source of its iteration-time model. M and ŝ are the paper's
# setting (Llama-3-8B on one A100, vLLM v1, M = 131,000, ŝ = 512) unless said otherwise.

# Fitted to Microsoft Vidur's measured kernel timings of Llama-3-8B on an A100 (MIT-licensed
# data; the derived tables and the fit: benchmarks/results/vidur-a100-llama3-8b/,
# benchmarks/vidur_a100_fit.py, checked by tests/test_presets.py). Linear layers, attention and
# the decode KV write only: no LM head, sampler or host (CPU) time, which the data do not cover.
VIDUR_A100 = HardwareCalibration(
    name="vidur-a100-llama3-8b",
    kv_tokens=131_000,
    chunk_size=512,
    iteration_time=IterationTimeModel(
        c0=0.00987108,
        c1=4.29319e-05,
        knee=192,
        c1_above=6.75336e-05,
        c2=8.21629e-08,
        c3=4.23026e-09,
    ),
    description="Vidur's measured A100 kernel timings of Llama-3-8B (linear layers with a knee "
    "at 192 tokens, decode and prefill attention); M and ŝ from the paper",
)

# The earlier illustrative model: c0 was tuned so that the *median* iteration of a saturated
# pd-1:1 run of the vllm rule (without prefix caching) equals the paper's b̄ = 0.0372 s; c1 and
# c2 are round figures. It does not reproduce the paper's measured throughput (docs/accuracy.md).
PAPER_A100 = HardwareCalibration(
    name="paper-a100-llama3-8b",
    kv_tokens=131_000,
    chunk_size=512,
    iteration_time=IterationTimeModel(c0=0.0214, c1=5.0e-5, c2=8.2e-8),
    description="illustrative: M and ŝ from the paper (Llama-3-8B, A100); iteration time "
    "c0 + c1·batch tokens + c2·KV tokens tuned to the paper's median b̄ = 0.0372 s on pd-1:1",
)

# Measured here on an H200 with transformers' eager forward of a random-weight Llama-3-8B
# (benchmarks/gpu_iteration_time.py; benchmarks/results/h200-llama3-8b-transformers/
# fit-eager.json): transformers' kernels, not an engine's. M and ŝ are the paper's, for
# comparison; an H200 holds far more KV, so pass --kv-tokens for a real deployment.
H200_TRANSFORMERS = HardwareCalibration(
    name="h200-llama3-8b-transformers",
    kv_tokens=131_000,
    chunk_size=512,
    iteration_time=IterationTimeModel(c0=0.0101638, c1=3.74188e-05, c2=4.03824e-07),
    description="fitted to transformers' eager Llama-3-8B forward timed on an H200 "
    "(benchmarks/results/h200-llama3-8b-transformers); M and ŝ from the paper",
)

DEFAULT_HARDWARE = VIDUR_A100
HARDWARE: dict[str, HardwareCalibration] = {
    hw.name: hw for hw in (VIDUR_A100, PAPER_A100, H200_TRANSFORMERS)
}


def _scheduler_defaults(policy: str, hw: HardwareCalibration) -> dict:
    """Each engine's default scheduler settings (../shared/docs/engines.md §1.1, §2.1, §3.1, §5)
    on the calibration's GPU class (A100: vLLM's smaller defaults apply)."""
    if policy == "ideal":
        return dict(block_size=1, token_budget=UNLIMITED, max_running=UNLIMITED)
    if policy == "vllm":
        # vLLM's API-server defaults on an A100 (arg_utils.py keeps A100s off the 8,192-token,
        # 1,024-request defaults of larger GPUs); the calibration's ŝ caps each request's chunk
        # as --long-prefill-token-threshold does (docs/accuracy.md: "What ŝ = 512 was").
        return dict(block_size=16, token_budget=2048, max_running=256)
    if policy == "sglang":
        # max_running_requests is derived from M: clamp(M/context_len·512, 2048, 4096), ≤ M/2.
        # chunked_prefill_size is both a request's chunk and a prefill batch's token budget (the
        # PrefillAdder stops when its rem_chunk_tokens run out), as discovery reads it from a
        # running engine.
        return dict(
            block_size=1,
            token_budget=hw.chunk_size,
            max_running=min(4096, hw.kv_tokens // 2),
            separate_prefill_decode=True,
        )
    if policy == "trtllm":
        # Chunked prefill is off by default: a prompt is prefilled whole, up to max_num_tokens.
        return dict(block_size=32, token_budget=8192, max_running=2048, chunk_size=8192)
    raise KvbenchError(f"unknown engine rule {policy!r}; choose one of {', '.join(POLICIES)}")


def build_profile(policy: str, hardware: str = DEFAULT_HARDWARE.name, **overrides) -> EngineProfile:
    """The profile of `policy`'s default scheduler on a hardware calibration, with overrides
    (any EngineProfile field) applied last."""
    try:
        hw = HARDWARE[hardware]
    except KeyError:
        raise KvbenchError(
            f"unknown profile {hardware!r}; choose one of {', '.join(HARDWARE)}"
        ) from None
    fields: dict[str, Any] = dict(
        policy=policy,
        kv_tokens=hw.kv_tokens,
        chunk_size=hw.chunk_size,
        iteration_time=hw.iteration_time,
        name=f"{policy}@{hw.name}",
        source=hw.description,
    )
    fields.update(_scheduler_defaults(policy, hw))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return EngineProfile(**fields)
