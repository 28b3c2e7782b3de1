"""Tokens per second and dollars at the measured rates: what a replica fleet sustaining λ* (or
the SLO rate) serves per GPU, and what it costs at a given GPU price.

Every figure comes from one probe the search ran: the fastest judged STABLE (λ*'s lower end) or
the fastest that also met the SLO (the SLO rate's lower end). Requests per second is that probe's
rate λ, and tokens per second λ times the tokens per completed request measured in it: a stable
engine serves what it is offered, while counting completions in a finite window misses the
requests still in flight at its end (about 1/lives of them: 5% for a 20-life probe). Dollars
assume the GPUs are paid for by the hour whatever they serve: $/hour = price × GPUs per replica ×
replicas, and a million requests (output tokens) cost $/hour ÷ (3600 × the rate) × 10⁶.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvbench import validate
from kvbench.benchmark.stability import carried_rate

# the flags engines take for tensor parallelism: vLLM (--tensor-parallel-size, -tp), SGLang
# (--tp-size, --tensor-parallel-size), TensorRT-LLM's trtllm-serve (--tp_size)
TP_FLAGS = ("--tensor-parallel-size", "-tp", "--tp", "--tp-size", "--tp_size")


@dataclass(frozen=True)
class Pricing:
    gpu_price: float | None = None  # USD per GPU-hour, as given
    gpus_per_replica: int | None = None  # None: the launch's tensor parallelism, else 1

    def check(self) -> None:
        if self.gpu_price is not None:
            validate.positive_number(self.gpu_price, "--gpu-price")
        if self.gpus_per_replica is not None:
            validate.positive_int(self.gpus_per_replica, "--gpus-per-replica")

    def gpus(self, launch_args: list[str] | tuple[str, ...] = ()) -> tuple[int, str]:
        """GPUs per replica and where that number came from."""
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica, "--gpus-per-replica"
        tp = tensor_parallel(launch_args)
        if tp is not None:
            return tp, "the launch's tensor parallelism"
        return 1, "default"


def tensor_parallel(args: list[str] | tuple[str, ...]) -> int | None:
    """The tensor-parallel size an engine's launch arguments set (the last one wins, as on the
    engines' own command lines), or None."""
    found = None
    for i, arg in enumerate(args):
        flag, sep, value = arg.partition("=")
        if flag not in TP_FLAGS:
            continue
        if not sep:
            value = args[i + 1] if i + 1 < len(args) else ""
        if value.isdigit() and int(value) > 0:
            found = int(value)
    return found


def at_rate(
    rate: float,
    throughput: dict[str, Any] | None,
    *,
    gpus: int,
    gpu_price: float | None,
) -> dict[str, Any]:
    """Tokens per second (total and per GPU) and dollars at `rate` requests/s over `gpus` GPUs,
    with `throughput` the probe's measured figures (runner summary's `throughput`): its tokens
    per completed request."""
    t = throughput or {}
    o, s = t.get("mean_output_tokens"), t.get("mean_prompt_tokens")
    out = None if o is None else rate * o
    total = None if o is None or s is None else rate * (o + s)
    per_hour = None if gpu_price is None else gpu_price * gpus
    return {
        "rate": rate,
        "output_tokens_per_s": out,
        "total_tokens_per_s": total,
        "output_tokens_per_s_per_gpu": None if out is None else out / gpus,
        "total_tokens_per_s_per_gpu": None if total is None else total / gpus,
        "usd_per_hour": per_hour,
        "usd_per_million_requests": None
        if per_hour is None or rate <= 0
        else per_hour / (3600 * rate) * 1e6,
        "usd_per_million_output_tokens": None
        if per_hour is None or not out
        else per_hour / (3600 * out) * 1e6,
    }


def economics(
    probes: list[dict[str, Any]],
    *,
    lambda_lower: float | None,
    slo_lower: float | None,
    replicas: int,
    pricing: Pricing,
    launch_args: list[str] | tuple[str, ...] = (),
    lambda_throughput: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Tokens and cost at λ*'s lower end and at the SLO rate's, from the probes run at those
    rates ({rate, verdict, throughput}), or for a bounded-backlog bracket (no probe at its lower
    end) from `lambda_throughput`, the probe's tokens per request; None when neither rate was
    measured."""
    per_replica, source = pricing.gpus(launch_args)
    gpus = per_replica * replicas

    def probe_at(rate: float | None) -> dict[str, Any] | None:
        if rate is None:
            return None
        # a bracket's lower end is the rate that arrived (compare directories written before
        # that was so recorded the rate asked)
        stable = [
            p
            for p in probes
            if p["verdict"] == "STABLE" and rate in (carried_rate(p), float(p["rate"]))
        ]
        return stable[-1] if stable else None

    at_lambda, at_slo = probe_at(lambda_lower), probe_at(slo_lower)
    if at_lambda is None and lambda_lower is not None and lambda_throughput is not None:
        at_lambda = {"throughput": lambda_throughput}
    if at_lambda is None and at_slo is None:
        return None
    price = (
        "no GPU price given (--gpu-price)"
        if pricing.gpu_price is None
        else f"${pricing.gpu_price:g} per GPU-hour as given"
    )
    assumptions = (
        f"at the lower end of each bracket (the fastest probe judged STABLE; for the SLO rate, "
        f"the fastest that also met the SLO); {per_replica} GPU{'s' if per_replica > 1 else ''} "
        f"per replica ({source}) × {replicas} replica{'s' if replicas > 1 else ''} = {gpus} "
        f"GPU{'s' if gpus > 1 else ''}; {price}; tokens/s = λ × the tokens per completed "
        "request measured in that probe (a bounded-backlog bracket: in its probe)"
    )
    return {
        "gpu_price": pricing.gpu_price,
        "gpus_per_replica": per_replica,
        "gpus_per_replica_source": source,
        "gpus": gpus,
        "at_lambda": None
        if at_lambda is None or lambda_lower is None
        else at_rate(
            lambda_lower, at_lambda.get("throughput"), gpus=gpus, gpu_price=pricing.gpu_price
        ),
        "at_slo": None
        if at_slo is None or slo_lower is None
        else at_rate(slo_lower, at_slo.get("throughput"), gpus=gpus, gpu_price=pricing.gpu_price),
        "assumptions": assumptions,
    }
