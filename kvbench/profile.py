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
    """Duration of one engine iteration: c0 + c1·(tokens in the batch) + c2·(KV tokens held by
    the batch), times a lognormal factor exp(N(−σ²/2, σ²)) whose mean is 1 when noise_sigma > 0."""

    c0: float
    c1: float = 0.0
    c2: float = 0.0
    noise_sigma: float = 0.0

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

    def mean_time(self, batch_tokens: float, kv_tokens: float) -> float:
        return self.c0 + self.c1 * batch_tokens + self.c2 * kv_tokens


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
    name: str = ""
    source: str = ""

    def replace(self, **changes) -> EngineProfile:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class HardwareCalibration:
    """KV capacity and iteration-time model of one model on one GPU."""

    name: str
    kv_tokens: int
    chunk_size: int
    iteration_time: IterationTimeModel
    description: str


# The paper's setting (Llama-3-8B on an A100, vLLM v1, M = 131,000, ŝ = 512). The iteration-time
# coefficients are illustrative, not a fit to GPU data: c0 (weights read plus per-step overhead),
# c1 = 50 µs per batch token (about 20k prefill tokens/s) and c2 (attention reading ~131 kB of KV
# per token at ~1.5 TB/s) are set so that a saturated `pd-1:1` run of the vllm rule has a median
# iteration of 0.0372 s, the paper's b̄ (benchmarks/simulator.py prints the check).
PAPER_A100 = HardwareCalibration(
    name="paper-a100-llama3-8b",
    kv_tokens=131_000,
    chunk_size=512,
    iteration_time=IterationTimeModel(c0=0.0214, c1=5.0e-5, c2=8.2e-8),
    description="illustrative: M and ŝ from the paper (Llama-3-8B, A100); iteration time "
    "c0 + c1·batch tokens + c2·KV tokens tuned to the paper's median b̄ = 0.0372 s on pd-1:1",
)

HARDWARE: dict[str, HardwareCalibration] = {PAPER_A100.name: PAPER_A100}


def _scheduler_defaults(policy: str, hw: HardwareCalibration) -> dict:
    """Each engine's default scheduler settings (../shared/docs/engines.md §1.1, §2.1, §3.1, §5)
    on the calibration's GPU class (A100: vLLM's smaller defaults apply)."""
    if policy == "ideal":
        return dict(block_size=1, token_budget=UNLIMITED, max_running=UNLIMITED)
    if policy == "vllm":
        return dict(block_size=16, token_budget=2048, max_running=256)
    if policy == "sglang":
        # max_running_requests is derived from M: clamp(M/context_len·512, 2048, 4096), ≤ M/2.
        return dict(
            block_size=1,
            token_budget=max(hw.chunk_size, 2048),
            max_running=min(4096, hw.kv_tokens // 2),
            separate_prefill_decode=True,
        )
    if policy == "trtllm":
        # Chunked prefill is off by default: a prompt is prefilled whole, up to max_num_tokens.
        return dict(block_size=32, token_budget=8192, max_running=2048, chunk_size=8192)
    raise KvbenchError(f"unknown engine rule {policy!r}; choose one of {', '.join(POLICIES)}")


def build_profile(policy: str, hardware: str = PAPER_A100.name, **overrides) -> EngineProfile:
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
